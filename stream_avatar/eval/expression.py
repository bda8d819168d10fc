"""Expressions that read on the pixels: does each emotion show on the rendered portrait, and is the
person still the person?

For each portrait: enroll it, render every emotion of ``facs.EMOTIONS`` at intensity 1, alone and
mid-speech (the emotion's rig ``facs.blend``-ed onto a speech-like mouth, ``SPEECH``), re-detect the
Face Mesh landmarks on the rendered frames, and measure FACS cues as landmark displacements against
the same portrait's neutral render (for the mid-speech frames: the neutral mid-speech render). Every
measure is in face widths (the neutral render's face-oval width), along the neutral face's own axes,
signed so that the named movement is positive (``MEASURES``).

Each emotion's FACS prototype (``facs.EMOTION_AUS``) names action units; ``CUES`` maps each of them
to the measure that shows it in a frontal 2-D view and the sign it must have. A cue holds when the
measure has that sign and is larger than ``THRESHOLD`` face widths (~0.8 px at a 256 px avatar).
Where an action unit has no observable of its own in 2-D (AU4 both lowers the brows and draws them
together; in 1+4 the raise of AU1 wins on height), the cue is the part that must show in that
combination.

Identity: a 128-D face descriptor (dlib's ResNet model, shipped in the ``face_recognition_models``
package) of each rendered frame against the original photo, Euclidean distance; dlib's own threshold
for "same person" is 0.6. Optional (the ``eval`` extra): without dlib the identity fields are None.
dlib is imported here only, so nothing of the runtime engine depends on it.

Two second opinions are reported beside the scored cues: the same measures taken on the reference
landmarks carried by dense optical flow (``flow_landmarks``: what moved on the pixels, where Face
Mesh's shape prior may not follow), and the rig coefficients the inverse fitter
(``capture.fitter.fit``, ``framing="fixed"``) reads back from the re-detected landmarks (``fitted``).
The headline share is Face Mesh's.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_avatar.emotion import facs
from stream_avatar.motion import rig
from stream_avatar.render import facs_basis as fb

__all__ = [
    "CUES",
    "MEASURES",
    "SAME_PERSON_THRESHOLD",
    "SPEECH",
    "THRESHOLD",
    "Cue",
    "FaceEmbedder",
    "evaluate_expressions",
    "face_embedder",
    "flow_landmarks",
    "measure",
    "score_cues",
]

log = logging.getLogger(__name__)

THRESHOLD = 0.01
"""Smallest displacement, in face widths, that counts as a cue shown (~0.8 px on a 256 px avatar,
where the face is ~77 px wide: under a pixel, but above Face Mesh's frame-to-frame jitter on a
re-rendered still, which is what separates "moved" from "did not")."""
SAME_PERSON_THRESHOLD = 0.6
"""dlib's documented decision threshold for its face descriptor: distances below it are one person."""
SPEECH: dict[str, float] = {"jawOpen": 0.4}
"""The speech-like mouth the mid-speech frames are blended onto (an open vowel)."""
CONDITIONS: tuple[str, ...] = ("expression", "speech")

# Landmark groups (MediaPipe Face Mesh indices). "R"/"L" are the subject's sides: the subject's right
# is the image's left in an unmirrored portrait.
_CORNER_R, _CORNER_L = (61, 78), (291, 308)
_INNER_BROW = ((107, 55), (336, 285))  # (image-left brow, image-right brow)
_OUTER_BROW = (70, 46, 300, 276)
_BROWS = fb.BROW_IMG_LEFT + fb.BROW_IMG_RIGHT
_UPPER_LID = (158, 159, 160, 385, 386, 387)
_LOWER_LID = (144, 145, 153, 373, 374, 380)
_NOSE_WINGS = fb.NOSE_WING_IMG_LEFT + fb.NOSE_WING_IMG_RIGHT
_SUBNASALE, _UPPER_LIP_TOP, _LOWER_LIP_BOTTOM, _LOWER_LIP_INNER = 2, 0, 17, 14

MEASURES: dict[str, str] = {
    "corner_rise": "lip corners move up (mean of both sides)",
    "corner_rise_R": "subject's right lip corner moves up",
    "corner_rise_L": "subject's left lip corner moves up",
    "rise_asym_R": "right corner rises more than the left (corner_rise_R - corner_rise_L)",
    "out_asym_R": "right corner moves outward more than the left",
    "mouth_width": "distance between the lip corners grows",
    "inner_brow_raise": "inner brow ends move up",
    "outer_brow_raise": "outer brow ends move up",
    "brow_lower": "brows move down (mean of all brow points)",
    "brow_together": "inner brow ends move toward each other",
    "upper_lid_raise": "upper eyelids move up",
    "lower_lid_raise": "lower eyelids move up",
    "eye_opening": "upper-to-lower lid distance grows",
    "nose_wing_raise": "nose wings move up",
    "nose_lip_shorten": "distance from the base of the nose to the upper lip shrinks",
    "jaw_drop": "lower lip moves down",
    "lip_thin": "outer mouth height (upper lip top to lower lip bottom) shrinks",
}


@dataclass(frozen=True)
class Cue:
    """One action unit's visible sign: ``measure`` (a key of MEASURES) times ``sign`` > THRESHOLD."""

    au: str
    measure: str
    sign: float = 1.0


CUES: dict[str, tuple[Cue, ...]] = {
    "neutral": (),
    "happy": (Cue("6", "lower_lid_raise"), Cue("12", "corner_rise")),
    "sad": (Cue("1", "inner_brow_raise"), Cue("4", "brow_together"), Cue("15", "corner_rise", -1.0)),
    "angry": (
        Cue("4", "brow_lower"),
        Cue("4", "brow_together"),
        Cue("5", "upper_lid_raise"),
        Cue("7", "lower_lid_raise"),
        Cue("23", "lip_thin"),
    ),
    "fear": (
        Cue("1", "inner_brow_raise"),
        Cue("2", "outer_brow_raise"),
        Cue("4", "brow_together"),
        Cue("5", "upper_lid_raise"),
        Cue("7", "lower_lid_raise"),
        Cue("20", "mouth_width"),
        Cue("26", "jaw_drop"),
    ),
    "disgusted": (
        Cue("9", "nose_wing_raise"),
        Cue("10", "nose_lip_shorten"),
        Cue("15", "corner_rise", -1.0),
    ),
    "surprised": (
        Cue("1", "inner_brow_raise"),
        Cue("2", "outer_brow_raise"),
        Cue("5", "upper_lid_raise"),
        Cue("26", "jaw_drop"),
    ),
    "contempt": (Cue("12R", "rise_asym_R"), Cue("14R", "out_asym_R")),
}
"""Emotion → the cues its FACS prototype implies (``facs.EMOTION_AUS``: happy 6+12, sad 1+4+15, angry
4+5+7+23, fear 1+2+4+5+7+20+26, disgusted 9+10+15, surprised 1+2+5+26, contempt 12R+14R)."""

# Rig coefficients read back by the fitter and reported (summed L/R pairs are averaged).
_FITTED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mouthSmile", ("mouthSmileLeft", "mouthSmileRight")),
    ("mouthSmileRight", ("mouthSmileRight",)),
    ("mouthSmileLeft", ("mouthSmileLeft",)),
    ("mouthFrown", ("mouthFrownLeft", "mouthFrownRight")),
    ("mouthStretch", ("mouthStretchLeft", "mouthStretchRight")),
    ("browInnerUp", ("browInnerUp",)),
    ("browOuterUp", ("browOuterUpLeft", "browOuterUpRight")),
    ("browDown", ("browDownLeft", "browDownRight")),
    ("eyeWide", ("eyeWideLeft", "eyeWideRight")),
    ("eyeSquint", ("eyeSquintLeft", "eyeSquintRight")),
    ("noseSneer", ("noseSneerLeft", "noseSneerRight")),
    ("jawOpen", ("jawOpen",)),
)


def _uv(landmarks: np.ndarray, frame: fb.FaceFrame) -> np.ndarray:
    """(N, 3) px landmarks → (N, 2) px along the reference face's axes (u toward image right, v down)."""
    d = np.asarray(landmarks, np.float64)[:, :2] - frame.origin
    return np.stack([d @ frame.ex, d @ frame.ey], axis=1)


def measure(landmarks: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """FACS measures of a frame against the reference frame of the same portrait and camera.

    Args:
        landmarks: (478, 3) px Face Mesh landmarks of the expression frame.
        reference: (478, 3) px landmarks of the reference (neutral) frame, same crop.

    Returns:
        MEASURES key → displacement in face widths (the reference's face-oval width), positive in the
        direction the key names.
    """
    from stream_avatar.avatar.landmarks import face_width

    frame = fb.face_frame(np.asarray(reference, np.float64))
    width = face_width(reference)
    p, q = _uv(landmarks, frame), _uv(reference, frame)
    d = (p - q) / width

    def dv(idx: tuple[int, ...]) -> float:
        return float(d[list(idx), 1].mean())

    def du(idx: tuple[int, ...]) -> float:
        return float(d[list(idx), 0].mean())

    rise_r, rise_l = -dv(_CORNER_R), -dv(_CORNER_L)
    out_r, out_l = -du(_CORNER_R), du(_CORNER_L)  # the subject's right corner is the image-left one
    (il_a, il_b), (ir_a, ir_b) = _INNER_BROW
    brow_gap = (p[[ir_a, ir_b], 0].mean() - p[[il_a, il_b], 0].mean()) / width
    brow_gap0 = (q[[ir_a, ir_b], 0].mean() - q[[il_a, il_b], 0].mean()) / width
    upper, lower = -dv(_UPPER_LID), -dv(_LOWER_LID)
    nose_lip = (p[_UPPER_LIP_TOP, 1] - p[_SUBNASALE, 1]) / width
    nose_lip0 = (q[_UPPER_LIP_TOP, 1] - q[_SUBNASALE, 1]) / width
    height = (p[_LOWER_LIP_BOTTOM, 1] - p[_UPPER_LIP_TOP, 1]) / width
    height0 = (q[_LOWER_LIP_BOTTOM, 1] - q[_UPPER_LIP_TOP, 1]) / width
    return {
        "corner_rise": (rise_r + rise_l) / 2.0,
        "corner_rise_R": rise_r,
        "corner_rise_L": rise_l,
        "rise_asym_R": rise_r - rise_l,
        "out_asym_R": out_r - out_l,
        "mouth_width": out_r + out_l,
        "inner_brow_raise": -dv(_INNER_BROW[0] + _INNER_BROW[1]),
        "outer_brow_raise": -dv(_OUTER_BROW),
        "brow_lower": dv(_BROWS),
        "brow_together": float(brow_gap0 - brow_gap),
        "upper_lid_raise": upper,
        "lower_lid_raise": lower,
        "eye_opening": upper - lower,
        "nose_wing_raise": -dv(_NOSE_WINGS),
        "nose_lip_shorten": float(nose_lip0 - nose_lip),
        "jaw_drop": dv((_LOWER_LIP_BOTTOM, _LOWER_LIP_INNER)),
        "lip_thin": float(height0 - height),
    }


def flow_landmarks(frame_rgb: np.ndarray, reference_rgb: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The reference's landmarks carried by the pixels' own motion: (478, 3) px.

    Dense optical flow (Farnebäck) from the reference render to the frame, sampled at each reference
    landmark. A second instrument beside Face Mesh: it sees what moved on the pixels even where Face
    Mesh's shape prior does not follow (Face Mesh keeps brows and lids close to its mean shape).
    """
    import cv2

    a = cv2.cvtColor(np.ascontiguousarray(reference_rgb), cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2GRAY)
    flow = np.asarray(
        cv2.calcOpticalFlowFarneback(a, b, np.zeros((*a.shape, 2), np.float32), 0.5, 3, 9, 3, 5, 1.1, 0)
    )
    pts = np.asarray(reference, np.float32)
    h, w = a.shape
    x = np.clip(pts[:, 0], 0, w - 1).astype(np.float32)[None]
    y = np.clip(pts[:, 1], 0, h - 1).astype(np.float32)[None]
    moved = np.stack([cv2.remap(flow[..., k], x, y, cv2.INTER_LINEAR)[0] for k in range(2)], axis=1)
    out = pts.copy()
    out[:, :2] += moved
    return out


def _cue_row(cue: Cue) -> dict[str, str]:
    return {"au": cue.au, "measure": cue.measure, "sign": "+" if cue.sign > 0 else "-"}


def score_cues(
    emotion: str, measures: Mapping[str, float], threshold: float = THRESHOLD
) -> list[dict[str, Any]]:
    """The cues of ``emotion`` on one frame's measures: au, measure, expected sign, value, holds."""
    out = []
    for cue in CUES[emotion]:
        value = float(measures[cue.measure])
        out.append(
            {
                **_cue_row(cue),
                "value": value,
                "holds": bool(cue.sign * value > threshold),
            }
        )
    return out


# -- identity -------------------------------------------------------------------------------------


FaceEmbedder = Callable[[np.ndarray], "np.ndarray | None"]
"""(H, W, 3) uint8 RGB → (128,) float64 descriptor of the largest face, or None when none is found."""


def _model_file(name: str) -> Path:
    # face_recognition_models' own __init__ imports pkg_resources (setuptools) only to find these
    # files; locating the package without importing it keeps setuptools out of the requirements.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face_recognition_models is not installed (pip install '.[eval]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def face_embedder() -> FaceEmbedder | None:
    """dlib's face descriptor (HOG detector, 5-point alignment, ResNet), or None without dlib.

    When the HOG detector finds no face, the box comes from Face Mesh (a square on the face oval),
    so a face that the renderer kept but HOG misses still gets a descriptor.
    """
    try:
        import dlib

        recogniser = dlib.face_recognition_model_v1(
            str(_model_file("dlib_face_recognition_resnet_model_v1.dat"))
        )
        shape = dlib.shape_predictor(str(_model_file("shape_predictor_5_face_landmarks.dat")))
    except (ImportError, FileNotFoundError) as exc:
        log.info("identity check unavailable", extra={"reason": str(exc)})
        return None
    detector = dlib.get_frontal_face_detector()

    def embed(image_rgb: np.ndarray) -> np.ndarray | None:
        img = np.ascontiguousarray(image_rgb, dtype=np.uint8)
        boxes = list(detector(img, 1))
        if boxes:
            box = max(boxes, key=lambda b: b.width() * b.height())
        else:
            from stream_avatar.avatar.landmarks import FACE_OVAL, detect_faces, face_width

            faces = detect_faces(img)
            if not faces:
                return None
            oval = max(faces, key=face_width)[list(FACE_OVAL), :2]
            (x0, y0), (x1, y1) = oval.min(axis=0), oval.max(axis=0)
            # dlib's HOG boxes are about the inner face: brows to chin, a little inside the oval
            cx, cy, side = (x0 + x1) / 2.0, (y0 + y1) / 2.0 + 0.08 * (y1 - y0), 0.8 * (x1 - x0)
            box = dlib.rectangle(
                int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)
            )
        return np.asarray(recogniser.compute_face_descriptor(img, shape(img, box)), np.float64)

    return embed


def _distance(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    return float(np.linalg.norm(a - b))


# -- the evaluation -------------------------------------------------------------------------------


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _fitted(fit_rig: np.ndarray) -> dict[str, float]:
    return {key: float(np.mean([fit_rig[rig.index(n)] for n in names])) for key, names in _FITTED}


def _rigs() -> dict[str, dict[str, np.ndarray]]:
    """condition → emotion → (RIG_SIZE,) rig; the neutral of each condition is its reference."""
    speech = rig.from_dict(SPEECH)
    out: dict[str, dict[str, np.ndarray]] = {c: {} for c in CONDITIONS}
    for name in facs.EMOTIONS:
        expr = facs.expression_rig(facs.parse(name))
        out["expression"][name] = facs.blend(rig.zeros(), expr)
        out["speech"][name] = facs.blend(speech, expr)
    return out


def _summary(portraits: Mapping[str, Any], key: str = "cues") -> dict[str, Any]:
    per_emotion: dict[str, dict[str, int]] = {}
    failures = []
    total = held = 0
    for pname, result in portraits.items():
        for cond, frames in result["conditions"].items():
            for emotion, frame in frames.items():
                for cue in frame[key] or ():
                    stats = per_emotion.setdefault(emotion, {"cues": 0, "held": 0})
                    stats["cues"] += 1
                    total += 1
                    if cue["holds"]:
                        stats["held"] += 1
                        held += 1
                    else:
                        failures.append(
                            {
                                "portrait": pname,
                                "condition": cond,
                                "emotion": emotion,
                                "au": cue["au"],
                                "measure": cue["measure"],
                                "sign": cue["sign"],
                                "value": cue["value"],
                            }
                        )
    return {
        "cues": total,
        "held": held,
        "share": held / total if total else float("nan"),
        "per_emotion": {
            k: {**v, "share": v["held"] / v["cues"] if v["cues"] else float("nan")}
            for k, v in per_emotion.items()
        },
        "failures": failures,
    }


def evaluate_expressions(
    portraits: dict[str, Path],
    size: int = 256,
    out_dir: Path | None = None,
    *,
    people: Mapping[str, str] | None = None,
    emotions: tuple[str, ...] = facs.EMOTIONS,
    conditions: tuple[str, ...] = CONDITIONS,
    identity: bool = True,
    fit: bool = True,
    consent: Any = None,
) -> dict[str, Any]:
    """Render every emotion on every portrait and measure what shows (see the module docstring).

    Args:
        portraits: name → photo file.
        size: avatar side, pixels.
        out_dir: where the rendered frames go (``<out_dir>/<portrait>/<condition>_<emotion>.png``) and
            the avatar store (``<out_dir>/store``); None → a temporary folder, frames not kept.
        people: portrait name → person, for the different-person identity reference (portraits of
            the same person, e.g. a re-toned copy, are paired as same-person); None → every portrait
            its own person.
        emotions: the emotions to render ("neutral" is always rendered: it is the reference).
        conditions: a subset of ("expression", "speech").
        identity: compute dlib face-descriptor distances (skipped, as None, when dlib is missing).
        fit: also read rig coefficients back with the inverse fitter.
        consent: the consent record every portrait is enrolled with (who agreed or where the photos
            come from, and for what; ``AvatarStore.enroll`` refuses a portrait without one).

    Returns:
        A JSON-ready dict: "config", "cues" (the cue table), "portraits" (per portrait: "source",
        "face_width_px", "conditions" → condition → emotion → "measures", "cues", "measures_flow",
        "cues_flow", "fitted", "identity"), "summary" (Face Mesh cue counts, share, per emotion, the
        failures), "summary_flow" (the same from optical flow), "identity" (per
        condition/emotion median and max distance, cross-portrait pairs, dlib's threshold) and
        "timing_s".
    """
    from PIL import Image

    from stream_avatar.avatar.landmarks import detect_faces, face_width
    from stream_avatar.avatar.store import AvatarStore
    from stream_avatar.capture import fitter
    from stream_avatar.render.renderer import RendererWrapper

    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)} (known: {', '.join(CONDITIONS)})")
    emotions = ("neutral", *(e for e in emotions if e != "neutral"))
    people = dict(people or {})
    embed = face_embedder() if identity else None
    rigs = _rigs()
    t_start = time.perf_counter()
    timing = {"enroll": 0.0, "render": 0.0, "landmarks": 0.0, "identity": 0.0, "fit": 0.0}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        store = AvatarStore(root / "store")
        results: dict[str, Any] = {}
        source_embeddings: dict[str, np.ndarray | None] = {}
        for pname, path in portraits.items():
            t = time.perf_counter()
            avatar = store.enroll(path, size=size, consent=consent)
            timing["enroll"] += time.perf_counter() - t
            renderer = RendererWrapper(avatar.tensors, "cpu")
            src_emb = embed(_read_rgb(Path(path))) if embed else None
            source_embeddings[pname] = src_emb
            crop_emb = embed(avatar.image) if embed else None
            entry: dict[str, Any] = {
                "source": str(path),
                "avatar_id": avatar.id,
                "face_width_px": None,
                "identity_crop": _distance(crop_emb, src_emb),
                "conditions": {},
            }
            for cond in conditions:
                t = time.perf_counter()
                frames = renderer.render(np.stack([rigs[cond][e] for e in emotions]))
                timing["render"] += time.perf_counter() - t
                t = time.perf_counter()
                found = [detect_faces(f) for f in frames]
                timing["landmarks"] += time.perf_counter() - t
                marks = [max(fs, key=face_width) if fs else None for fs in found]
                reference = marks[0]
                if reference is None:
                    raise RuntimeError(f"{pname}: no face found in the neutral {cond} render")
                if cond == "expression":
                    entry["face_width_px"] = face_width(reference)
                per: dict[str, Any] = {}
                for emotion, frame, lm in zip(emotions, frames, marks, strict=True):
                    if out_dir is not None:
                        (root / pname).mkdir(parents=True, exist_ok=True)
                        Image.fromarray(frame).save(root / pname / f"{cond}_{emotion}.png")
                    record: dict[str, Any] = {"face_found": lm is not None}
                    if lm is None:
                        # no face is a failure of every cue, not a missing value
                        record["measures"] = record["measures_flow"] = record["cues_flow"] = None
                        record["cues"] = [
                            {**_cue_row(c), "value": None, "holds": False} for c in CUES[emotion]
                        ]
                        record["fitted"] = None
                    else:
                        m = measure(lm, reference)
                        record["measures"] = m
                        record["cues"] = score_cues(emotion, m)
                        mf = measure(flow_landmarks(frame, frames[0], reference), reference)
                        record["measures_flow"] = mf
                        record["cues_flow"] = score_cues(emotion, mf)
                        if fit:
                            t = time.perf_counter()
                            # the neutral render is the fitter's neutral; the jaw of the speech
                            # reference reads as a rest pose, so fitted values are relative to it
                            record["fitted"] = _fitted(fitter.fit(lm, reference, framing="fixed").rig)
                            timing["fit"] += time.perf_counter() - t
                        else:
                            record["fitted"] = None
                    t = time.perf_counter()
                    record["identity"] = _distance(embed(frame), src_emb) if embed else None
                    timing["identity"] += time.perf_counter() - t
                    per[emotion] = record
                entry["conditions"][cond] = per
            results[pname] = entry
            log.info("portrait evaluated", extra={"portrait": pname})

    names = list(portraits)
    cross = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            cross.append(
                {
                    "a": a,
                    "b": b,
                    "same_person": people.get(a, a) == people.get(b, b),
                    "distance": _distance(source_embeddings[a], source_embeddings[b]),
                }
            )
    summary = _summary(results)
    summary_flow = _summary(results, "cues_flow")
    return {
        "config": {
            "size": size,
            "threshold_face_widths": THRESHOLD,
            "speech_rig": SPEECH,
            "emotions": list(emotions),
            "conditions": list(conditions),
            "identity_model": "dlib_face_recognition_resnet_model_v1" if embed else None,
        },
        "cues": {e: [_cue_row(c) for c in CUES[e]] for e in emotions},
        "measures": MEASURES,
        "portraits": results,
        "summary": summary,
        "summary_flow": summary_flow,
        "identity": _identity_summary(results, cross, emotions, conditions) if embed else None,
        "timing_s": {**timing, "total": time.perf_counter() - t_start},
    }


def _identity_summary(
    portraits: Mapping[str, Any],
    cross: list[dict[str, Any]],
    emotions: tuple[str, ...],
    conditions: tuple[str, ...],
) -> dict[str, Any]:
    per_emotion: dict[str, dict[str, float | None]] = {}
    for cond in conditions:
        for emotion in emotions:
            values = [
                r["conditions"][cond][emotion]["identity"]
                for r in portraits.values()
                if r["conditions"][cond][emotion]["identity"] is not None
            ]
            per_emotion[f"{cond}/{emotion}"] = {
                "median": float(np.median(values)) if values else None,
                "max": float(np.max(values)) if values else None,
            }
    crop = [r["identity_crop"] for r in portraits.values() if r["identity_crop"] is not None]
    different = [c["distance"] for c in cross if not c["same_person"] and c["distance"] is not None]
    return {
        "per_emotion": per_emotion,
        "crop_median": float(np.median(crop)) if crop else None,
        "pairs": cross,
        "different_person_min": min(different) if different else None,
        "different_person_median": float(np.median(different)) if different else None,
        "same_person_threshold": SAME_PERSON_THRESHOLD,
    }

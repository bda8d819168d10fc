"""Reference-clip emotion, the capture side: a short face video → rig coefficients → its emotion.

clip → frames at 25 fps → Face Mesh + inverse fitter (``capture.fitter``, "video" framing) → rig
coefficients (``clip_rigs``) → the emotion model's visual branch (``emotion.reference.rig_emotion``:
the embedder with the audio branch absent, which it was trained for with modality dropout) → the bank.
The result is operator-style weights (``{"happy": 0.8}``; ``{}`` for neutral), which the caller
applies like a chosen emotion (``engine.set_emotion``, the CLI's ``--emotion-ref``, the server's
``emotion_ref`` message).

The fit needs the person's neutral face. Given a photo of the clip's person at rest
(``neutral_image``; the CLI's ``--emotion-ref-neutral``), the clip is fitted against that face;
otherwise the default portrait's neutral landmarks stand in (the similarity and pose of the fit absorb
size, position and turn). With the stand-in, the person's own resting face reads as an expression:
the default portrait smiles broadly, so a closed mouth reads as a frown (``benchmarks/
bench_reference.py``: every emotion rendered on six portraits reads back right in 27 / 48 clips with
the stand-in, 36 / 48 with each portrait's own photo). Only the first ``MAX_SECONDS`` are read.

This lives in capture/ (with the fitter, which reads landmarks and the renderer's basis), so that
emotion/ stays free of anything that knows a face's identity (avatar/, render/).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from stream_avatar.emotion.reference import ReferenceError, rig_emotion

__all__ = [
    "FPS",
    "MAX_SECONDS",
    "MIN_FACE_FRAMES",
    "ReferenceError",
    "clip_emotion",
    "clip_rigs",
    "default_neutral",
    "neutral_landmarks",
]

FPS = 25
MAX_SECONDS = 10.0
MIN_FACE_FRAMES = 12  # ~0.5 s with a detected face


@functools.lru_cache(maxsize=1)
def default_neutral() -> np.ndarray:
    """The default portrait's Face Mesh landmarks: the neutral face reference clips are fitted against."""
    import cv2

    from stream_avatar.avatar.store import DEFAULT_AVATAR_IMAGE

    bgr = cv2.imread(str(DEFAULT_AVATAR_IMAGE), cv2.IMREAD_COLOR)
    face = _largest_face(np.ascontiguousarray(bgr[:, :, ::-1]))
    if face is None:
        raise RuntimeError(f"no face in the default portrait {DEFAULT_AVATAR_IMAGE}")
    return face


def _largest_face(rgb: np.ndarray) -> np.ndarray | None:
    """Face Mesh landmarks of the largest face in an RGB image, float64; None without a face."""
    from stream_avatar.avatar.landmarks import detect_faces, face_width

    faces = detect_faces(rgb)
    return np.asarray(max(faces, key=face_width), np.float64) if faces else None


def neutral_landmarks(image: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Face Mesh landmarks of a photo of the clip's person at rest (its largest face): the neutral face
    their clip is fitted against. ReferenceError for a file that is not a readable image or shows no
    face."""
    from stream_avatar.avatar.enroll import EnrollmentError, decode_image, read_source

    try:
        data, name = read_source(image)
        rgb = decode_image(data, name)
    except EnrollmentError as exc:
        raise ReferenceError(f"neutral image: {exc}") from None
    face = _largest_face(rgb)
    if face is None:
        raise ReferenceError(f"neutral image{f' {name}' if name else ''}: no face found")
    return face


def clip_rigs(path: str | os.PathLike[str], neutral_landmarks: np.ndarray | None = None) -> np.ndarray:
    """(frames, RIG_SIZE) float32 rigs of a face video at 25 fps; frames without a face are dropped."""
    import av

    from stream_avatar.capture.fitter import fit_frame
    from stream_avatar.data.corpora import _frames_at_rate

    neutral = default_neutral() if neutral_landmarks is None else np.asarray(neutral_landmarks, np.float64)
    rows: list[np.ndarray] = []
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise ReferenceError(f"{Path(path).name}: no video stream")
            last = -1
            for index, frame in _frames_at_rate(container, float(FPS)):
                if index >= MAX_SECONDS * FPS:
                    break
                if index == last:
                    continue
                last = index
                result = fit_frame(frame.to_ndarray(format="rgb24"), neutral, framing="video")
                if result is not None:
                    rows.append(np.asarray(result.rig, np.float32))
    except av.error.FFmpegError as exc:
        raise ReferenceError(f"{Path(path).name}: not a readable video ({exc})") from None
    if len(rows) < MIN_FACE_FRAMES:
        raise ReferenceError(
            f"{Path(path).name}: a face was found in {len(rows)} frames; at least {MIN_FACE_FRAMES} needed"
        )
    return np.stack(rows)


def clip_emotion(
    path: str | os.PathLike[str],
    model: object | None = None,
    neutral_image: str | os.PathLike[str] | bytes | None = None,
) -> dict[str, float]:
    """A face video → operator weights for the emotion it shows (``{}``: neutral). ``neutral_image``:
    a photo of the same person at rest to fit against (default: the default portrait's face).
    ReferenceError for a clip or image that cannot be read or shows no face."""
    from stream_avatar.emotion.inference import EmotionModel

    if not Path(path).is_file():
        raise ReferenceError(f"{path}: no such file")
    neutral = None if neutral_image is None else neutral_landmarks(neutral_image)
    loaded = model if model is not None else EmotionModel.load()
    weights, _ = rig_emotion(loaded, clip_rigs(path, neutral))
    return weights

"""Face landmarks and person masks from MediaPipe's bundled models (no downloads).

Coordinates are pixels of the image passed in: ``x`` right, ``y`` down, and ``z`` in the same
units as ``x`` (MediaPipe's normalised depth times the image width; smaller is nearer the camera).
Sides follow the rig: "left" is the subject's left, which is the image's right in an unmirrored
photo; MediaPipe's ``LEFT_*`` landmark groups use the same convention.

``mediapipe`` is imported lazily: it takes most of a second to import and only enrollment (and the
face-video readers of ``capture/``) need it. It comes with the ``face`` extra (``make install`` has it);
without it these functions raise ``MissingFaceExtraError``, which names the extra.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cv2
import numpy as np

NUM_LANDMARKS: int = 478
"""468 mesh points plus 10 iris points (``refine_landmarks=True``)."""

# The face-oval landmarks (MediaPipe's FACEMESH_FACE_OVAL), kept here so that measuring a face does
# not import mediapipe; a test checks this list against mediapipe's own.
FACE_OVAL: tuple[int, ...] = (
    10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176,
    234, 251, 284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454,
)  # fmt: skip
# Eye corners (outer, inner). Corners, not iris centres: the irises move with gaze.
RIGHT_EYE_CORNERS: tuple[int, int] = (33, 133)  # subject's right eye = image left
LEFT_EYE_CORNERS: tuple[int, int] = (263, 362)  # subject's left eye = image right

# Face Mesh was checked on portraits of 320 px to 2 MP; bigger photos are searched on a downscaled
# copy and the landmarks scaled back, which costs no accuracy that the enrollment crop keeps.
MAX_DETECT_PIXELS: int = 2_000_000
# Face Mesh's detector is a short-range model run on the whole image squeezed to 128 px, so a face
# smaller than about a fifth of the image goes unseen; when the whole image yields nothing, square
# windows of these fractions of the short side are searched (stride half a window).
_WINDOW_FRACTIONS: tuple[float, ...] = (1.0, 0.5)


class MissingFaceExtraError(ImportError):
    """Face landmarks were asked for in an environment without the ``face`` extra (mediapipe)."""


def _mediapipe() -> Any:
    try:
        import mediapipe as mp
    except ImportError as exc:
        raise MissingFaceExtraError(
            "face landmarks (enrolling a portrait, emotion reference clips, the inverse fitter) need the "
            "'face' extra: pip install 'stream_avatar[face]' (mediapipe 0.10.21 with protobuf < 5; "
            "`make install` includes it). Streaming an already enrolled avatar does not need it."
        ) from exc
    return mp


def _check_rgb(image_rgb: np.ndarray) -> None:
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}"
        )


def eye_centers(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the two eyes, each (2,) float64 pixels: (image-left eye, image-right eye)."""
    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    return pts[list(RIGHT_EYE_CORNERS)].mean(axis=0), pts[list(LEFT_EYE_CORNERS)].mean(axis=0)


def roll_deg(landmarks: np.ndarray) -> float:
    """Angle of the eye line in degrees; positive when the head tilts clockwise as seen in the image."""
    first, second = eye_centers(landmarks)
    dx, dy = second - first
    return math.degrees(math.atan2(dy, dx))


def face_extent(landmarks: np.ndarray) -> tuple[float, float]:
    """Face-oval extent along the eye line: (width_px, centre offset from the eye midpoint, px).

    Measured along the eye line, so a tilted head is not reported narrower or wider than it is.
    """
    first, second = eye_centers(landmarks)
    axis = second - first
    axis /= max(float(np.linalg.norm(axis)), 1e-9)
    oval = np.asarray(landmarks, dtype=np.float64)[list(FACE_OVAL), :2]
    u = (oval - (first + second) / 2.0) @ axis
    return float(u.max() - u.min()), float((u.max() + u.min()) / 2.0)


def face_width(landmarks: np.ndarray) -> float:
    """Width of the face oval along the eye line, in pixels."""
    return face_extent(landmarks)[0]


def face_center(landmarks: np.ndarray) -> np.ndarray:
    """(2,) float64 pixels: the middle of the face oval's bounding box (axis-aligned)."""
    oval = np.asarray(landmarks, dtype=np.float64)[list(FACE_OVAL), :2]
    return np.asarray((oval.min(axis=0) + oval.max(axis=0)) / 2.0)


@contextmanager
def _face_mesh(max_faces: int) -> Iterator[Any]:
    mp = _mediapipe()

    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True,
        max_num_faces=max_faces,
        refine_landmarks=True,
        min_detection_confidence=0.5,
    ) as mesh:
        yield mesh


def _run_mesh(mesh: Any, image_rgb: np.ndarray) -> list[np.ndarray]:
    h, w = image_rgb.shape[:2]
    result = mesh.process(np.ascontiguousarray(image_rgb))
    faces = []
    for face in result.multi_face_landmarks or ():
        pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float32)
        if pts.shape == (NUM_LANDMARKS, 3):
            faces.append(pts)
    return faces


def _window_starts(length: int, side: int) -> list[int]:
    if side >= length:
        return [0]
    step = max(side // 2, 1)
    starts = list(range(0, length - side, step))
    starts.append(length - side)  # the last window ends at the edge
    return starts


def _margin(face: np.ndarray, x0: int, y0: int, side: int) -> float:
    """Distance from the face-oval box to the nearest window edge (negative: cut by the edge)."""
    oval = face[list(FACE_OVAL), :2]
    lo, hi = oval.min(axis=0), oval.max(axis=0)
    return float(min(lo[0] - x0, lo[1] - y0, x0 + side - hi[0], y0 + side - hi[1]))


def _search_windows(mesh: Any, image_rgb: np.ndarray) -> list[np.ndarray]:
    h, w = image_rgb.shape[:2]
    short = min(h, w)
    for fraction in _WINDOW_FRACTIONS:
        side = int(short * fraction)
        if fraction == 1.0 and max(h, w) < 1.25 * short:
            continue  # one square window would be the whole image again
        if side < 64:
            break
        found: list[tuple[float, np.ndarray]] = []
        for y0 in _window_starts(h, side):
            for x0 in _window_starts(w, side):
                for face in _run_mesh(mesh, image_rgb[y0 : y0 + side, x0 : x0 + side]):
                    face[:, 0] += x0
                    face[:, 1] += y0
                    found.append((_margin(face, x0, y0, side), face))
        if found:
            return _dedupe(found)
    return []


def _dedupe(found: list[tuple[float, np.ndarray]]) -> list[np.ndarray]:
    """Overlapping windows see one face several times: keep the copy least cut by its window."""
    kept: list[np.ndarray] = []
    for _, face in sorted(found, key=lambda item: -item[0]):
        centre, width = face_center(face), face_width(face)
        if all(np.linalg.norm(centre - face_center(k)) > 0.5 * max(width, face_width(k)) for k in kept):
            kept.append(face)
    return kept


def detect_faces(image_rgb: np.ndarray, *, max_faces: int = 4) -> list[np.ndarray]:
    """Find faces and their landmarks with MediaPipe Face Mesh (bundled model, static mode).

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        max_faces: most faces returned.

    Returns:
        One (478, 3) float32 array per face, in pixels of ``image_rgb`` (see the module docstring),
        in no particular order; empty when no face is found.
    """
    _check_rgb(image_rgb)
    h, w = image_rgb.shape[:2]
    scale = min(1.0, math.sqrt(MAX_DETECT_PIXELS / float(h * w)))
    work = image_rgb
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        work = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
    with _face_mesh(max_faces) as mesh:
        faces = _run_mesh(mesh, work)
        if not faces:
            faces = _search_windows(mesh, work)
    if scale < 1.0:
        sx, sy = w / work.shape[1], h / work.shape[0]
        faces = [f * np.array([sx, sy, sx], dtype=np.float32) for f in faces]
    return faces[:max_faces]


def person_mask(image_rgb: np.ndarray) -> np.ndarray:
    """Soft person-vs-background mask from MediaPipe Selfie Segmentation (bundled general model).

    Args:
        image_rgb: (H, W, 3) uint8 RGB.

    Returns:
        (H, W) float32 in [0, 1]; 1 = person.
    """
    _check_rgb(image_rgb)
    mp = _mediapipe()

    # model_selection=0 is the general (square 256x256) model, which fits square portrait crops;
    # 1 is the landscape model for video calls.
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        result = seg.process(np.ascontiguousarray(image_rgb))
    mask = result.segmentation_mask
    if mask is None or mask.shape != image_rgb.shape[:2]:
        raise RuntimeError("selfie segmentation returned no mask")
    return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)

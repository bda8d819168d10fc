"""Enrollment: one portrait photo → an aligned square crop, its landmarks and a person mask.

Pipeline: read the bytes (size-capped) → check the header's pixel count before decoding (decompression
bombs) → decode with Pillow, honouring EXIF orientation → find faces with MediaPipe Face Mesh (the
largest wins; a warning says when there were several) → one similarity transform (rotate, scale,
translate) that levels the eye line and frames the face → ``cv2.warpAffine`` → Face Mesh again on the
crop, so landmarks are exact in output pixels → selfie segmentation on the crop.

Framing ("presenter", head and shoulders): the face oval spans ``FACE_WIDTH_FRACTION`` (30 %) of the
output width, centred horizontally, with the eye line at ``EYE_LINE_Y_FRACTION`` (40 %) of the height.
That leaves shoulders, background and headroom for the renderer's head motion. 30 % is the wide end of
the 30–35 % the renderer wants, chosen because it upscales typical photos least: the default portrait
(``astronaut``, face oval 91 px across in a 512 px photo) is enlarged 1.68× for a 512 px output, and
about 6 % of the crop (a strip above the hair, plain backdrop) lies outside the photo and is filled by
edge replication.
Enlargement uses Lanczos (8×8) interpolation; reduction first area-averages the photo (no aliasing).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stream_avatar.avatar import landmarks as lm

ENROLL_FORMAT_VERSION: str = "1"
"""Bump when the crop, framing or landmark layout changes: stored avatars are keyed by it."""

MAX_SOURCE_PIXELS: int = 40_000_000
MAX_SOURCE_BYTES: int = 200 * 1024 * 1024
MIN_FACE_WIDTH_PX: float = 80.0
"""Smallest face-oval width accepted, in source pixels: below it the crop is mostly invented detail."""
FACE_WIDTH_FRACTION: float = 0.30
EYE_LINE_Y_FRACTION: float = 0.40
MIN_SIZE, MAX_SIZE = 64, 2048
# Warn when more than this share of the crop lies outside the photo (filled by edge replication).
PADDED_WARN_FRACTION: float = 0.25
# Formats decoded at all: the common photo formats. Pillow's other decoders (EPS via Ghostscript,
# rarely used formats with a history of parser bugs) are not exposed to uploaded files.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO


class EnrollmentError(ValueError):
    """The photo cannot be enrolled; ``str(err)`` is one line meant for the user."""


class EnrollmentWarning(UserWarning):
    """Enrollment went ahead but the result may not be what the user expects."""


@dataclass(frozen=True, eq=False)
class EnrolledFace:
    """An aligned portrait ready for the renderer's precompute.

    Attributes:
        image: (size, size, 3) uint8 RGB crop.
        landmarks: (478, 3) float32 Face Mesh landmarks in crop pixels (z in x's units).
        person_mask: (size, size) float32 in [0, 1], 1 = person.
        source_size: (width, height) of the decoded photo, pixels (after EXIF rotation).
        source_face_width_px: face-oval width in the photo, pixels.
        scale: output pixels per photo pixel (> 1: the photo was enlarged).
        roll_deg: eye-line tilt removed from the photo, degrees (positive = was clockwise).
        padded_fraction: share of the crop outside the photo, filled by edge replication, in [0, 1].
    """

    image: np.ndarray
    landmarks: np.ndarray
    person_mask: np.ndarray
    source_size: tuple[int, int]
    source_face_width_px: float
    scale: float
    roll_deg: float
    padded_fraction: float


def _label(name: str | None) -> str:
    return f" {name!r}" if name else ""


def read_source(path_or_bytes: str | os.PathLike[str] | bytes) -> tuple[bytes, str | None]:
    """The photo's bytes and a display name (the file's base name; None for bytes).

    Raises:
        EnrollmentError: unreadable file, or larger than ``MAX_SOURCE_BYTES``.
    """
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
        name = None
    else:
        path = Path(path_or_bytes)
        name = path.name
        try:
            with path.open("rb") as f:
                data = f.read(MAX_SOURCE_BYTES + 1)
        except OSError as err:
            raise EnrollmentError(f"cannot read image file {name!r}: {err.strerror or err}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise EnrollmentError(f"image file{_label(name)} is over {MAX_SOURCE_BYTES // 2**20} MiB")
    return data, name


def decode_image(data: bytes, name: str | None = None) -> np.ndarray:
    """Decode a photo to (H, W, 3) uint8 RGB, upright per its EXIF orientation.

    Transparent pixels are composited over white. The pixel count is checked from the header
    before any pixel is decoded.

    Raises:
        EnrollmentError: not an image (or an unsupported format), over ``MAX_SOURCE_PIXELS``,
            truncated or corrupt.
    """
    label = _label(name)
    limit_mp = MAX_SOURCE_PIXELS / 1e6
    try:
        im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError:
        # Pillow refuses headers far beyond its own limit before we could look at them.
        raise EnrollmentError(f"image{label} is over {limit_mp:g} megapixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise EnrollmentError(
            f"not an image{label}: expected {', '.join(ALLOWED_FORMATS)} (or its header is cut)"
        ) from None
    with im:
        w, h = im.size
        if w * h > MAX_SOURCE_PIXELS:
            raise EnrollmentError(f"image{label} is {w}x{h} ({w * h / 1e6:.1f} MP), over {limit_mp:g} MP")
        if w < 1 or h < 1:
            raise EnrollmentError(f"image{label} is empty ({w}x{h})")
        try:
            im.load()
            upright = ImageOps.exif_transpose(im)
            rgb = _to_rgb(upright)
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError):
            # Pillow reports a cut-off file as "image file is truncated" (OSError) or a broken chunk
            # (SyntaxError / ValueError), depending on where the data ends.
            raise EnrollmentError(f"image file{label} is truncated or corrupt") from None
    return rgb


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than let the conversion clip at 255.
        arr16 = np.asarray(im, dtype=np.float32)
        grey = np.clip(arr16 * (255.0 / max(float(arr16.max()), 1.0)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def alignment_matrix(landmarks: np.ndarray, size: int) -> tuple[np.ndarray, float, float]:
    """The similarity transform from photo pixels to the ``size``-pixel square crop.

    Args:
        landmarks: (478, 3) face landmarks in photo pixels.
        size: output side, pixels.

    Returns:
        (2, 3) float64 matrix for ``cv2.warpAffine`` (photo → crop), the scale (crop pixels per photo
        pixel) and the removed roll in degrees.
    """
    first, second = lm.eye_centers(landmarks)
    roll = math.atan2(second[1] - first[1], second[0] - first[0])
    width, centre_offset = lm.face_extent(landmarks)
    scale = FACE_WIDTH_FRACTION * size / width
    c, s = math.cos(-roll), math.sin(-roll)
    linear = scale * np.array([[c, -s], [s, c]])
    # The face-oval centre on the eye line goes to (size/2, eye line height).
    axis = (second - first) / np.linalg.norm(second - first)
    anchor = (first + second) / 2.0 + centre_offset * axis
    target = np.array([size / 2.0, EYE_LINE_Y_FRACTION * size])
    matrix = np.hstack([linear, (target - linear @ anchor)[:, None]])
    return matrix, float(scale), math.degrees(roll)


def _warp(image: np.ndarray, matrix: np.ndarray, scale: float, size: int) -> np.ndarray:
    if scale < 1.0:
        # Shrink with area averaging first; a warp alone would sample the photo sparsely and alias.
        h, w = image.shape[:2]
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        # cv2.resize maps pixel centres: x_src = (x_small + 0.5) * w / new_w - 0.5.
        sx, sy = w / new_w, h / new_h
        small_to_src = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        matrix = matrix @ small_to_src
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REPLICATE
    )


def _padded_fraction(source_hw: tuple[int, int], matrix: np.ndarray, size: int) -> float:
    """Share of crop pixels whose centre maps outside the photo (computed on the crop's grid)."""
    inverse = cv2.invertAffineTransform(matrix)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    h, w = source_hw
    inside = (src_x >= -0.5) & (src_x <= w - 0.5) & (src_y >= -0.5) & (src_y <= h - 0.5)
    return float(1.0 - inside.mean())


def check_size(size: int) -> int:
    """Validate an output side length (pixels): even (yuv420p video) and in [64, 2048]."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise ValueError(f"size must be an integer, got {size!r}")
    if not (MIN_SIZE <= size <= MAX_SIZE) or size % 2:
        raise ValueError(f"size must be an even number of pixels in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    return int(size)


def enroll_image(
    path_or_bytes: str | os.PathLike[str] | bytes, size: int = 512, *, name: str | None = None
) -> EnrolledFace:
    """Enroll one portrait photo (see the module docstring for the pipeline and framing).

    Args:
        path_or_bytes: an image file path, or the file's bytes.
        size: side of the square output in pixels (even, 64–2048).
        name: display name for messages when bytes are given.

    Returns:
        The aligned crop, its landmarks and person mask.

    Raises:
        EnrollmentError: with a one-line message: not an image, truncated file, over 40 MP, no face,
            face under ``MIN_FACE_WIDTH_PX`` across.
        ValueError: invalid ``size``.

    Warns:
        EnrollmentWarning: several faces (the largest is used); most of the crop is outside the photo.
    """
    size = check_size(size)
    data, file_name = read_source(path_or_bytes)
    name = name or file_name
    label = _label(name)
    photo = decode_image(data, name)

    faces = lm.detect_faces(photo)
    if not faces:
        raise EnrollmentError(f"no face found in image{label}: use a photo with the whole face visible")
    widths = [lm.face_width(f) for f in faces]
    best = int(np.argmax(widths))
    if len(faces) > 1:
        warnings.warn(
            f"{len(faces)} faces found in image{label}; enrolling the largest ({widths[best]:.0f} px across)",
            EnrollmentWarning,
            stacklevel=2,
        )
    if widths[best] < MIN_FACE_WIDTH_PX:
        raise EnrollmentError(
            f"face in image{label} is {widths[best]:.0f} px across; at least {MIN_FACE_WIDTH_PX:.0f} px "
            "is needed: use a larger or closer photo"
        )

    matrix, scale, roll = alignment_matrix(faces[best], size)
    crop = _warp(photo, matrix, scale, size)
    padded = _padded_fraction((photo.shape[0], photo.shape[1]), matrix, size)
    if padded > PADDED_WARN_FRACTION:
        warnings.warn(
            f"{padded:.0%} of the crop lies outside image{label} (filled from its edges): "
            "a photo showing the shoulders works better",
            EnrollmentWarning,
            stacklevel=2,
        )

    # Landmarks again on the crop: exact in output pixels, and from a well-framed face.
    expected = np.array([size / 2.0, EYE_LINE_Y_FRACTION * size])
    crop_faces = lm.detect_faces(crop)
    if not crop_faces:
        raise EnrollmentError(f"the face in image{label} was lost after alignment: try another photo")
    dists = [float(np.linalg.norm(np.mean(lm.eye_centers(f), axis=0) - expected)) for f in crop_faces]
    crop_landmarks = crop_faces[int(np.argmin(dists))]
    mask = lm.person_mask(crop)

    return EnrolledFace(
        image=crop,
        landmarks=np.ascontiguousarray(crop_landmarks, dtype=np.float32),
        person_mask=mask,
        source_size=(int(photo.shape[1]), int(photo.shape[0])),
        source_face_width_px=float(widths[best]),
        scale=scale,
        roll_deg=roll,
        padded_fraction=padded,
    )

"""Visual QA contact sheet: one avatar through every emotion, mouth shape, blink and head pose.

``stream-avatar sheet --avatar IMAGE --out sheet.png`` renders each cell with the real renderer
(no idle motion, no driver) and tiles the cells, cropped to the head, with a label under each. It is
what a person looks at to judge whether the avatar stays the same person in every expression.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream_avatar.emotion import facs as emotion
from stream_avatar.motion import rig

# Mouth shapes a speaking face passes through (viseme-like: open vowel, rounded, spread, closed, ...).
MOUTH_SHAPES: tuple[tuple[str, dict[str, float]], ...] = (
    ("aa (jaw open)", {"jawOpen": 0.8}),
    ("ee (spread)", {"jawOpen": 0.25, "mouthStretchLeft": 0.7, "mouthStretchRight": 0.7}),
    ("oo (pucker)", {"jawOpen": 0.15, "mouthPucker": 0.9}),
    ("oh (funnel)", {"jawOpen": 0.45, "mouthFunnel": 0.8}),
    ("mm (pressed)", {"mouthPressLeft": 0.8, "mouthPressRight": 0.8, "mouthRollLower": 0.3}),
    ("f (lip roll)", {"jawOpen": 0.1, "mouthRollLower": 0.8}),
)
EYES: tuple[tuple[str, dict[str, float]], ...] = (
    ("blink", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}),
    ("wink (left)", {"eyeBlinkLeft": 1.0}),
    ("eyes wide", {"eyeWideLeft": 1.0, "eyeWideRight": 1.0}),
    ("squint", {"eyeSquintLeft": 1.0, "eyeSquintRight": 1.0}),
    ("look right", {"eyeLookOutLeft": 1.0, "eyeLookInRight": 1.0}),
    ("look left", {"eyeLookInLeft": 1.0, "eyeLookOutRight": 1.0}),
    ("look down", {"eyeLookDownLeft": 1.0, "eyeLookDownRight": 1.0}),
)
HEAD_POSES: tuple[tuple[str, dict[str, float]], ...] = (
    ("yaw -10", {"headYaw": -10.0}),
    ("yaw +10", {"headYaw": 10.0}),
    ("pitch +8 (nod)", {"headPitch": 8.0}),
    ("pitch -8", {"headPitch": -8.0}),
    ("roll +8", {"headRoll": 8.0}),
    ("shift x +8 mm", {"headX": 8.0}),
)


def sheet_cells() -> list[tuple[str, np.ndarray]]:
    """(label, rig) for every cell, in sheet order: emotions at 1.0 then 0.5, mouths, eyes, head."""
    cells: list[tuple[str, np.ndarray]] = []
    for intensity in (1.0, 0.5):
        for name in emotion.EMOTIONS:
            if name == "neutral" and intensity < 1.0:
                continue
            cells.append((f"{name} {intensity:g}", emotion.expression_rig({name: intensity})))
    for label, values in MOUTH_SHAPES + EYES + HEAD_POSES:
        cells.append((label, rig.from_dict(values)))
    return cells


def _crop_box(landmarks: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """A square around the face (forehead to chin with a margin), clamped to the frame."""
    pts = landmarks[:, :2]
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    side = int(max(x1 - x0, y1 - y0) * 1.15)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0 + 0.03 * side
    side = min(side, size)
    left = int(np.clip(cx - side / 2.0, 0, size - side))
    top = int(np.clip(cy - side / 2.0, 0, size - side))
    return left, top, side, side


def _label(cell: np.ndarray, text: str) -> np.ndarray:
    import cv2

    band = np.full((26, cell.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([cell, band], axis=0)


def make_sheet(
    avatar: Any,
    cells: Sequence[tuple[str, np.ndarray]],
    *,
    columns: int = 7,
    cell_px: int = 224,
    device: str = "cpu",
) -> np.ndarray:
    """Render ``cells`` on ``avatar`` (``stream_avatar.avatar.store.Avatar``) → an RGB sheet (H, W, 3)."""
    import cv2

    from stream_avatar.render.renderer import RendererWrapper

    renderer = RendererWrapper(avatar.tensors, device=device)
    x, y, w, h = _crop_box(np.asarray(avatar.landmarks), avatar.size)
    tiles = []
    for label, values in cells:
        frame = np.asarray(renderer.render(values)).reshape(-1, avatar.size, avatar.size, 3)[0]
        crop = np.ascontiguousarray(frame[y : y + h, x : x + w])
        tiles.append(_label(cv2.resize(crop, (cell_px, cell_px), interpolation=cv2.INTER_AREA), label))
    blank = np.full_like(tiles[0], 255)
    rows = []
    for r in range(0, len(tiles), columns):
        row = tiles[r : r + columns]
        row += [blank] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


SUFFIXES = (".png", ".jpg", ".jpeg")


def write_sheet(
    out: str | os.PathLike[str],
    avatar_spec: str | None = None,
    *,
    size: int = 512,
    store_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    cell_px: int = 224,
    consent: Any = None,
) -> Path:
    """Enroll/load the avatar, render the sheet, write it (PNG, or JPEG at quality 90); returns the path.

    consent: the consent record for a portrait image enrolled here (``AvatarStore.enroll``)."""
    import cv2

    from stream_avatar.avatar.store import AvatarStore

    path = Path(out)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"the sheet is written as PNG or JPEG: give a .png or .jpg path, got {path.name!r}")
    avatar = AvatarStore(store_dir).resolve(avatar_spec, size=size, consent=consent)
    image = make_sheet(avatar, sheet_cells(), device=device, cell_px=cell_px)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix.lower() != ".png" else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]), params):
        raise OSError(f"cannot write {path}")
    return path

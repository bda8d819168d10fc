"""Draw docs/frames.png: the default avatar rendered neutral, with the mouth open, and blinking.

Usage: python docs/make_frames.py [--size 512] [--out docs/frames.png]

The frames come straight from the renderer (no post-processing); the README shows the result.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from stream_avatar.avatar.store import AvatarStore
from stream_avatar.motion import rig
from stream_avatar.render.renderer import RendererWrapper

POSES: tuple[tuple[str, dict[str, float]], ...] = (
    ("neutral (all zero)", {}),
    ("jawOpen 0.7", {"jawOpen": 0.7}),
    ("mouthFunnel 0.6 + jawOpen 0.3", {"mouthFunnel": 0.6, "jawOpen": 0.3}),
    ("eyeBlink L+R 1.0", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "frames.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        avatar = AvatarStore(root=Path(tmp)).resolve(None, size=args.size)
    renderer = RendererWrapper(avatar.tensors, device="cpu")
    frames = renderer.render(np.stack([rig.from_dict(values) for _, values in POSES]))
    # Crop to the head: the rest of the frame is the unchanged portrait.
    s = args.size
    y0, y1, x0, x1 = int(0.12 * s), int(0.72 * s), int(0.2 * s), int(0.8 * s)
    tiles = []
    for (label, _), frame in zip(POSES, frames):
        tile = np.ascontiguousarray(frame[y0:y1, x0:x1, ::-1])
        band = np.full((28, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(band, label, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([tile, band], axis=0))
    sheet = np.concatenate(tiles, axis=1)
    cv2.imwrite(str(args.out), sheet)
    print(args.out)


if __name__ == "__main__":
    main()

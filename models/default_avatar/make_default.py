"""Writes astronaut.png, the default avatar's source photo, from scikit-image's bundled copy.

Usage: python models/default_avatar/make_default.py   (needs scikit-image, from the dev extra)

The pixels are scikit-image's ``data.astronaut()`` unchanged (512x512 RGB); only the container is
ours (PNG, lossless). See PROVENANCE.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image
from skimage import data

OUT = Path(__file__).resolve().parent / "astronaut.png"


def main() -> None:
    pixels = data.astronaut()  # (512, 512, 3) uint8 RGB
    Image.fromarray(pixels).save(OUT, format="PNG", optimize=True)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()
    print(f"{OUT}: {pixels.shape[1]}x{pixels.shape[0]}, sha256 {digest}")


if __name__ == "__main__":
    main()

"""The visible disclosure: an "AI-generated" badge composited into a corner of every output frame.

The badge is drawn once per frame size (``cv2.putText`` on a rounded backing box, anti-aliased) into
a premultiplied RGBA patch; per frame only that small region is alpha-blended in place (integer
arithmetic on the patch's pixels, the rest of the frame untouched). The engine applies it to every
frame it hands out (``AvatarEngine(disclosure=...)``, on by default through ``build_engine``), so the
live server, its viewers and offline MP4 renders all carry it from one place.

Size: the badge is ``BADGE_HEIGHT_FRACTION`` of the frame height (at least ``MIN_BADGE_HEIGHT_PX``),
inset by ``MARGIN_FRACTION``; at 512² the default label is about 130 × 26 px in the corner.
Cost: ``benchmarks/bench_watermark.py`` times it beside the watermark (about 0.05 ms per 512²
frame on this CPU); ``python -m stream_avatar.provenance.disclosure`` prints a quick figure.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from stream_avatar.config import DisclosureConfig

logger = logging.getLogger(__name__)

BADGE_HEIGHT_FRACTION = 0.05
MIN_BADGE_HEIGHT_PX = 11
MARGIN_FRACTION = 0.02
BOX_OPACITY = 0.6  # the backing box relative to the text: the text stays legible, the corner shows through
TEXT_RGB = np.array([255.0, 255.0, 255.0])
BOX_RGB = np.array([16.0, 16.0, 16.0])
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, eq=False)
class _Patch:
    """A pre-rendered badge for one frame size: where it goes and how to blend it.

    y0, x0: top-left corner in the frame. weight: (h, w, 1) uint16, 256 - alpha·256 (what is kept of
    the frame). premult: (h, w, 3) uint16, colour·alpha·256 (what the badge adds).
    """

    y0: int
    x0: int
    weight: np.ndarray
    premult: np.ndarray


class DisclosureBadge:
    """Composites the disclosure label into frames. Thread-safe; patches cached per frame size.

    apply(frames): frames (H, W, 3) or (B, H, W, 3) uint8 RGB; blended in place when writable (else
    on a copy) and returned.
    """

    def __init__(self, config: DisclosureConfig | None = None) -> None:
        self.config = config or DisclosureConfig()
        self._patches: dict[tuple[int, int], _Patch] = {}
        self._lock = threading.Lock()

    def patch(self, height: int, width: int) -> _Patch:
        """The badge for (height, width) frames, drawn on first use."""
        key = (height, width)
        patch = self._patches.get(key)
        if patch is None:
            with self._lock:
                patch = self._patches.get(key) or _draw(self.config, height, width)
                self._patches[key] = patch
        return patch

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the badge in (height, width) frames."""
        p = self.patch(height, width)
        h, w = p.weight.shape[:2]
        return p.y0, p.y0 + h, p.x0, p.x0 + w

    def apply(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim not in (3, 4) or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            shape = f"{frames.shape} {frames.dtype}"
            raise ValueError(f"frames must be (H, W, 3) or (B, H, W, 3) uint8, got {shape}")
        if not frames.flags.writeable:
            frames = frames.copy()
        height, width = frames.shape[-3], frames.shape[-2]
        p = self.patch(height, width)
        h, w = p.weight.shape[:2]
        region = frames[..., p.y0 : p.y0 + h, p.x0 : p.x0 + w, :]
        blended = (region.astype(np.uint16) * p.weight + p.premult) >> 8
        region[...] = blended.astype(np.uint8)
        return frames


def _draw(config: DisclosureConfig, height: int, width: int) -> _Patch:
    text = config.text.strip()
    box_h = max(MIN_BADGE_HEIGHT_PX, round(BADGE_HEIGHT_FRACTION * height))
    pad = max(2, round(box_h * 0.22))
    text_h = box_h - 2 * pad
    (_, h1), _ = cv2.getTextSize(text, _FONT, 1.0, 1)
    scale = text_h / max(h1, 1)
    thickness = max(1, round(scale * 1.6))
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    box_w = min(width, tw + 2 * pad + 2)
    box_h = min(height, box_h)
    # Coverage masks at the patch's size: the rounded box and the anti-aliased text.
    box = np.zeros((box_h, box_w), np.uint8)
    r = max(1, box_h // 4)
    cv2.rectangle(box, (r, 0), (box_w - 1 - r, box_h - 1), (255,), -1)
    cv2.rectangle(box, (0, r), (box_w - 1, box_h - 1 - r), (255,), -1)
    for cx, cy in ((r, r), (box_w - 1 - r, r), (r, box_h - 1 - r), (box_w - 1 - r, box_h - 1 - r)):
        cv2.circle(box, (cx, cy), r, (255,), -1, cv2.LINE_AA)
    ink = np.zeros((box_h, box_w), np.uint8)
    origin = (pad + 1, (box_h + th) // 2)
    cv2.putText(ink, text, origin, _FONT, scale, (255,), thickness, cv2.LINE_AA)
    a_box = box.astype(np.float32) / 255.0 * (BOX_OPACITY * config.opacity)
    a_ink = ink.astype(np.float32) / 255.0 * config.opacity
    # Text (white) over box (near-black): "over" compositing, premultiplied.
    alpha = a_ink + a_box * (1.0 - a_ink)
    colour = a_ink[..., None] * TEXT_RGB + (a_box * (1.0 - a_ink))[..., None] * BOX_RGB
    weight = np.round(256.0 * (1.0 - alpha))[..., None].astype(np.uint16)
    premult = np.round(256.0 * colour).astype(np.uint16)
    margin = max(1, round(MARGIN_FRACTION * min(height, width)))
    top = config.position.startswith("top")
    left = config.position.endswith("left")
    y0 = margin if top else height - box_h - margin
    x0 = margin if left else width - box_w - margin
    return _Patch(max(0, y0), max(0, x0), weight, premult)


def make_badge(config: DisclosureConfig | None = None, *, log: bool = True) -> DisclosureBadge | None:
    """The badge for a configuration, or None when ``config.enabled`` is false, which is logged as
    a WARNING naming the setting (call it once at start: the server, a render, an embedded engine)."""
    config = config or DisclosureConfig()
    if not config.enabled:
        if log:
            logger.warning(
                "the AI-generated disclosure badge is OFF (setting disclosure.enabled = false): "
                "output frames carry no visible label",
                extra={"setting": "disclosure.enabled", "value": False},
            )
        return None
    return DisclosureBadge(config)


def measure_cost(size: int = 512, frames: int = 500, config: DisclosureConfig | None = None) -> float:
    """Mean microseconds to apply the badge to one (size, size, 3) frame (after one warm-up)."""
    badge = DisclosureBadge(config)
    frame = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    badge.apply(frame)
    t0 = time.perf_counter()
    for _ in range(frames):
        badge.apply(frame)
    return (time.perf_counter() - t0) / frames * 1e6


if __name__ == "__main__":  # pragma: no cover
    for side in (256, 512, 1024):
        print(f"{side}²: {measure_cost(side):.1f} µs per frame")

"""Every rig coefficient at full strength moves only the head and neck: the background, the shoulders
and the clothes stay where the photo has them (within 2 grey levels).

The head-and-neck region is the renderer's own weight map (``head_weight``, built at enrollment from
the person mask, the face and a neck column), grown by one flow-grid step: the flow is computed on a
3-px grid and interpolated, so it may reach that far past the weight map's edge.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from stream_avatar.avatar.store import Avatar
from stream_avatar.emotion import facs as emotion
from stream_avatar.motion import rig
from stream_avatar.render.precompute import GRID_STEP_PX
from stream_avatar.render.renderer import RendererWrapper

SIZE = 256
MAX_OUTSIDE_GREY = 2.0


@pytest.fixture(scope="module")
def avatar(default_avatar: Callable[[int], Avatar]) -> Avatar:
    return default_avatar(SIZE)


def _outside(avatar: Avatar) -> np.ndarray:
    import cv2

    region = (avatar.tensors["head_weight"].numpy() > 0).astype(np.uint8)
    grow = 2 * int(np.ceil(GRID_STEP_PX)) + 1
    region = cv2.dilate(region, np.ones((grow, grow), np.uint8))
    return region == 0


def _rigs() -> list[tuple[str, np.ndarray]]:
    out = []
    for name in rig.BLENDSHAPES:
        out.append((name, rig.from_dict({name: 1.0})))
    for name in rig.HEAD_POSE:
        for deg in (-rig.HEAD_LIMIT_DEG, rig.HEAD_LIMIT_DEG):
            out.append((f"{name}{deg:+g}", rig.from_dict({name: deg})))
    for name in emotion.EMOTIONS[1:]:
        out.append((name, emotion.expression_rig({name: 1.0})))
    everything = rig.zeros()
    everything[: rig.NUM_BLENDSHAPES] = 1.0
    everything[rig.NUM_BLENDSHAPES :] = rig.HEAD_LIMIT_DEG
    out.append(("all at once", everything))
    return out


def test_no_coefficient_moves_pixels_outside_the_head_and_neck(avatar: Avatar) -> None:
    renderer = RendererWrapper(avatar.tensors, "cpu")
    outside = _outside(avatar)
    assert 0.3 < outside.mean() < 0.95  # a real region: not the whole frame, not nothing
    neutral = renderer.render(rig.zeros())[0].astype(np.float32)
    worst = {}
    for name, values in _rigs():
        frame = renderer.render(values)[0].astype(np.float32)
        diff = np.abs(frame - neutral).max(axis=2)
        worst[name] = float(diff[outside].max())
        assert float(diff[~outside].max()) > 2 * MAX_OUTSIDE_GREY, name  # it does move the head
    bad = {k: v for k, v in worst.items() if v > MAX_OUTSIDE_GREY}
    assert not bad, bad


def _darkness_centroid_x(frame: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    grey = frame[y0:y1, x0:x1].astype(np.float64).mean(axis=2)
    dark = np.clip(120.0 - grey, 0.0, None)  # the iris and pupil, not the lids' skin
    return float((dark.sum(axis=0) * np.arange(x1 - x0)).sum() / max(dark.sum(), 1e-9))


@pytest.mark.parametrize(("look", "sign"), [("right", 1.0), ("left", -1.0)])
def test_gaze_moves_the_irises_and_nothing_else(avatar: Avatar, look: str, sign: float) -> None:
    from stream_avatar.motion.idle import gaze_rig

    renderer = RendererWrapper(avatar.tensors, "cpu")
    neutral = renderer.render(rig.zeros())[0]
    frame = renderer.render(gaze_rig(sign, 0.0))[0]
    lm = avatar.landmarks
    iod = float(np.linalg.norm(lm[468, :2] - lm[473, :2]))
    boxes = []
    for centre in (lm[468, :2], lm[473, :2]):
        cx, cy = centre
        boxes.append(
            (
                int(cx - 0.3 * iod),
                int(cy - 0.15 * iod),
                int(np.ceil(cx + 0.3 * iod)),
                int(np.ceil(cy + 0.15 * iod)),
            )
        )
    for box in boxes:  # both irises move toward the image's side looked at
        shift = _darkness_centroid_x(frame, box) - _darkness_centroid_x(neutral, box)
        assert sign * shift > 0.2, (look, shift)
    changed = np.abs(frame.astype(int) - neutral.astype(int)).max(axis=2) > 2
    eyes = np.zeros_like(changed)
    for x0, y0, x1, y1 in boxes:
        eyes[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = True
    assert changed[eyes].any() and not changed[~eyes].any()

"""Warp renderer v1 on the shipped default portrait: shapes, identity at rest, locality of motion."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from stream_avatar.avatar.store import Avatar
from stream_avatar.motion import rig
from stream_avatar.render import facs_basis as fb
from stream_avatar.render.renderer import RendererWrapper

SIZE = 384  # smaller than the 512 default keeps the suite quick; the renderer scales with the face


@pytest.fixture(scope="module")
def avatar(default_avatar: Callable[[int], Avatar]) -> Avatar:
    return default_avatar(SIZE)


@pytest.fixture(scope="module")
def renderer(avatar: Avatar) -> RendererWrapper:
    return RendererWrapper(avatar.tensors)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)


def test_shape_dtype_and_finite(renderer: RendererWrapper) -> None:
    coeffs = np.random.default_rng(0).uniform(0, 1, (3, rig.RIG_SIZE)).astype(np.float32)
    coeffs[:, rig.NUM_BLENDSHAPES :] = np.random.default_rng(1).uniform(-5, 5, (3, len(rig.HEAD_POSE)))
    frames = renderer.render(coeffs)
    assert frames.shape == (3, SIZE, SIZE, 3)
    assert frames.dtype == np.uint8
    with torch.inference_mode():
        flow = renderer.module.backward_flow(torch.from_numpy(coeffs))
    assert torch.isfinite(flow).all()


def test_batch_equals_single(renderer: RendererWrapper) -> None:
    a = rig.from_dict({"jawOpen": 0.7, "eyeBlinkLeft": 0.5})
    b = rig.from_dict({"mouthSmileLeft": 1.0, "headYaw": 4.0})
    both = renderer.render(np.stack([a, b]))
    assert np.array_equal(both[0], renderer.render(a)[0])
    assert np.array_equal(both[1], renderer.render(b)[0])


def test_zero_rig_is_the_portrait(renderer: RendererWrapper, avatar: Avatar) -> None:
    frame = renderer.render(rig.zeros())[0]
    assert np.abs(frame.astype(np.float64) - avatar.image).mean() < 1.0


def test_every_coefficient_moves_pixels(renderer: RendererWrapper, avatar: Avatar) -> None:
    for name in rig.RIG_NAMES:
        value = 8.0 if name in rig.HEAD_POSE else 1.0
        frame = renderer.render(rig.from_dict({name: value}))[0]
        changed = int((_diff(frame, avatar.image) > 8).sum())
        assert changed > 30, f"{name} barely changes the image ({changed} pixels)"


def test_nothing_moves_outside_the_head_region(renderer: RendererWrapper, avatar: Avatar) -> None:
    rx, ry, rw, rh = renderer.module.roi
    outside = np.ones((SIZE, SIZE), bool)
    outside[ry : ry + rh, rx : rx + rw] = False
    for name in rig.RIG_NAMES:
        value = 10.0 if name in rig.HEAD_POSE else 1.0
        frame = renderer.render(rig.from_dict({name: value}))[0]
        assert _diff(frame, avatar.image)[outside].max() == 0, name


def _face_geometry(avatar: Avatar) -> dict[str, float]:
    lm = avatar.landmarks
    eyes_y = float(lm[[fb.IRIS_IMG_LEFT, fb.IRIS_IMG_RIGHT], 1].mean())
    return {
        "eyes_y": eyes_y,
        "nose_y": float(lm[1, 1]),
        "brow_y": float(lm[list(fb.BROW_IMG_LEFT + fb.BROW_IMG_RIGHT), 1].min()),
        "cheek_y": float(lm[list(fb.EYE_IMG_LEFT_LOWER + fb.EYE_IMG_RIGHT_LOWER), 1].max()),
    }


def test_jaw_open_changes_only_the_lower_face(renderer: RendererWrapper, avatar: Avatar) -> None:
    g = _face_geometry(avatar)
    frame = renderer.render(rig.from_dict({"jawOpen": 1.0}))[0]
    ys, _ = np.nonzero(_diff(frame, avatar.image) > 10)
    assert ys.size > 200
    # everything that visibly moves lies below the point halfway between the eyes and the nose tip
    assert ys.min() > (g["eyes_y"] + g["nose_y"]) / 2.0
    # and the mouth really opens: dark interior pixels appear between the lips
    lips = avatar.landmarks[[13, 14], :2].mean(axis=0)
    iod = float(avatar.tensors["iod"])
    y0, y1 = int(lips[1]), int(lips[1] + 0.35 * iod)
    x0, x1 = int(lips[0] - 0.15 * iod), int(lips[0] + 0.15 * iod)
    lum_open = frame[y0:y1, x0:x1].mean()
    lum_rest = avatar.image[y0:y1, x0:x1].mean()
    assert lum_open < lum_rest - 20


def test_blink_changes_only_the_eye_regions(renderer: RendererWrapper, avatar: Avatar) -> None:
    g = _face_geometry(avatar)
    iod = float(avatar.tensors["iod"])
    frame = renderer.render(rig.from_dict({"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}))[0]
    ys, xs = np.nonzero(_diff(frame, avatar.image) > 10)
    assert ys.size > 50
    assert ys.min() >= g["brow_y"] - 0.1 * iod
    assert ys.max() <= g["cheek_y"] + 0.15 * iod
    eye_xs = avatar.landmarks[list(fb.EYE_IMG_LEFT_UPPER + fb.EYE_IMG_RIGHT_UPPER), 0]
    assert xs.min() >= eye_xs.min() - 0.25 * iod and xs.max() <= eye_xs.max() + 0.25 * iod
    # the lid really closes: the dark iris disappears from the eye's centre row band
    for iris in (fb.IRIS_IMG_LEFT, fb.IRIS_IMG_RIGHT):
        cx, cy = avatar.landmarks[iris, :2].astype(int)
        r = max(2, int(0.08 * iod))
        before = avatar.image[cy - r : cy + r, cx - r : cx + r].mean()
        after = frame[cy - r : cy + r, cx - r : cx + r].mean()
        assert after > before + 15, "the iris is still visible at blink = 1"


def test_one_sided_coefficients_move_their_own_side(renderer: RendererWrapper, avatar: Avatar) -> None:
    # "Left" is the subject's left: the image's right half
    mid_x = float(avatar.landmarks[[fb.IRIS_IMG_LEFT, fb.IRIS_IMG_RIGHT], 0].mean())
    for name, image_right in (
        ("mouthSmileLeft", True),
        ("mouthSmileRight", False),
        ("eyeBlinkLeft", True),
        ("eyeBlinkRight", False),
    ):
        frame = renderer.render(rig.from_dict({name: 1.0}))[0]
        _, xs = np.nonzero(_diff(frame, avatar.image) > 10)
        right_share = float((xs > mid_x).mean())
        assert (right_share > 0.8) if image_right else (right_share < 0.2), (name, right_share)


def test_rejects_a_wrong_rig_shape(renderer: RendererWrapper) -> None:
    with pytest.raises(ValueError, match="rig must be"):
        renderer.render(np.zeros((2, 5), np.float32))

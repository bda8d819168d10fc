"""Inverse fitter: synthetic landmark motion, the similarity nuisance, render → detect → fit round trip."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stream_avatar.avatar.landmarks import detect_faces
from stream_avatar.avatar.store import Avatar
from stream_avatar.capture import fitter
from stream_avatar.motion import rig
from stream_avatar.render import facs_basis as fb
from stream_avatar.render.renderer import RendererWrapper

SIZE = 256  # the fit works in face units; a small portrait keeps rendering and detection quick

MOUTH = (
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthStretchLeft",
    "mouthStretchRight",
)
BROW = ("browInnerUp", "browDownLeft", "browDownRight", "browOuterUpLeft", "browOuterUpRight")
SCORED = MOUTH + BROW
SCORED_IDX = [rig.index(n) for n in SCORED]

# Expressions people make: one mouth gesture and one brow gesture at a time, ranges (lo, hi).
MOUTH_GESTURES: tuple[dict[str, tuple[float, float]], ...] = (
    {"mouthSmileLeft": (0.3, 0.9), "mouthSmileRight": (0.3, 0.9)},
    {"mouthSmileLeft": (0.3, 0.9)},
    {"mouthSmileRight": (0.3, 0.9)},
    {"mouthFrownLeft": (0.3, 0.9), "mouthFrownRight": (0.3, 0.9)},
    {"mouthStretchLeft": (0.3, 0.9), "mouthStretchRight": (0.3, 0.9)},
    {"mouthFunnel": (0.3, 0.9)},
    {"mouthPucker": (0.3, 0.9)},
    {"mouthClose": (0.2, 0.5)},  # lips together while the jaw hangs open
    {},
)
BROW_GESTURES: tuple[dict[str, tuple[float, float]], ...] = (
    {"browInnerUp": (0.3, 0.9)},
    {"browDownLeft": (0.3, 0.9), "browDownRight": (0.3, 0.9)},
    {"browOuterUpLeft": (0.3, 0.9), "browOuterUpRight": (0.3, 0.9)},
    {"browInnerUp": (0.3, 0.9), "browOuterUpLeft": (0.3, 0.9), "browOuterUpRight": (0.3, 0.9)},
    {"browOuterUpLeft": (0.3, 0.9)},
    {"browDownRight": (0.3, 0.9)},
    {},
)


ANG = slice(rig.NUM_BLENDSHAPES, rig.NUM_BLENDSHAPES + len(rig.HEAD_ANGLES))
SHIFT = slice(ANG.stop, rig.RIG_SIZE)


def random_rig(seed: int, head_deg: float = 8.0, shift_mm: float = 0.0) -> np.ndarray:
    """A sparse, plausible rig: jaw often open, one mouth and one brow gesture, head within ±head_deg."""
    g = np.random.default_rng(seed)
    v = rig.zeros()
    mouth = MOUTH_GESTURES[seed % len(MOUTH_GESTURES)]
    for name, (lo, hi) in mouth.items():
        v[rig.index(name)] = g.uniform(lo, hi)
    if "mouthClose" in mouth or g.random() < 0.6:
        v[rig.index("jawOpen")] = g.uniform(0.15, 0.6)
    close = rig.index("mouthClose")
    v[close] = min(v[close], v[rig.index("jawOpen")])  # ARKit: mouthClose never exceeds jawOpen
    for name, (lo, hi) in BROW_GESTURES[seed % len(BROW_GESTURES)].items():
        v[rig.index(name)] = g.uniform(lo, hi)
    v[ANG] = g.uniform(-head_deg, head_deg, 3)
    v[SHIFT] = g.uniform(-shift_mm, shift_mm, 2)
    return v


def rotate(landmarks: np.ndarray, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Turn Face Mesh landmarks rigidly about their centroid, in degrees with the rig's sign conventions.

    Written independently of the fitter: depth toward the camera is -z; positive yaw brings near points
    to +x, positive pitch brings them down (+y), positive roll turns the image clockwise.
    """
    c = landmarks[: fb.MESH_POINTS].mean(axis=0)
    p = landmarks - c
    x, y, d = p[:, 0], p[:, 1], -p[:, 2]
    a, b, g = (math.radians(v) for v in (yaw, pitch, roll))
    x, d = x * math.cos(a) + d * math.sin(a), -x * math.sin(a) + d * math.cos(a)
    y, d = y * math.cos(b) + d * math.sin(b), -y * math.sin(b) + d * math.cos(b)
    x, y = x * math.cos(g) - y * math.sin(g), x * math.sin(g) + y * math.cos(g)
    return np.stack([x + c[0], y + c[1], -d + c[2]], axis=1)


@pytest.fixture(scope="module")
def avatar(default_avatar: Callable[[int], Avatar]) -> Avatar:
    return default_avatar(SIZE)


@pytest.fixture(scope="module")
def renderer(avatar: Avatar) -> RendererWrapper:
    return RendererWrapper(avatar.tensors)


# --- solver and model pieces -----------------------------------------------------------------------


def test_box_qp_matches_scipy_lsq_linear() -> None:
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    for trial in range(20):
        m, n = 60, 12
        a = rng.standard_normal((m, n))
        a[:, 1] = a[:, 0] + 0.01 * rng.standard_normal(m)  # a nearly collinear pair
        b = rng.standard_normal(m) * 3.0
        lo = np.where(np.arange(n) < 8, 0.0, -np.inf)
        hi = np.where(np.arange(n) < 8, 1.0, np.inf)
        ours = fitter._box_qp(a.T @ a, -a.T @ b, lo, hi)
        ref = optimize.lsq_linear(a, b, bounds=(lo, hi), tol=1e-12).x
        cost_ours = float(((a @ ours - b) ** 2).sum())
        cost_ref = float(((a @ ref - b) ** 2).sum())
        assert cost_ours <= cost_ref * (1 + 1e-9) + 1e-9, trial
        assert np.all(ours >= lo) and np.all(ours <= hi)


def test_renderer_head_fields_match_the_avatars_flow_basis(avatar: Avatar) -> None:
    """The fitter's copy of the renderer's head field equals the avatar's precomputed basis at the mesh."""
    basis = avatar.tensors["basis"].float()  # (K, 2, gh, gw)
    rx, ry, rw, rh = (int(v) for v in avatar.tensors["roi"].tolist())
    pts = avatar.landmarks[: fb.MESH_POINTS, :2].astype(np.float64)
    grid = np.stack([(pts[:, 0] - rx) / (rw - 1) * 2 - 1, (pts[:, 1] - ry) / (rh - 1) * 2 - 1], axis=-1)
    g = torch.from_numpy(grid[None, None].astype(np.float32)).expand(len(rig.HEAD_POSE), -1, -1, -1)
    sampled = F.grid_sample(basis[rig.NUM_BLENDSHAPES :], g, align_corners=True)[:, :, 0].permute(0, 2, 1)
    ours = fitter.renderer_head_fields(avatar.landmarks)
    assert np.abs(ours - sampled.numpy()).max() < 0.05  # px per degree; the fields reach ~2 px per degree


def test_rejects_bad_input(avatar: Avatar) -> None:
    with pytest.raises(ValueError, match="landmarks"):
        fitter.fit(np.zeros((10, 3)), avatar.landmarks)
    with pytest.raises(ValueError, match="neutral_landmarks"):
        fitter.fit(avatar.landmarks, avatar.landmarks[:, :2])  # depth is needed
    with pytest.raises(ValueError, match="framing"):
        fitter.fit(avatar.landmarks, avatar.landmarks, framing="studio")  # type: ignore[arg-type]


# --- synthetic motion (no detector) ----------------------------------------------------------------


def test_neutral_fits_to_zero(avatar: Avatar) -> None:
    for framing in ("video", "fixed"):
        res = fitter.fit(avatar.landmarks, avatar.landmarks, framing=framing)
        assert np.abs(res.rig).max() < 1e-6, framing
        assert res.residual_px < 1e-6
        assert res.scale == pytest.approx(1.0)


@pytest.mark.parametrize("framing", ["fixed", "video"])
def test_synthetic_motion_is_recovered(avatar: Avatar, framing: fitter.Framing) -> None:
    """Landmarks moved exactly by the model come back almost exactly (all 30 blendshapes, head pose)."""
    neutral = avatar.landmarks.astype(np.float64)
    disp = fb.blendshape_displacements(neutral)
    head = fitter.renderer_head_fields(neutral)
    # mouthClose moves the lips exactly like k · (mouthPressLeft + mouthPressRight) (module docstring), so
    # only the lip-closing total close + (pressL + pressR) / 2k is observable (both presses at 1 ≈ 0.18).
    press = [rig.index("mouthPressLeft"), rig.index("mouthPressRight")]
    close = rig.index("mouthClose")
    k = np.linalg.lstsq(disp[press].reshape(2, -1).T, disp[close].ravel(), rcond=None)[0]
    assert np.allclose(k, k[0]) and k[0] > 1.0
    others = [i for i in range(rig.RIG_SIZE) if i not in (*press, close)]
    worst, worst_close = np.zeros(rig.RIG_SIZE), 0.0
    for seed in range(8):
        truth = random_rig(seed, shift_mm=4.0 if framing == "video" else 0.0)  # "fixed" fits no shift
        moved: np.ndarray
        if framing == "fixed":
            moved = neutral[: fb.MESH_POINTS, :2] + np.tensordot(truth, np.concatenate([disp, head]), axes=1)
        else:
            posed = rotate(neutral, *truth[ANG])[: fb.MESH_POINTS, :2]
            px_per_mm = fb.face_frame(neutral).iod / rig.IOD_MM
            moved = (
                posed + np.tensordot(truth[: rig.NUM_BLENDSHAPES], disp, axes=1) + truth[SHIFT] * px_per_mm
            )
        res = fitter.fit(moved, neutral, framing=framing, ridge=1e-8, sparsity=0.0, iterations=8)
        assert res.residual_px < 1e-3, (seed, res.residual_px)
        worst = np.maximum(worst, np.abs(res.rig - truth))
        lip_closing = res.rig[close] + res.rig[press].sum() / (2.0 * k[0])
        worst_close = max(worst_close, abs(lip_closing - truth[close]))
    assert worst[others].max() < 0.01, dict(zip(rig.RIG_NAMES, worst.round(4), strict=True))
    assert worst_close < 0.01


def test_default_regularisation_biases_little(avatar: Avatar) -> None:
    neutral = avatar.landmarks.astype(np.float64)
    cols = np.concatenate([fb.blendshape_displacements(neutral), fitter.renderer_head_fields(neutral)])
    errs = []
    for seed in range(8):
        truth = random_rig(seed)
        moved = neutral[: fb.MESH_POINTS, :2] + np.tensordot(truth, cols, axes=1)
        res = fitter.fit(moved, neutral, framing="fixed")
        errs.append(np.abs(res.rig - truth))
    mae = np.mean(errs, axis=0)
    assert mae[SCORED_IDX].mean() < 0.03
    assert mae[rig.NUM_BLENDSHAPES :].max() < 0.1


def test_translated_and_scaled_face_fits_to_zero(avatar: Avatar) -> None:
    """A video face that moved and grew (no expression) is all similarity, no blendshapes or pose."""
    lm = avatar.landmarks.astype(np.float64)
    anchor = np.array([40.0, 200.0, 0.0])
    moved = anchor + 1.35 * (lm - anchor) + np.array([-23.0, 11.0, 0.0])
    res = fitter.fit(moved, lm)
    assert res.rig[: rig.NUM_BLENDSHAPES].max() < 0.01
    assert np.abs(res.rig[ANG]).max() < 0.05
    # the rig's headX/headY is the face's shift in mm (at the neutral's scale)
    px_per_mm = fb.face_frame(lm).iod / rig.IOD_MM
    np.testing.assert_allclose(res.rig[SHIFT], np.clip(res.translation_px / px_per_mm, -15, 15), atol=1e-3)
    assert res.scale == pytest.approx(1.35, abs=1e-4)
    assert res.residual_px < 0.01
    # the similarity maps the neutral onto the frame: centre + s (p - centre) + t
    pred = res.centre_px + res.scale * (lm[:, :2] - res.centre_px) + res.translation_px
    assert np.abs(pred - moved[:, :2]).max() < 0.05


def test_video_framing_reads_a_real_turn_with_translation(avatar: Avatar) -> None:
    """A rigid turn of real landmarks (Face Mesh depth), shifted and scaled, comes back in true degrees."""
    lm = avatar.landmarks.astype(np.float64)
    for angles in ((12.0, 0.0, 0.0), (0.0, -10.0, 0.0), (-9.0, 7.0, -13.0)):
        frame = 0.8 * rotate(lm, *angles) + np.array([30.0, -12.0, 0.0])
        res = fitter.fit(frame, lm)
        np.testing.assert_allclose(res.rig[ANG], angles, atol=0.05)
        assert res.rig[: rig.NUM_BLENDSHAPES].max() < 0.01


# --- round trip through the renderer and Face Mesh ----------------------------------------------------


def test_identity_frame_fits_to_near_zero(avatar: Avatar, renderer: RendererWrapper) -> None:
    res = fitter.fit_frame(renderer.render(rig.zeros())[0], avatar.landmarks, framing="fixed")
    assert res is not None
    assert res.rig[: rig.NUM_BLENDSHAPES].max() < 0.05
    assert np.abs(res.rig[rig.NUM_BLENDSHAPES :]).max() < 0.5


def test_no_face_gives_none(avatar: Avatar) -> None:
    assert fitter.fit_frame(np.full((SIZE, SIZE, 3), 128, np.uint8), avatar.landmarks) is None


def test_round_trip_render_detect_fit(avatar: Avatar, renderer: RendererWrapper) -> None:
    """The acceptance test: random sparse rigs rendered on the default portrait, Face Mesh on the frame,
    fit against the enrollment landmarks: mouth + brow MAE ≤ 0.1, every head angle within 2°."""
    n = 12
    truths = np.stack([random_rig(seed) for seed in range(n)])
    frames = renderer.render(truths)
    fits = []
    for frame in frames:
        faces = detect_faces(frame)
        assert len(faces) == 1
        fits.append(fitter.fit(faces[0], avatar.landmarks, framing="fixed").rig)
    err = np.abs(np.stack(fits) - truths)
    per_coef = err[:, SCORED_IDX].mean(axis=0)
    head = err[:, ANG]
    shift = err[:, SHIFT]
    print("\nround trip MAE per coefficient:")
    for name, e in zip(SCORED, per_coef, strict=True):
        print(f"  {name:18s} {e:.3f}")
    print(
        f"  mouth+brow MAE {per_coef.mean():.3f}; per vector max {err[:, SCORED_IDX].mean(axis=1).max():.3f}"
    )
    print(
        f"  head |err| deg max (yaw, pitch, roll) {head.max(axis=0).round(2)}, mean {head.mean(0).round(2)}"
    )
    print(f"  head shift |err| mm max (x, y) {shift.max(axis=0).round(2)}, mean {shift.mean(0).round(2)}")
    assert per_coef.mean() <= 0.1
    assert head.max() <= 2.0, head.round(2)
    assert shift.max() <= 1.5, shift.round(2)

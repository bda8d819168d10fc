"""The inverse rig: face-mesh landmarks of a frame → rig coefficients and head pose.

Model. Measured against the same person's neutral landmarks, a frame's 468 mesh points sit at

    frame_i ≈ centre + s · (pose_θ(neutral_i) − centre + Σ_k c_k · D_k(i)) + t

with ``D_k`` the FACS displacement of blendshape ``k`` at value 1 (``facs_basis.blendshape_displacements``
of the neutral face, the same table the renderer spreads into its flow), ``pose_θ`` the head pose, and a
similarity (scale ``s`` about the neutral's centroid, shift ``t``) for a face that moves and changes size
in a video. The fit minimises the weighted squared residual plus a small ridge on the blendshapes,
blendshapes bounded to [0, 1], by Gauss-Newton: each step linearises the pose, undoes the current
similarity, and solves one bound-constrained linear least-squares problem for all unknowns at once.

Two framings, because head pose is observed differently in them:

- ``"video"`` (default): a camera frame of a real face. Translation and scale are free, so only
  parallax tells a turn from a shift; the pose is a rigid 3-D rotation of the neutral landmarks using
  their Face Mesh depth (true degrees, exact at any angle after a few re-linearisations).
- ``"fixed"``: the frame shares the neutral's camera and crop, as frames rendered from an avatar do (or a
  stabilised crop). No similarity is fitted, and the pose is the renderer's own per-degree head field
  (``precompute``: a sphere of the head's size turned about the silhouette plane for yaw and pitch, an
  image-plane rotation about a pivot under the chin for roll). Fitting then inverts the renderer. The
  renderer's headX/headY shift is not fitted here: on the face its yaw and pitch are nearly a slide
  too, and the two would trade off; a fixed-framing frame is taken to have no shift.

Why two: the renderer turns the head mostly by sliding the face across the static background, with
little parallax inside the face, and Face Mesh reports such a frame as a shifted face. With translation
free, a rendered 8° yaw comes back as ~3°; with the camera known to be fixed it comes back within about
1°. A real turn has real parallax, which the rigid model reads exactly with translation free. (The
renderer's field used on a real turn would leak: a rigid 8° pitch of real landmarks reads as 10° plus
~0.5 of browDown and mouthSmile, because its sphere has half the parallax of a real face.)

Not every coefficient is observable from 2-D points: ``mouthClose`` moves the lips exactly like
``mouthPressLeft + mouthPressRight`` scaled, and on one mouth corner ``mouthStretch`` lies inside the cone
of ``mouthSmile`` and ``mouthFrown`` (stretch ≈ 0.83 smile + 1.35 frown). A small L1 weight (a linear cost,
the coefficients being non-negative) picks the sparsest explanation, which is the right one for the
expressions people make (antagonists on one corner rarely fire together). And Face Mesh under-reports
expression motion in rendered frames (jaw and lip corners at ~0.7-0.85 of the true displacement, brows
at ~0.3-0.7), so a fit of a rendered frame reads those coefficients low; ``tests/test_fitter.py`` measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stream_avatar.motion import rig
from stream_avatar.render import facs_basis as fb

__all__ = [
    "FitResult",
    "Framing",
    "fit",
    "fit_frame",
    "landmark_weights",
    "renderer_head_fields",
]

Framing = Literal["video", "fixed"]

_NB = rig.NUM_BLENDSHAPES
_NH = len(rig.HEAD_ANGLES)
_RAD = math.pi / 180.0

RIDGE = 0.02
"""Tikhonov weight on the blendshapes, relative to each column's own energy (columns are normalised).

An isolated coefficient is biased by about this fraction; near-collinear pairs (funnel vs pucker) share a
movement instead of cancelling each other."""
SPARSITY = 0.03
"""L1 weight on the blendshapes, in IOD: a coefficient is only claimed for a movement it explains that is
larger than about this (weighted) distance, which is the order of Face Mesh's landmark noise (~1 px on a
36 px IOD). It also picks the sparsest of equivalent explanations (see above)."""
GN_ITERATIONS = 4

# Relative weights of landmark groups. The lips, lids and brows carry the expression; the face oval is
# where Face Mesh is least sure (its jaw line slides along the cheek), and the other mesh points (cheeks,
# forehead, nose) are interpolated by Face Mesh from the features around them, so both vote little.
_OTHER_WEIGHT = 0.3
_GROUP_WEIGHTS: tuple[tuple[tuple[int, ...], float], ...] = (
    (fb.FACE_OVAL, 0.25),
    (fb.BROW_IMG_LEFT + fb.BROW_IMG_RIGHT, 2.0),
    (fb.EYE_IMG_LEFT_UPPER + fb.EYE_IMG_LEFT_LOWER + fb.EYE_IMG_RIGHT_UPPER + fb.EYE_IMG_RIGHT_LOWER, 3.0),
    (fb.EYE_IMG_LEFT_CREASE + fb.EYE_IMG_RIGHT_CREASE, 1.5),
    (
        fb.UPPER_INNER_LIP
        + fb.LOWER_INNER_LIP
        + fb.UPPER_OUTER_LIP
        + fb.LOWER_OUTER_LIP
        + fb.UPPER_LIP_BODY
        + fb.LOWER_LIP_BODY,
        3.0,
    ),
)


def landmark_weights() -> np.ndarray:
    """(468,) float64 weights of the squared residual of each mesh point."""
    w = np.full(fb.MESH_POINTS, _OTHER_WEIGHT)
    for group, value in _GROUP_WEIGHTS:
        w[list(group)] = value
    return w


@dataclass(frozen=True)
class FitResult:
    """One fitted frame.

    Attributes:
        rig: (RIG_SIZE,) float32: blendshapes in [0, 1], head angles in degrees and the head's shift in mm
            (headX/headY: with ``"video"`` the face's translation converted at the neutral's scale; 0 with
            ``"fixed"``, see ``fit``), clamped to the rig's ranges.
        residual_px: RMS distance, frame pixels, between the frame's 468 mesh points and the fitted model.
        scale: frame size / neutral size (1 with ``framing="fixed"``).
        translation_px: (2,) float64 shift of the face, frame pixels (0 with ``framing="fixed"``).
        centre_px: (2,) float64 the neutral point the scale is taken about, neutral pixels.
    """

    rig: np.ndarray
    residual_px: float
    scale: float
    translation_px: np.ndarray
    centre_px: np.ndarray


def _as_landmarks(landmarks: np.ndarray, what: str, depth: bool) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    dims = (3,) if depth else (2, 3)
    if lm.ndim != 2 or lm.shape[0] < fb.MESH_POINTS or lm.shape[1] not in dims:
        want = "3" if depth else "2 or 3"
        raise ValueError(f"{what} must be (468 or 478, {want}), got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError(f"{what} contain non-finite values")
    return lm


def renderer_head_fields(neutral_landmarks: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
    """The renderer's head-pose displacement per degree (yaw, pitch, roll) at ``points``.

    ``precompute.head_pose_fields``, which the avatar's flow basis is built from, with the head weight
    taken as 1, which it is on the face (a test compares the two). ``points`` (P, 2) px
    default to the 468 mesh points. Returns (3, P, 2) px per degree.
    """
    from stream_avatar.render.precompute import head_pose_fields

    lm = _as_landmarks(neutral_landmarks, "neutral_landmarks", depth=False)
    pts = lm[: fb.MESH_POINTS, :2] if points is None else np.asarray(points, dtype=np.float64)[:, :2]
    return head_pose_fields(lm, pts)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """3×3 rotation of (x right, y down, d toward the camera) for (yaw, pitch, roll) in degrees.

    Signs follow ``rig``: yaw moves near points toward +x, pitch moves them down (+y), roll turns the
    image clockwise. Applied yaw first, then pitch, then roll.
    """
    a, b, g = (float(v) * _RAD for v in angles_deg)
    ry = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(b), math.sin(b)], [0.0, -math.sin(b), math.cos(b)]])
    rz = np.array([[math.cos(g), -math.sin(g), 0.0], [math.sin(g), math.cos(g), 0.0], [0.0, 0.0, 1.0]])
    return rz @ rx @ ry


class _RigidPose:
    """Orthographic projection of the neutral mesh turned rigidly about its centroid (``"video"``)."""

    def __init__(self, neutral: np.ndarray, centre: np.ndarray) -> None:
        # Face Mesh depth is in x-pixel units, smaller = nearer: flip it to "toward the camera".
        self.centre = centre
        self.pts = np.stack(
            [neutral[:, 0] - centre[0], neutral[:, 1] - centre[1], -(neutral[:, 2] - neutral[:, 2].mean())],
            axis=1,
        )

    def __call__(self, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posed (468, 2) px and its Jacobian (3, 468, 2) px per degree (central differences)."""
        posed = self._project(angles)
        jac = np.empty((_NH, *posed.shape))
        h = 0.05
        for i in range(_NH):
            step = np.zeros(_NH)
            step[i] = h
            jac[i] = (self._project(angles + step) - self._project(angles - step)) / (2.0 * h)
        return posed, jac

    def _project(self, angles: np.ndarray) -> np.ndarray:
        return (self.pts @ _rotation(angles).T)[:, :2] + self.centre


class _RendererPose:
    """The renderer's head field, linear in the angles (``"fixed"``)."""

    def __init__(self, neutral: np.ndarray, fields: np.ndarray) -> None:
        self.neutral = neutral[:, :2]
        self.fields = fields

    def __call__(self, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.neutral + np.tensordot(angles, self.fields, axes=1), self.fields


def _box_qp(
    hess: np.ndarray, grad0: np.ndarray, lo: np.ndarray, hi: np.ndarray, iters: int = 60
) -> np.ndarray:
    """argmin ½xᵀHx + grad0ᵀx subject to lo ≤ x ≤ hi, H symmetric positive definite (n ≲ 50).

    Projected Newton with an active set (Bertsekas): variables the gradient presses against a bound are
    held there, the rest take the exact Newton step of the reduced problem, and a backtracking search
    along the projected path keeps the objective falling. At this size it reaches the exact optimum in a
    few steps and microseconds; ``scipy.optimize.lsq_linear`` would do the same with a runtime dependency
    that nothing else in the engine needs (a test checks the two agree).
    """
    x = np.clip(np.linalg.solve(hess, -grad0), lo, hi)

    def objective(v: np.ndarray) -> float:
        return float(0.5 * v @ hess @ v + grad0 @ v)

    f = objective(x)
    for _ in range(iters):
        grad = hess @ x + grad0
        held = ((x <= lo) & (grad > 0.0)) | ((x >= hi) & (grad < 0.0))
        free = ~held
        if not free.any():
            break
        step = np.zeros_like(x)
        step[free] = -np.linalg.solve(hess[np.ix_(free, free)], grad[free])
        t = 1.0
        while True:
            x_new = np.clip(x + t * step, lo, hi)
            f_new = objective(x_new)
            if f_new <= f + 1e-4 * float(grad @ (x_new - x)) or t < 1e-8:
                break
            t *= 0.5
        if f_new > f or float(np.abs(x_new - x).max()) < 1e-12:
            break
        x, f = x_new, f_new
    return x


def fit(
    landmarks: np.ndarray,
    neutral_landmarks: np.ndarray,
    *,
    framing: Framing = "video",
    ridge: float = RIDGE,
    sparsity: float = SPARSITY,
    weights: np.ndarray | None = None,
    iterations: int = GN_ITERATIONS,
) -> FitResult:
    """Fit rig coefficients and head pose to one frame's landmarks.

    Args:
        landmarks: (478 or 468, 2 or 3) px: Face Mesh landmarks of the frame (``detect_faces``).
        neutral_landmarks: (478 or 468, 3) px with depth: the same person at rest and facing the camera
            (an avatar's enrollment landmarks, or a neutral frame of the video).
        framing: ``"video"`` (free translation and scale, rigid 3-D head) or ``"fixed"`` (same camera and
            crop as the neutral, the renderer's head field); see the module docstring.
        ridge: Tikhonov weight on the blendshapes (see ``RIDGE``).
        sparsity: L1 weight on the blendshapes (see ``SPARSITY``).
        weights: (468,) per-point weights of the squared residual; None → ``landmark_weights()``.
        iterations: Gauss-Newton steps (``"fixed"`` is linear and needs one).

    Returns:
        FitResult.
    """
    frame = _as_landmarks(landmarks, "landmarks", depth=False)[: fb.MESH_POINTS, :2]
    neutral_full = _as_landmarks(neutral_landmarks, "neutral_landmarks", depth=True)
    neutral = neutral_full[: fb.MESH_POINTS]
    w = landmark_weights() if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (fb.MESH_POINTS,) or (w < 0.0).any():
        raise ValueError(f"weights must be ({fb.MESH_POINTS},) and non-negative, got {w.shape}")
    if framing not in ("video", "fixed"):
        raise ValueError(f"framing must be 'video' or 'fixed', got {framing!r}")
    sw = np.repeat(np.sqrt(w), 2)  # one weight per residual row, rows interleaved x, y

    centre = neutral[:, :2].mean(axis=0)
    blend = fb.blendshape_displacements(neutral_full)  # (NB, 468, 2) px
    a_blend = blend.reshape(_NB, -1).T  # (936, NB)
    pose: _RigidPose | _RendererPose
    if framing == "video":
        pose = _RigidPose(neutral, centre)
        nuisance = np.stack(
            [
                np.tile([1.0, 0.0], fb.MESH_POINTS),
                np.tile([0.0, 1.0], fb.MESH_POINTS),
                np.zeros(2 * fb.MESH_POINTS),  # scale column: filled per step (about the posed face)
            ],
            axis=1,
        )
    else:
        # Angles only: on the face the renderer's yaw and pitch are nearly a slide, so a shift column
        # would trade off against them (8 degrees read as a few mm); "fixed" assumes no shift.
        pose = _RendererPose(neutral, renderer_head_fields(neutral_full)[:_NH])
        nuisance = np.zeros((2 * fb.MESH_POINTS, 0))
        iterations = 1
    n_x = _NB + _NH + nuisance.shape[1]
    lo = np.full(n_x, -np.inf)
    hi = np.full(n_x, np.inf)
    lo[:_NB], hi[:_NB] = 0.0, 1.0
    reg = np.zeros(n_x)
    reg[:_NB] = ridge
    lin = np.zeros(n_x)
    lin[:_NB] = sparsity * fb.face_frame(neutral_full).iod

    angles = np.zeros(_NH)
    coef = np.zeros(_NB)
    shift_mm = np.zeros(len(rig.HEAD_SHIFT))
    scale, shift = 1.0, np.zeros(2)
    for _ in range(max(1, iterations)):
        posed, jac = pose(angles)
        # undo the current similarity, then fit what is left linearly
        back = (frame - centre - shift) / scale + centre
        b = (back - posed).reshape(-1)
        a = np.concatenate([a_blend, jac.reshape(_NH, -1).T, nuisance], axis=1)
        if framing == "video":
            a[:, -1] = (posed - centre).reshape(-1)
        aw = a * sw[:, None]
        norms = np.linalg.norm(aw, axis=0)
        norms = np.where(norms > 1e-9, norms, 1.0)
        an = aw / norms  # unit columns: the ridge and L1 weigh every coefficient by its own signal
        hess = an.T @ an + np.diag(reg)
        z = _box_qp(hess, lin - an.T @ (b * sw), lo * norms, hi * norms)
        x = z / norms
        coef = x[:_NB]
        angles = angles + x[_NB : _NB + _NH]
        if framing == "video":
            # back ≈ posed + A·coef + d_shift + d_scale·(posed − centre): fold d_* into the similarity
            shift = shift + scale * x[_NB + _NH : _NB + _NH + 2]
            scale = scale * (1.0 + x[-1])

    posed, _ = pose(angles)
    if framing == "video":  # the face's shift in the frame, in mm at the neutral's scale
        shift_mm = shift / (fb.face_frame(neutral_full).iod / rig.IOD_MM)
    model = centre + scale * (posed + np.tensordot(coef, blend, axes=1) - centre) + shift
    residual = float(np.sqrt(((model - frame) ** 2).sum(axis=1).mean()))
    out = np.concatenate([coef, angles, shift_mm]).astype(np.float32)
    return FitResult(
        rig=rig.clamp(out),
        residual_px=residual,
        scale=float(scale),
        translation_px=shift,
        centre_px=centre,
    )


def fit_frame(
    image_rgb: np.ndarray, neutral_landmarks: np.ndarray, *, framing: Framing = "video"
) -> FitResult | None:
    """Detect the face in ``image_rgb`` ((H, W, 3) uint8 RGB) and fit it; None when no face is found.

    With several faces the widest (largest face oval) is fitted.
    """
    from stream_avatar.avatar.landmarks import detect_faces, face_width

    faces = detect_faces(image_rgb)
    if not faces:
        return None
    return fit(max(faces, key=face_width), neutral_landmarks, framing=framing)

"""Per-coefficient control-point displacements of the rig, authored from FACS.

Each blendshape moves face-mesh landmarks by a displacement written in face units (the inter-ocular
distance, IOD) along the face's own axes, so the same table fits any portrait size and roll. The
values follow the action units named in the comments (AU numbers after Ekman & Friesen's FACS).
Head pose is not authored here: it is a rigid field over the whole head (see ``precompute``).

All functions take landmarks as (N, 3) float arrays in pixels (x, y, depth) of the MediaPipe
468/478-point face mesh and return displacements (N, 2) in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_avatar.motion import rig

# MediaPipe face-mesh index groups, ordered from the image's left to its right.
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
UPPER_OUTER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
# Points between the outer and inner lip contours (the lips' red).
UPPER_LIP_BODY = (
    76,
    184,
    74,
    73,
    72,
    11,
    302,
    303,
    304,
    408,
    306,
    62,
    183,
    42,
    41,
    38,
    12,
    268,
    271,
    272,
    407,
    292,
)
LOWER_LIP_BODY = (77, 90, 180, 85, 16, 315, 404, 320, 307, 96, 89, 179, 86, 15, 316, 403, 319, 325)
# Eye contours of the image-left eye (the subject's right) and image-right eye (the subject's left).
EYE_IMG_LEFT_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
EYE_IMG_LEFT_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
EYE_IMG_LEFT_CREASE = (130, 247, 30, 29, 27, 28, 56, 190, 243)
EYE_IMG_RIGHT_UPPER = (362, 398, 384, 385, 386, 387, 388, 466, 263)
EYE_IMG_RIGHT_LOWER = (362, 382, 381, 380, 374, 373, 390, 249, 263)
EYE_IMG_RIGHT_CREASE = (463, 414, 286, 258, 257, 259, 260, 467, 359)
BROW_IMG_LEFT = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)  # outer → inner, upper then lower row
BROW_IMG_RIGHT = (336, 296, 334, 293, 300, 285, 295, 282, 283, 276)  # inner → outer
FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)
NOSE_WING_IMG_LEFT = (98, 64, 129, 203, 48)
NOSE_WING_IMG_RIGHT = (327, 294, 358, 423, 278)
IRIS_IMG_LEFT = 468
IRIS_IMG_RIGHT = 473
MESH_POINTS = 468


@dataclass(frozen=True)
class FaceFrame:
    """The face's own coordinate frame: origin between the eyes, unit = IOD in pixels.

    ``ex`` points from the image-left eye to the image-right eye; ``ey`` is perpendicular, pointing
    down the face. Both are unit vectors in image pixel axes.
    """

    origin: np.ndarray  # (2,) px
    ex: np.ndarray  # (2,)
    ey: np.ndarray  # (2,)
    iod: float  # px

    def to_face(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) pixel points → (N, 2) face units (u along the eyes, v down the face)."""
        d = pts[:, :2] - self.origin
        return np.stack([d @ self.ex, d @ self.ey], axis=1) / self.iod

    def vec(self, u: float, v: float) -> np.ndarray:
        """A displacement given in face units → pixels (2,)."""
        return (u * self.ex + v * self.ey) * self.iod


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    """The face frame of a 478-point mesh (irises) or 468-point mesh (eye-contour centres)."""
    if landmarks.shape[0] > IRIS_IMG_RIGHT:
        left = landmarks[IRIS_IMG_LEFT, :2]
        right = landmarks[IRIS_IMG_RIGHT, :2]
    else:
        left = landmarks[list(EYE_IMG_LEFT_UPPER + EYE_IMG_LEFT_LOWER), :2].mean(axis=0)
        right = landmarks[list(EYE_IMG_RIGHT_UPPER + EYE_IMG_RIGHT_LOWER), :2].mean(axis=0)
    d = right - left
    iod = float(np.linalg.norm(d))
    if iod < 1e-3:
        raise ValueError("degenerate landmarks: the eyes coincide")
    ex = d / iod
    ey = np.array([-ex[1], ex[0]])
    return FaceFrame(origin=(left + right) / 2.0, ex=ex, ey=ey, iod=iod)


def _gauss(pts_face: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    d2 = ((pts_face - centre) ** 2).sum(axis=1)
    return np.exp(-d2 / (2.0 * sigma * sigma))


def _gauss2(pts_face: np.ndarray, centre: np.ndarray, sigma_uv: tuple[float, float]) -> np.ndarray:
    """An axis-aligned anisotropic Gaussian: sigma along the eyes (u) and down the face (v)."""
    d = (pts_face - centre) / np.asarray(sigma_uv)
    return np.exp(-0.5 * (d**2).sum(axis=1))


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _interp_curve(xs: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """y of a polyline (M, 2) sorted by x, evaluated at xs (clamped at the ends)."""
    order = np.argsort(curve[:, 0])
    return np.interp(xs, curve[order, 0], curve[order, 1])


# Eyelid motion (AU5 upper lid raiser, AU7 lid tightener). The lid margins lie a pixel or two from
# the iris and the skin points around them, well under one cell of the renderer's flow grid
# (``precompute.GRID_STEP_PX``) at avatar sizes: a field that moves the margin points alone is averaged
# away before it reaches the pixels, and one that pins the occluded iris top under a moving lid folds.
# So a lid moves as a smooth field: the eye opening stretches (or compresses) toward the moving lid,
# and the skin on the far side of that lid follows with a falloff.
EYE_WIDE_LIFT = 0.45  # AU5: upper-lid margin lift at the eye's widest point, × its largest opening
EYE_WIDE_FALLOFF = 0.09  # face units above the upper lid over which the lid's skin follows (σ)
EYE_SQUINT_RAISE = 0.40  # AU7: lower-lid margin raise at the widest point, × the largest opening
EYE_SQUINT_LOWER = 0.05  # AU7: the upper lid comes down a little, × the local opening
EYE_SQUINT_FALLOFF = 0.20  # face units below the lower lid over which the skin follows (σ): about
# the lower lid's height down to the lid-cheek junction, so the lid's skin rises as one piece
EYE_OPENING_POWER = 1.5  # how the movement fades across the opening toward the other lid
TYPICAL_EYE_OPENING = 0.15  # face units (~10 mm of a 63 mm IOD): lid travel scales with the mean of
# this and the photo's own opening


@dataclass(frozen=True)
class _Lids:
    """One eye's lid contours in face units, each (M, 2) from one canthus to the other."""

    upper: np.ndarray
    lower: np.ndarray
    brow: np.ndarray  # the brow's lower edge above the eye

    def opening(self, u: np.ndarray) -> np.ndarray:
        """Lid-to-lid distance at u (zero at and beyond the canthi)."""
        return np.clip(_interp_curve(u, self.lower) - _interp_curve(u, self.upper), 0.0, None)

    def largest_opening(self) -> float:
        return float(self.opening(np.linspace(self.upper[:, 0].min(), self.upper[:, 0].max(), 64)).max())

    def raise_upper(self, pts: np.ndarray) -> np.ndarray:
        """(P, 2) face-unit points → (P,) how far each moves up, per unit of upper-lid margin lift.

        1 on the upper lid; between the lids it falls as the square of the distance toward the lower
        lid (which stays); above the lid the skin follows over ``EYE_WIDE_FALLOFF``.
        """
        u, v = pts[:, 0], pts[:, 1]
        v_up = _interp_curve(u, self.upper)
        gap = np.maximum(self.opening(u), 1e-6)
        inside = np.clip((v_up + gap - v) / gap, 0.0, 1.0) ** EYE_OPENING_POWER
        d = np.clip(v_up - v, 0.0, None)
        # the brow does not take part in AU5: the lid's skin follows up to the brow's lower edge
        reach = np.maximum(v_up - _interp_curve(u, self.brow), 0.05)
        above = np.exp(-0.5 * (d / EYE_WIDE_FALLOFF) ** 2) * np.clip(1.0 - (d / reach) ** 2, 0.0, 1.0)
        return np.where(v < v_up, above, inside)

    def raise_lower(self, pts: np.ndarray) -> np.ndarray:
        """(P, 2) → (P,) upward movement per unit of lower-lid margin raise: 1 on the lower lid, falling
        as the square of the distance toward the upper lid, the skin below following over
        ``EYE_SQUINT_FALLOFF``."""
        u, v = pts[:, 0], pts[:, 1]
        v_lo = _interp_curve(u, self.lower)
        gap = np.maximum(self.opening(u), 1e-6)
        inside = np.clip((v - (v_lo - gap)) / gap, 0.0, 1.0) ** EYE_OPENING_POWER
        below = np.exp(-0.5 * (np.clip(v - v_lo, 0.0, None) / EYE_SQUINT_FALLOFF) ** 2)
        return np.where(v > v_lo, below, inside)

    def lid_fields(self, pts: np.ndarray) -> dict[str, np.ndarray]:
        """(P, 2) face-unit points → vertical displacement (P,) in face units (+ down) of this eye's
        ``wide`` (AU5) and ``squint`` (AU7) at value 1; zero beyond the canthi."""
        gap = self.opening(pts[:, 0])
        # a lid's travel is a few millimetres whatever the photo's opening: an eye narrowed by a smile
        # in the photo still widens and tightens visibly
        reach = 0.5 * (self.largest_opening() + TYPICAL_EYE_OPENING)
        profile = _lid_profile(self, pts)
        wide = -EYE_WIDE_LIFT * reach * profile * self.raise_upper(pts)
        squint = -EYE_SQUINT_RAISE * reach * profile * self.raise_lower(pts)
        squint += EYE_SQUINT_LOWER * gap * self.raise_upper(pts)
        return {"wide": wide, "squint": squint}


SNEER_WING_LIFT = 0.12  # AU9: nose-wing lift, face units
SNEER_WING_RISE = -0.08  # face units along v: the lifted skin is centred above the wing, along the nose
SNEER_LIP_LIFT = 0.10  # AU9/10: upper-lip lift beside the philtrum, face units (both sides add up)
BROW_DOWN_LOWER = 0.09  # AU4: brow lowering, face units (Gaussian over the brow)
BROW_DOWN_INNER = 0.03  # AU4: extra lowering of the inner end
BROW_DOWN_DRAW = 0.16  # AU4: the inner ends' pull toward the midline, face units
BROW_DOWN_DRAW_SIGMA = 0.20  # face units: reach of that pull around each inner end
# face units above the eye line over which AU4's lowering sets in: the brow pushes the fold between
# brow and lid down with it (at 0.05 the lid margin, ~0.07 above the line, gets a few % of it)
BROW_DOWN_REACH = (0.05, 0.25)
CHEEK_LID_PUSH = 0.04  # AU6: lower-lid raise from the lifted cheek, face units


def _lid_profile(lids: _Lids, pts: np.ndarray) -> np.ndarray:
    """(P,) 1 mid-eye falling to 0 at the canthi: how much of a lid's movement a point at that u gets."""
    gmax = lids.largest_opening()
    return np.sqrt(np.clip(lids.opening(pts[:, 0]) / max(gmax, 1e-6), 0.0, 1.0))


def _cheek_squint(p: np.ndarray, pts: np.ndarray, side: str, lids: _Lids) -> np.ndarray:
    """AU6 on one side at value 1: (P,) vertical displacement (face units, + down) of face-unit points
    ``pts``, given the mesh ``p`` (468, 2). The cheek under the eye lifts and pushes the lower lid up."""
    eye_lo, corner = (EYE_IMG_RIGHT_LOWER, 291) if side == "Left" else (EYE_IMG_LEFT_LOWER, 61)
    eye_c = p[list(eye_lo)].mean(axis=0)
    cheek_c = eye_c + 0.45 * (p[corner] - eye_c)
    lid_push = CHEEK_LID_PUSH * lids.raise_lower(pts) * _lid_profile(lids, pts)
    return -0.07 * _gauss(pts, cheek_c, 0.28) - lid_push


def _eye_lids(p: np.ndarray) -> dict[str, _Lids]:
    """ARKit side ("Right" = the subject's right = the image-left eye) → its lids, from face-unit mesh
    points (468, 2)."""
    return {
        "Right": _Lids(p[list(EYE_IMG_LEFT_UPPER)], p[list(EYE_IMG_LEFT_LOWER)], p[list(BROW_IMG_LEFT[5:])]),
        "Left": _Lids(
            p[list(EYE_IMG_RIGHT_UPPER)], p[list(EYE_IMG_RIGHT_LOWER)], p[list(BROW_IMG_RIGHT[5:])]
        ),
    }


def blendshape_displacements(landmarks: np.ndarray) -> np.ndarray:
    """Displacements of the 468 mesh points for every blendshape at value 1.

    Returns (NUM_BLENDSHAPES, 468, 2) float64 pixels. Head pose rows are not included.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    fr = face_frame(lm)
    p = fr.to_face(lm[:MESH_POINTS])  # (468, 2) face units
    n = MESH_POINTS
    out = np.zeros((rig.NUM_BLENDSHAPES, n, 2))

    def put(name: str, disp_face: np.ndarray) -> None:
        """disp_face: (468, 2) in face units."""
        out[rig.index(name)] = disp_face[:, :1] * fr.ex * fr.iod + disp_face[:, 1:] * fr.ey * fr.iod

    def idx(group: tuple[int, ...]) -> np.ndarray:
        return np.asarray(group, dtype=np.int64)

    corner_l = p[61]  # image-left mouth corner (subject's right)
    corner_r = p[291]
    mouth_c = (p[13] + p[14]) / 2.0
    seam_v = mouth_c[1]
    lower_lip = idx(LOWER_INNER_LIP[1:-1] + LOWER_OUTER_LIP[1:-1] + LOWER_LIP_BODY)
    upper_lip = idx(UPPER_INNER_LIP[1:-1] + UPPER_OUTER_LIP[1:-1] + UPPER_LIP_BODY)
    corners = idx((61, 291, 78, 308, 62, 292, 76, 306, 77, 307, 96, 325))
    right_side = p[:, 0] > 0.0  # image-right = subject's left

    # --- jawOpen (AU26/27): the jaw is rigid and rotates about the ear axis. In a frontal view a point
    # moves down in proportion to how far in front of that axis it lies (its depth), so the chin and
    # lower lip travel most and the jaw angles near the ears hardly move. Lower lip at jawOpen=1 drops
    # a third of the IOD (a natural wide-open mouth).
    ear_depth = (lm[234, 2] + lm[454, 2]) / 2.0
    depth = np.maximum(ear_depth - lm[:n, 2], 0.0)  # px in front of the ear axis
    lip_depth = max(float(depth[list(LOWER_INNER_LIP[1:-1])].mean()), 1e-3)
    w_jaw = _smoothstep(p[:, 1], seam_v + 0.02, seam_v + 0.30)
    w_jaw[lower_lip] = 1.0
    w_jaw[upper_lip] = 0.0
    w_jaw[corners] = 0.45
    drop = (1.0 / 3.0) * w_jaw * np.clip(depth / lip_depth, 0.0, 1.3)
    jaw = np.zeros((n, 2))
    jaw[:, 1] = drop
    # a wide-open mouth also narrows a little at the corners
    jaw[:, 0] = -0.04 * w_jaw * np.sign(p[:, 0] - mouth_c[0]) * _gauss(p, mouth_c, 0.45)
    put("jawOpen", jaw)

    # --- mouthClose (AU24-ish with jaw open): lips meet while the jaw stays open.
    close = np.zeros((n, 2))
    g_mouth = _gauss(p, mouth_c, 0.35)
    close[upper_lip, 1] = (1.0 / 6.0) * g_mouth[upper_lip] / g_mouth[upper_lip].max()
    close[lower_lip, 1] = -(1.0 / 6.0) * g_mouth[lower_lip] / g_mouth[lower_lip].max()
    put("mouthClose", close)

    # --- mouthFunnel (AU22): lips flare into an open rounded shape, corners come in.
    fun = np.zeros((n, 2))
    g_l = _gauss(p, corner_l, 0.18)
    g_r = _gauss(p, corner_r, 0.18)
    fun[:, 0] += 0.10 * g_l - 0.10 * g_r
    fun[upper_lip, 1] -= 0.05 * g_mouth[upper_lip] / g_mouth[upper_lip].max()
    fun[lower_lip, 1] += 0.06 * g_mouth[lower_lip] / g_mouth[lower_lip].max()
    put("mouthFunnel", fun)

    # --- mouthPucker (AU18): lips bunch toward the centre, mouth narrows.
    puck = np.zeros((n, 2))
    lips = np.concatenate([upper_lip, lower_lip, corners])
    g_lips = _gauss(p, mouth_c, 0.40)
    puck[lips] = (mouth_c - p[lips]) * 0.35 * g_lips[lips, None]
    puck[:, 0] += 0.14 * g_l - 0.14 * g_r
    put("mouthPucker", puck)

    # --- lip-corner movers (AU12 smile, AU15 frown, AU20 stretch), one side each.
    def corner_move(centre: np.ndarray, du: float, dv: float, sigma: float) -> np.ndarray:
        d = np.zeros((n, 2))
        g = _gauss(p, centre, sigma)
        d[:, 0] = du * g
        d[:, 1] = dv * g
        return d

    put("mouthSmileLeft", corner_move(corner_r, 0.10, -0.11, 0.20))
    put("mouthSmileRight", corner_move(corner_l, -0.10, -0.11, 0.20))
    put("mouthFrownLeft", corner_move(corner_r, 0.02, 0.09, 0.18))
    put("mouthFrownRight", corner_move(corner_l, -0.02, 0.09, 0.18))
    put("mouthStretchLeft", corner_move(corner_r, 0.11, 0.03, 0.20))
    put("mouthStretchRight", corner_move(corner_l, -0.11, 0.03, 0.20))

    # --- mouthRollLower/Upper (AU28): a lip rolls in, its red thins toward the seam.
    for name, outer, inner in (
        ("mouthRollLower", LOWER_OUTER_LIP, LOWER_INNER_LIP),
        ("mouthRollUpper", UPPER_OUTER_LIP, UPPER_INNER_LIP),
    ):
        roll_d = np.zeros((n, 2))
        o, i_ = idx(outer[1:-1]), idx(inner[1:-1])
        roll_d[o] = (p[i_] - p[o]) * 0.6
        put(name, roll_d)

    # --- mouthPress (AU24): lips press together on one side.
    for name, side_mask in (("mouthPressLeft", right_side), ("mouthPressRight", ~right_side)):
        press = np.zeros((n, 2))
        g = g_mouth * side_mask
        press[upper_lip, 1] = 0.03 * g[upper_lip]
        press[lower_lip, 1] = -0.03 * g[lower_lip]
        put(name, press)

    # --- eyelids: blink (AU45) brings the upper lid down onto the lower lid; wide (AU5) lifts it;
    # squint (AU7) raises the lower lid (both as smooth fields, see ``_Lids``).
    lids = _eye_lids(p)
    eyes = {
        "Right": (EYE_IMG_LEFT_UPPER, EYE_IMG_LEFT_LOWER, EYE_IMG_LEFT_CREASE),
        "Left": (EYE_IMG_RIGHT_UPPER, EYE_IMG_RIGHT_LOWER, EYE_IMG_RIGHT_CREASE),
    }
    for side, (upper, lower, crease) in eyes.items():
        up, lo, cr = idx(upper[1:-1]), idx(lower[1:-1]), idx(crease)
        lower_curve = p[idx(lower)]
        gap = _interp_curve(p[up, 0], lower_curve) - p[up, 1]  # > 0: lid opening in face units
        blink = np.zeros((n, 2))
        blink[up, 1] = 0.92 * gap
        blink[lo, 1] = -0.08 * (p[lo, 1] - _interp_curve(p[lo, 0], p[idx(upper)]))
        blink[cr, 1] = 0.45 * float(gap.mean())
        put(f"eyeBlink{side}", blink)
        lid = lids[side].lid_fields(p)
        wide = np.zeros((n, 2))
        wide[:, 1] = lid["wide"]
        put(f"eyeWide{side}", wide)
        squint = np.zeros((n, 2))
        squint[:, 1] = lid["squint"]
        put(f"eyeSquint{side}", squint)
        # gaze: the iris moves (``iris_displacements``); the lids follow a vertical gaze a little
        # (looking down lowers the upper lid, looking up lifts it)
        look_down = np.zeros((n, 2))
        look_down[up, 1] = 0.30 * gap
        look_down[cr, 1] = 0.15 * float(gap.mean())
        put(f"eyeLookDown{side}", look_down)
        look_up = np.zeros((n, 2))
        look_up[up, 1] = -0.10 * gap
        put(f"eyeLookUp{side}", look_up)

    # --- brows: inner raise (AU1), lowerer (AU4), outer raise (AU2). The forehead follows partly.
    above_eyes = _smoothstep(-p[:, 1], 0.05, 0.25)  # 1 above the eye line, 0 below
    above_lids = _smoothstep(-p[:, 1], *BROW_DOWN_REACH)
    brow_l, brow_r = idx(BROW_IMG_LEFT), idx(BROW_IMG_RIGHT)
    inner_l, inner_r = p[[107, 55]].mean(axis=0), p[[336, 285]].mean(axis=0)
    outer_l, outer_r = p[[70, 46]].mean(axis=0), p[[300, 276]].mean(axis=0)
    inner_up = np.zeros((n, 2))
    inner_up[:, 1] = -0.13 * (_gauss(p, inner_l, 0.22) + _gauss(p, inner_r, 0.22)) * above_eyes
    put("browInnerUp", inner_up)
    for side, brow, inner, outer, sgn in (
        ("Left", brow_r, inner_r, outer_r, 1.0),
        ("Right", brow_l, inner_l, outer_l, -1.0),
    ):
        centre = p[brow].mean(axis=0)
        down = np.zeros((n, 2))
        g = _gauss(p, centre, 0.30)
        gi = _gauss(p, inner, BROW_DOWN_DRAW_SIGMA)
        # the brow and the fold under it come down (a fold left in place reads as a brow that barely
        # moved); the lid margin is held by its own muscle, so the lowering fades out just above it (a
        # field reaching the lid would close the eye against AU5)
        down[:, 1] = (BROW_DOWN_LOWER * g + BROW_DOWN_INNER * gi) * above_lids
        down[:, 0] = -sgn * BROW_DOWN_DRAW * gi * above_eyes  # inner ends draw together
        put(f"browDown{side}", down)
        out_up = np.zeros((n, 2))
        out_up[:, 1] = -0.12 * _gauss(p, outer, 0.22) * above_eyes
        put(f"browOuterUp{side}", out_up)

    # --- cheeks: squint (AU6) lifts the cheek under the eye; puff pushes the cheeks out.
    for side in ("Left", "Right"):
        sq = np.zeros((n, 2))
        sq[:, 1] = _cheek_squint(p, p, side, lids[side])
        put(f"cheekSquint{side}", sq)
    puff = np.zeros((n, 2))
    cheek_l = p[61] + np.array([-0.25, -0.10])
    cheek_r = p[291] + np.array([0.25, -0.10])
    puff[:, 0] = -0.08 * _gauss(p, cheek_l, 0.25) + 0.08 * _gauss(p, cheek_r, 0.25)
    put("cheekPuff", puff)

    # --- nose sneer (AU9, with the upper-lip raise of AU10 that comes with it): the nose wing and the
    # skin beside it pull up, and the upper lip on that side lifts off the lower one (above the lip
    # seam only), its middle most. The nose's base on the midline is tied to the nasal spine and
    # barely moves, so the lift fades toward the midline (a narrow field across the face) and the
    # upper lip rises toward the nose: the philtrum shortens, the mark of AU10.
    above_seam = (p[:, 1] < seam_v).astype(np.float64)
    for side, wing, lip_pts in (
        ("Left", NOSE_WING_IMG_RIGHT, (267, 269, 312, 311)),
        ("Right", NOSE_WING_IMG_LEFT, (37, 39, 82, 81)),
    ):
        sn = np.zeros((n, 2))
        c = p[idx(wing)].mean(axis=0)
        lip_c = p[idx(lip_pts)].mean(axis=0)
        sn[:, 1] = -SNEER_WING_LIFT * _gauss2(p, c + np.array([0.0, SNEER_WING_RISE]), (0.17, 0.28))
        sn[:, 1] += -SNEER_LIP_LIFT * _gauss2(p, lip_c, (0.18, 0.09)) * above_seam
        put(f"noseSneer{side}", sn)

    return out


# Gaze: how far the iris travels at full eyeLook (face units). A real eye has ~0.14 IOD of horizontal
# travel, but a 2D warp stretches the sclera beside the iris visibly beyond ~0.05: the rig's gaze is
# for glances and idle eye movements, not for looking far aside.
GAZE_TRAVEL = (0.05, 0.03)
IRIS_POINTS = 10  # MediaPipe's refined mesh: 468..472 image-left iris, 473..477 image-right iris


def iris_displacements(landmarks: np.ndarray) -> np.ndarray:
    """Displacements of the 10 iris points (468..477) for every blendshape at value 1.

    Returns (NUM_BLENDSHAPES, 10, 2) float64 pixels: the eyeLook* rows move the irises; the lid rows
    (eyeWide*, eyeSquint*, cheekSquint*) carry them along with the lid fields that reach into the eye
    opening (other rows keep them still). Needs the 478-point mesh.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[0] < MESH_POINTS + IRIS_POINTS:
        raise ValueError(f"iris displacements need the 478-point mesh, got {lm.shape[0]} points")
    fr = face_frame(lm)
    out = np.zeros((rig.NUM_BLENDSHAPES, IRIS_POINTS, 2))
    # the lids' fields reach into the opening (``_Lids``): an iris point there moves with them
    p = fr.to_face(lm[:MESH_POINTS])
    iris = fr.to_face(lm[MESH_POINTS : MESH_POINTS + IRIS_POINTS])
    for side, lids in _eye_lids(p).items():
        fields = lids.lid_fields(iris)
        cheek = _cheek_squint(p, iris, side, lids)
        for name, dv_face in (
            (f"eyeWide{side}", fields["wide"]),
            (f"eyeSquint{side}", fields["squint"]),
            (f"cheekSquint{side}", cheek),
        ):
            out[rig.index(name)] = dv_face[:, None] * fr.ey[None, :] * fr.iod
    du, dv = GAZE_TRAVEL
    # (side, rows of that eye's iris points, +u direction of "out" for that eye)
    for side, rows, out_sign in (("Right", slice(0, 5), -1.0), ("Left", slice(5, 10), 1.0)):
        for name, vec in (
            (f"eyeLookOut{side}", fr.vec(out_sign * du, 0.0)),
            (f"eyeLookIn{side}", fr.vec(-out_sign * du, 0.0)),
            (f"eyeLookUp{side}", fr.vec(0.0, -dv)),
            (f"eyeLookDown{side}", fr.vec(0.0, dv)),
        ):
            out[rig.index(name), rows] = vec
    return out

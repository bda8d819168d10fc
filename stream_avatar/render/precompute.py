"""Per-avatar tensors of the warp renderer, computed once at enrollment.

Everything a frame needs that does not depend on the rig is solved here, so that rendering a frame is
one small matmul (rig → low-resolution flow), a few ``grid_sample`` calls and element-wise ops:

- ``basis`` (K, 2, gh, gw): the forward flow (pixels) of each rig coefficient at value 1 (head angles:
  per degree) on a low-resolution grid over the head region. Blendshapes come from FACS-authored
  control-point displacements (``facs_basis``) spread by a thin-plate spline; head pose is a rigid
  rotation field weighted by a head-and-neck mask. The flow is exactly zero outside that mask.
- ``lip_src`` / ``lip_basis``: the inner-lip contours and how each coefficient moves them, so the
  renderer knows where the lips part and can composite a mouth interior there.
- colours of the lips and teeth sampled from the portrait, and region boxes.

Tensor names and shapes are the contract with ``renderer.WarpRenderer``; ``FORMAT_VERSION`` changes
whenever they do (the avatar store keys on it).
"""

from __future__ import annotations

import numpy as np
import torch

from stream_avatar.motion import rig
from stream_avatar.render import facs_basis as fb

FORMAT_VERSION = "warp-v4"  # v4: headX/Y; v3: gaze (eyeLook*); v2: lips part along a seam
GRID_STEP_PX = 3.0  # low-resolution flow grid spacing at the output resolution
TPS_SMOOTHING = 1e-3  # regularisation of the spline in face units² (nearly interpolating)


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    # U(r) = r² log r = 0.5 r² log r²
    with np.errstate(divide="ignore", invalid="ignore"):
        k = 0.5 * r2 * np.log(r2)
    return np.nan_to_num(k, nan=0.0, posinf=0.0, neginf=0.0)


def tps_fit(ctrl: np.ndarray, values: np.ndarray, smoothing: float = TPS_SMOOTHING) -> np.ndarray:
    """Thin-plate-spline weights for values given at control points.

    ctrl (N, 2) in well-scaled units; values (N, C) → weights (N + 3, C) for ``tps_eval``.
    """
    n = ctrl.shape[0]
    d2 = ((ctrl[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
    big_p = np.concatenate([np.ones((n, 1)), ctrl], axis=1)
    big_l = np.zeros((n + 3, n + 3))
    big_l[:n, :n] = _tps_kernel(d2) + smoothing * np.eye(n)
    big_l[:n, n:] = big_p
    big_l[n:, :n] = big_p.T
    rhs = np.zeros((n + 3, values.shape[1]))
    rhs[:n] = values
    return np.linalg.solve(big_l, rhs)


def tps_eval(ctrl: np.ndarray, weights: np.ndarray, query: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Evaluate a fitted spline at query points (Q, 2) → (Q, C), in chunks to bound memory."""
    out = np.empty((query.shape[0], weights.shape[1]))
    for i in range(0, query.shape[0], chunk):
        q = query[i : i + chunk]
        q2 = ((q[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
        out[i : i + chunk] = _tps_kernel(q2) @ weights[:-3] + weights[-3] + q @ weights[-2:]
    return out


def head_pose_fields(landmarks: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The renderer's head motion per unit of every head-pose entry at ``points`` (P, 2) px →
    (len(rig.HEAD_POSE), P, 2) px: per degree of yaw, pitch, roll, then per mm of headX, headY.

    A rigid rotation of a rounded head: yaw and pitch move each point by its height above the head's
    silhouette plane (a sphere of the head's size around the face centre), roll rotates in the image
    plane about the neck; the shift is a plain translation (IOD = ``rig.IOD_MM``). Unweighted: the
    avatar's basis multiplies it by the head weight, which is 1 on the face (the inverse fitter uses
    it there as is).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    fr = fb.face_frame(lm)
    oval = lm[list(fb.FACE_OVAL), :2]
    face_c = oval.mean(axis=0)
    face_w = float(np.ptp(oval @ fr.ex))
    face_h = float(np.ptp(oval @ fr.ey))
    radius = 0.62 * max(face_w, face_h)
    rad = np.pi / 180.0
    rel = pts - face_c
    depth = np.sqrt(np.clip(radius**2 - (rel**2).sum(1), 0.0, None))
    yaw = depth[:, None] * fr.ex[None, :] * rad
    pitch = depth[:, None] * fr.ey[None, :] * rad
    pivot = lm[152, :2] + 0.35 * face_h * fr.ey
    rp = pts - pivot
    roll = np.stack([-rp[:, 1], rp[:, 0]], 1) * rad
    px_per_mm = fr.iod / rig.IOD_MM
    shift_x = np.broadcast_to(np.array([px_per_mm, 0.0]), pts.shape)
    shift_y = np.broadcast_to(np.array([0.0, px_per_mm]), pts.shape)
    return np.stack([yaw, pitch, roll, shift_x, shift_y])


SEAM_CORNER_FADE = 0.12  # face units beyond the mouth corners over which the two lip splines merge
SEAM_SOFT = 0.01  # face units: width of the switch from the upper to the lower spline at the seam


def _lip_seam(mesh_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lips' seam in face units: (u, v) of the midline between the inner-lip contours, by u."""
    up = mesh_f[list(fb.UPPER_INNER_LIP)]
    lo = mesh_f[list(fb.LOWER_INNER_LIP)]
    mid = (up + lo) / 2.0
    order = np.argsort(mid[:, 0])
    return mid[order, 0], mid[order, 1]


def _below_seam(pf: np.ndarray, seam_u: np.ndarray, seam_v: np.ndarray) -> np.ndarray:
    """Weight of the lower-lip spline at face-unit points (P, 2): 1 below the seam, 0 above, and 0.5
    (the average) beyond the mouth corners, with smooth transitions."""
    v_seam = np.interp(pf[:, 0], seam_u, seam_v)
    step = np.clip((pf[:, 1] - v_seam) / SEAM_SOFT + 0.5, 0.0, 1.0)
    outside = np.maximum(seam_u[0] - pf[:, 0], pf[:, 0] - seam_u[-1]).clip(min=0.0)
    inside = 1.0 - np.clip(outside / SEAM_CORNER_FADE, 0.0, 1.0)
    inside = inside * inside * (3.0 - 2.0 * inside)
    return inside * step + (1.0 - inside) * 0.5


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    import cv2

    k = int(2 * round(3 * sigma_px) + 1)
    return cv2.GaussianBlur(img.astype(np.float32), (k, k), sigma_px)


def _box(
    x0: float, y0: float, x1: float, y1: float, w: int, h: int, align: int = 4
) -> tuple[int, int, int, int]:
    """An integer box clamped to the image, sides multiples of ``align``: (x, y, width, height)."""
    xa = max(0, int(np.floor(x0)))
    ya = max(0, int(np.floor(y0)))
    xb = min(w, int(np.ceil(x1)))
    yb = min(h, int(np.ceil(y1)))
    bw = max(align, (xb - xa) // align * align)
    bh = max(align, (yb - ya) // align * align)
    return xa, ya, min(bw, w - xa), min(bh, h - ya)


def build_avatar_tensors(
    image: np.ndarray, landmarks: np.ndarray, person_mask: np.ndarray
) -> dict[str, torch.Tensor]:
    """Precompute the renderer's tensors for one enrolled portrait.

    image (H, W, 3) uint8 RGB; landmarks (478 or 468, 3) pixels (x, y, depth in x-pixel units, smaller is
    nearer the camera); person_mask (H, W) float in [0, 1]. Returns a dict of CPU tensors (see the
    module docstring and ``WarpRenderer``).
    """
    img = np.ascontiguousarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] < fb.MESH_POINTS or lm.shape[1] != 3:
        raise ValueError(f"landmarks must be (468 or 478, 3), got {lm.shape}")
    mask = np.asarray(person_mask, dtype=np.float32)
    if mask.shape != (h, w):
        raise ValueError(f"person_mask must be {(h, w)}, got {mask.shape}")

    fr = fb.face_frame(lm)
    iod = fr.iod
    oval = lm[list(fb.FACE_OVAL), :2]
    face_c = oval.mean(axis=0)
    face_w = float(np.ptp(oval @ fr.ex))
    face_h = float(np.ptp(oval @ fr.ey))
    chin = lm[152, :2]

    # Head-and-neck region: generous around the face for hair and head motion, down onto the neck.
    x0 = face_c[0] - 0.95 * face_w
    x1 = face_c[0] + 0.95 * face_w
    y0 = face_c[1] - 1.05 * face_h
    y1 = chin[1] + 0.75 * face_h
    rx, ry, rw, rh = _box(x0, y0, x1, y1, w, h)

    # --- head weight: the person's silhouette, full on the head, fading down the neck, zero at the ROI
    # border and on the background, feathered so the moving edge has no seam.
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    along = (xs - chin[0]) * fr.ey[0] + (ys - chin[1]) * fr.ey[1]  # px below the chin, along the face
    lateral = np.abs((xs - chin[0]) * fr.ex[0] + (ys - chin[1]) * fr.ex[1])  # px sideways from the chin
    neck_fade = 1.0 - np.clip((along - 0.10 * face_h) / (0.55 * face_h), 0.0, 1.0)
    # below the jaw only the neck column moves; shoulders and clothing stay put
    neck_column = 1.0 - np.clip((lateral - 0.30 * face_w) / (0.12 * face_w), 0.0, 1.0)
    below_jaw = np.clip((along + 0.05 * face_h) / (0.15 * face_h), 0.0, 1.0)
    neck_fade = neck_fade * (1.0 - below_jaw * (1.0 - neck_column))
    silhouette = np.clip(_blur((mask > 0.5).astype(np.float32), 2.0) * 1.2, 0.0, 1.0)
    ex_, ey_ = (xs - face_c[0]) / (0.62 * face_w), (ys - face_c[1]) / (0.62 * face_h)
    face_ellipse = ex_**2 + ey_**2 <= 1.0
    head_w = np.maximum(silhouette, face_ellipse.astype(np.float32)) * neck_fade
    head_w = _blur(head_w, max(2.0, 0.05 * face_w))  # a wide feather: the edge stretches, never tears
    # exactly zero on the ROI's border, so pasting the warped ROI back leaves no seam
    taper = max(3.0, 0.04 * face_w)
    dist_in = np.minimum.reduce([xs - rx, rx + rw - 1 - xs, ys - ry, ry + rh - 1 - ys])
    head_w = head_w * np.clip(dist_in / taper, 0.0, 1.0)
    head_w[head_w < 1e-3] = 0.0

    # --- low-resolution grid over the ROI (pixel-centre coordinates of the output image)
    gw = max(8, round(rw / GRID_STEP_PX) + 1)
    gh = max(8, round(rh / GRID_STEP_PX) + 1)
    gx = np.linspace(rx, rx + rw - 1, gw)
    gy = np.linspace(ry, ry + rh - 1, gh)
    grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)  # (G, 2) px

    def sample(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
        xi = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
        yi = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
        return field[yi, xi]

    w_grid = sample(head_w, grid)  # (G,)

    # --- blendshapes: control points = mesh + two rings around the face oval + ROI border anchors.
    disp_mesh = fb.blendshape_displacements(lm)  # (NB, 468, 2)
    mesh = lm[: fb.MESH_POINTS, :2]
    ring_idx = np.asarray(fb.FACE_OVAL)
    ring1 = face_c + 1.22 * (oval - face_c)
    ring2 = face_c + 1.60 * (oval - face_c)
    bx = np.linspace(rx, rx + rw - 1, 9)
    by = np.linspace(ry, ry + rh - 1, 9)
    border_pts = np.concatenate(
        [
            np.stack([bx, np.full_like(bx, ry)], 1),
            np.stack([bx, np.full_like(bx, ry + rh - 1)], 1),
            np.stack([np.full_like(by, rx), by], 1),
            np.stack([np.full_like(by, rx + rw - 1), by], 1),
        ]
    )
    ctrl = np.concatenate([mesh, ring1, ring2, border_pts])
    nb = rig.NUM_BLENDSHAPES
    disp = np.zeros((nb, ctrl.shape[0], 2))
    disp[:, : fb.MESH_POINTS] = disp_mesh
    # skin just outside the face oval follows it part of the way (jaw → under the chin, brows → forehead)
    disp[:, fb.MESH_POINTS : fb.MESH_POINTS + len(ring_idx)] = 0.40 * disp_mesh[:, ring_idx]
    if lm.shape[0] >= fb.MESH_POINTS + fb.IRIS_POINTS:  # gaze: the irises move inside still lids
        iris = lm[fb.MESH_POINTS : fb.MESH_POINTS + fb.IRIS_POINTS, :2]
        ctrl = np.concatenate([ctrl, iris])
        disp = np.concatenate([disp, fb.iris_displacements(lm)], axis=1)

    # The lips part along a seam, and a smooth spline cannot tear: with the mouth closed in the photo
    # the upper and lower inner-lip points coincide while one stays and the other drops with the jaw,
    # so a single spline would move both half-way (a smeared, half-open mouth). Instead two splines
    # are fitted, one without the lower inner lip (valid above the seam) and one without the upper
    # (valid below), and joined at the seam: the midline between the inner-lip contours across the
    # mouth, fading to their average beyond the corners. Solved in face units for conditioning; one fit
    # per side for all blendshapes (x and y as separate columns).
    ctrl_f = fr.to_face(ctrl)
    values = disp.transpose(1, 0, 2).reshape(ctrl.shape[0], nb * 2)
    keep_up = np.ones(ctrl.shape[0], bool)
    keep_up[list(fb.LOWER_INNER_LIP[1:-1])] = False
    keep_lo = np.ones(ctrl.shape[0], bool)
    keep_lo[list(fb.UPPER_INNER_LIP[1:-1])] = False
    w_up = tps_fit(ctrl_f[keep_up], values[keep_up])
    w_lo = tps_fit(ctrl_f[keep_lo], values[keep_lo])
    seam_u, seam_v = _lip_seam(fr.to_face(lm[: fb.MESH_POINTS, :2]))

    def expr_fields(pts: np.ndarray, below: np.ndarray | None = None) -> np.ndarray:
        """(P, 2) px → (NB, P, 2) px forward flow of every blendshape; ``below``: force the side."""
        pf = fr.to_face(pts)
        if below is None:
            below = _below_seam(pf, seam_u, seam_v)
        up = tps_eval(ctrl_f[keep_up], w_up, pf)
        lo = tps_eval(ctrl_f[keep_lo], w_lo, pf)
        mixed = up * (1.0 - below[:, None]) + lo * below[:, None]
        return mixed.reshape(-1, nb, 2).transpose(1, 0, 2)

    flow_expr = expr_fields(grid) * w_grid[None, :, None]

    # --- head pose per degree (see head_pose_fields), faded out by the head weight
    def head_fields(pts: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return head_pose_fields(lm, pts) * weights[None, :, None]  # (len(HEAD_POSE), P, 2)

    flow_head = head_fields(grid, w_grid)
    basis = np.concatenate([flow_expr, flow_head]).reshape(rig.RIG_SIZE, gh, gw, 2).transpose(0, 3, 1, 2)

    # --- inner-lip contours and their motion (for the mouth interior)
    up_i = list(fb.UPPER_INNER_LIP)
    lo_i = list(fb.LOWER_INNER_LIP)
    lip_idx = up_i + lo_i
    lip_src = lm[lip_idx, :2]  # (22, 2)
    w_lip = sample(head_w, lip_src)
    lip_side = np.r_[np.zeros(len(up_i)), np.ones(len(lo_i))]  # each contour moves with its own lip
    lip_expr = expr_fields(lip_src, below=lip_side) * w_lip[None, :, None]
    lip_head = head_fields(lip_src, w_lip)
    lip_basis = np.concatenate([lip_expr, lip_head])  # (K, 22, 2)

    # mouth box: room for a wide-open jaw and head motion
    lips_all = lm[list(fb.UPPER_OUTER_LIP + fb.LOWER_OUTER_LIP), :2]
    mx0, my0 = lips_all.min(0) - 0.35 * iod
    mx1, my1 = lips_all.max(0) + np.array([0.35, 0.65]) * iod
    mouth_box = _box(mx0, my0, mx1, my1, w, h, align=2)

    # --- colours sampled from the portrait
    def mean_rgb(pts_idx: list[int]) -> np.ndarray:
        pts = lm[pts_idx, :2]
        return sample(img.reshape(h, w, 3).astype(np.float32), pts).mean(axis=0)

    lip_rgb = mean_rgb(list(fb.UPPER_LIP_BODY + fb.LOWER_LIP_BODY))
    gap_src = lm[lo_i, 1] - lm[up_i, 1]
    teeth_rgb = np.array([232.0, 226.0, 214.0])
    if float(gap_src.max()) > 0.04 * iod:  # the photo shows its own mouth interior: take its teeth colour
        import cv2

        poly = np.concatenate([lm[up_i, :2], lm[lo_i[::-1], :2]]).astype(np.int32).reshape(-1, 1, 2)
        inside = np.zeros((h, w), np.uint8)
        cv2.fillPoly(inside, [poly], (1,))
        px = img[inside > 0].astype(np.float32)
        if len(px) >= 8:
            lum = px.mean(axis=1)
            bright = px[lum >= np.percentile(lum, 70)]
            teeth_rgb = 0.5 * teeth_rgb + 0.5 * bright.mean(axis=0)
    colours = np.stack([lip_rgb, teeth_rgb])

    f32 = torch.float32
    return {
        "image": torch.from_numpy(img.transpose(2, 0, 1).copy()),  # (3, H, W) uint8
        "roi": torch.tensor([rx, ry, rw, rh], dtype=torch.int32),
        "basis": torch.from_numpy(basis.astype(np.float32)),  # (K, 2, gh, gw) px, forward flow
        "lip_src": torch.from_numpy(lip_src.astype(np.float32)),  # (22, 2) px: 11 upper then 11 lower
        "lip_basis": torch.from_numpy(lip_basis.astype(np.float32)),  # (K, 22, 2) px
        "mouth_box": torch.tensor(mouth_box, dtype=torch.int32),
        "colours": torch.from_numpy(colours.astype(np.float32)),  # (2, 3): lips, teeth (0..255)
        "iod": torch.tensor([iod], dtype=f32),
        "landmarks": torch.from_numpy(lm.astype(np.float32)),
        "person_mask": torch.from_numpy(mask.astype(np.float32)),
        # where the renderer may move pixels (head and neck, feathered), 0..255
        "head_weight": torch.from_numpy(np.round(np.clip(head_w, 0.0, 1.0) * 255.0).astype(np.uint8)),
    }

"""Warp renderer v1: rig coefficients + one avatar's precomputed tensors → RGB frames.

Per frame the work is: one matmul (rig → forward flow on a low-resolution grid), three fixed-point
iterations turning the forward flow into the backward map that ``grid_sample`` needs, a bilinear
upsample, one ``grid_sample`` of the head region, and element-wise compositing of the mouth interior.
The background outside the head region is copied untouched. No data-dependent control flow, so the
module can be traced / compiled (the GPU backends build on that).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stream_avatar.motion import rig

N_LIP = 11  # points per inner-lip contour (corner, 9 inner points, corner)
INVERSION_STEPS = 3


def _hat_interp(xq: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) of polylines, written with element-wise ops only (compile-friendly).

    xq (1, 1, M) query x; xk, yk (B, P) knots sorted by x → (B, M). Outside the knots the end values
    hold. Weights are renormalised so a slightly non-monotonic polyline still interpolates sanely.
    """
    eps = 1e-3
    x = xq  # (1, 1, M)
    xk3 = xk.unsqueeze(-1)  # (B, P, 1)
    prev = torch.cat([xk3[:, :1] - 1e4, xk3[:, :-1]], dim=1)
    nxt = torch.cat([xk3[:, 1:], xk3[:, -1:] + 1e4], dim=1)
    rising = (x - prev) / (xk3 - prev).clamp(min=eps)
    falling = (nxt - x) / (nxt - xk3).clamp(min=eps)
    w = torch.minimum(rising, falling).clamp(0.0, 1.0)  # (B, P, M)
    # hold the end values beyond the first / last knot
    w0 = torch.where(x < xk3[:, :1], torch.ones_like(w[:, :1]), w[:, :1])
    wl = torch.where(x > xk3[:, -1:], torch.ones_like(w[:, -1:]), w[:, -1:])
    w = torch.cat([w0, w[:, 1:-1], wl], dim=1)
    return (w * yk.unsqueeze(-1)).sum(1) / w.sum(1).clamp(min=eps)


class WarpRenderer(nn.Module):
    """Rig → frame for one avatar.

    forward(rig: (B, RIG_SIZE) float32; blendshapes in [0, 1], head angles in degrees)
        → (B, 3, H, W) uint8 RGB.
    """

    image_u8: torch.Tensor
    image_f: torch.Tensor
    basis: torch.Tensor
    lr_scale: torch.Tensor
    lr_base: torch.Tensor
    hr_base: torch.Tensor
    hr_scale: torch.Tensor
    lip_src: torch.Tensor
    lip_basis: torch.Tensor
    gap_src: torch.Tensor
    mouth_x: torch.Tensor
    mouth_y: torch.Tensor
    lip_rgb: torch.Tensor
    teeth_rgb: torch.Tensor

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        image = tensors["image"]
        _, h, w = image.shape
        rx, ry, rw, rh = (int(v) for v in tensors["roi"].tolist())
        mx, my, mw, mh = (int(v) for v in tensors["mouth_box"].tolist())
        # keep the mouth box inside the ROI (it is composited on the warped ROI)
        mx0, my0 = max(mx, rx), max(my, ry)
        mx1, my1 = min(mx + mw, rx + rw), min(my + mh, ry + rh)
        self.size = (w, h)
        self.roi = (rx, ry, rw, rh)
        self.mouth = (mx0 - rx, my0 - ry, max(1, mx1 - mx0), max(1, my1 - my0))  # in ROI coordinates
        basis = tensors["basis"].float()
        k, _, gh, gw = basis.shape
        if k != rig.RIG_SIZE:
            raise ValueError(f"avatar tensors were built for {k} coefficients, the rig has {rig.RIG_SIZE}")
        self.register_buffer("image_u8", image.contiguous(), persistent=False)
        self.register_buffer("image_f", image.float().unsqueeze(0), persistent=False)
        self.register_buffer("basis", basis.reshape(k, -1), persistent=False)  # (K, 2*gh*gw)
        self.grid_shape = (gh, gw)
        # px → normalised offsets of the low-res grid (align_corners=True: corners are pixel centres)
        self.register_buffer(
            "lr_scale", torch.tensor([2.0 / max(rw - 1, 1), 2.0 / max(rh - 1, 1)]), persistent=False
        )
        self.inv_2step = (0.5 * (gw - 1) / max(rw - 1, 1), 0.5 * (gh - 1) / max(rh - 1, 1))
        ly, lx = torch.meshgrid(torch.linspace(-1, 1, gh), torch.linspace(-1, 1, gw), indexing="ij")
        self.register_buffer("lr_base", torch.stack([lx, ly], -1).unsqueeze(0), persistent=False)
        # full-resolution sampling grid of the ROI in the whole image's normalised coordinates
        ys = torch.arange(ry, ry + rh, dtype=torch.float32)
        xs = torch.arange(rx, rx + rw, dtype=torch.float32)
        fy, fx = torch.meshgrid(2.0 * ys / (h - 1) - 1.0, 2.0 * xs / (w - 1) - 1.0, indexing="ij")
        self.register_buffer("hr_base", torch.stack([fx, fy], -1).unsqueeze(0), persistent=False)
        self.register_buffer("hr_scale", torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)]), persistent=False)
        # mouth
        self.register_buffer("lip_src", tensors["lip_src"].float(), persistent=False)  # (22, 2)
        self.register_buffer("lip_basis", tensors["lip_basis"].float().reshape(k, -1), persistent=False)
        lip = tensors["lip_src"].float()
        self.register_buffer("gap_src", (lip[N_LIP:, 1] - lip[:N_LIP, 1]).clamp(min=0.0), persistent=False)
        mxr, myr, mwr, mhr = self.mouth
        self.register_buffer(
            "mouth_x", (torch.arange(mwr, dtype=torch.float32) + mxr + rx).view(1, 1, -1), persistent=False
        )
        self.register_buffer(
            "mouth_y", (torch.arange(mhr, dtype=torch.float32) + myr + ry).view(1, -1, 1), persistent=False
        )
        colours = tensors["colours"].float()
        self.register_buffer("lip_rgb", colours[0].view(1, 3, 1, 1), persistent=False)
        self.register_buffer("teeth_rgb", colours[1].view(1, 3, 1, 1), persistent=False)
        self.iod = float(tensors["iod"].item())

    # ------------------------------------------------------------------------------------------
    def backward_flow(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, K) → (B, 2, gh, gw) px: for each grid point, how far back to read from (src = x - flow)."""
        b = coeffs.shape[0]
        gh, gw = self.grid_shape
        fwd = (coeffs @ self.basis).view(b, 2, gh, gw)
        # Displacements are authored at source points (forward); grid_sample needs them at output points:
        # solve s = fwd(x - s) on the low-res grid. Plain fixed-point iteration crawls where the field
        # compresses strongly (a closing eyelid: |dF| ~ 0.9), so take Newton steps with the Jacobian of
        # the field from central differences (element-wise, cheap at this resolution).
        jac = self._jacobian(fwd)  # (B, 4, gh, gw): dFx/dx, dFx/dy, dFy/dx, dFy/dy
        field = torch.cat([fwd, jac], dim=1)
        s = fwd
        for _ in range(INVERSION_STEPS):
            pos = self.lr_base - s.permute(0, 2, 3, 1) * self.lr_scale
            f = F.grid_sample(field, pos, mode="bilinear", padding_mode="border", align_corners=True)
            rx_, ry_ = s[:, 0] - f[:, 0], s[:, 1] - f[:, 1]
            a, bb, c, d = 1.0 + f[:, 2], f[:, 3], f[:, 4], 1.0 + f[:, 5]  # d(residual)/ds = I + J(x - s)
            det = a * d - bb * c
            # where the map nearly folds (det → 0) a Newton step overshoots: take the plain step there
            ok = det > 0.25
            det = torch.where(ok, det, torch.ones_like(det))
            step_x = torch.where(ok, (d * rx_ - bb * ry_) / det, rx_)
            step_y = torch.where(ok, (a * ry_ - c * rx_) / det, ry_)
            s = s - torch.stack([step_x, step_y], dim=1)
        return s

    def _jacobian(self, fwd: torch.Tensor) -> torch.Tensor:
        # the flow is zero on the ROI border, so zero padding of the differences is exact enough
        gx = F.pad(fwd[..., 2:] - fwd[..., :-2], (1, 1)) * self.inv_2step[0]
        gy = F.pad(fwd[..., 2:, :] - fwd[..., :-2, :], (0, 0, 1, 1)) * self.inv_2step[1]
        return torch.stack([gx[:, 0], gy[:, 0], gx[:, 1], gy[:, 1]], dim=1)

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        coeffs = coeffs.float()
        b = coeffs.shape[0]
        rx, ry, rw, rh = self.roi
        s = self.backward_flow(coeffs)
        s_hr = F.interpolate(s, size=(rh, rw), mode="bilinear", align_corners=True)
        grid = self.hr_base - s_hr.permute(0, 2, 3, 1) * self.hr_scale
        warped = F.grid_sample(
            self.image_f.expand(b, -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )  # (B, 3, rh, rw)
        warped = self._mouth_interior(coeffs, warped)
        out = self.image_u8.unsqueeze(0).repeat(b, 1, 1, 1)
        out[:, :, ry : ry + rh, rx : rx + rw] = warped.round().clamp(0.0, 255.0).to(torch.uint8)
        return out

    def _mouth_interior(self, coeffs: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Composite a shaded mouth interior where the lips part more than they do in the photo.

        The photo's own interior (if its lips are parted) stays: its upper half travels with the upper
        lip, its lower half with the jaw; only the band newly revealed between them is synthesised.
        """
        b = coeffs.shape[0]
        iod = self.iod
        lips = self.lip_src.unsqueeze(0) + (coeffs @ self.lip_basis).view(b, -1, 2)  # (B, 22, 2)
        up, lo = lips[:, :N_LIP], lips[:, N_LIP:]
        xq = self.mouth_x
        y_up = _hat_interp(xq, up[..., 0], up[..., 1])  # (B, M)
        y_lo = _hat_interp(xq, lo[..., 0], lo[..., 1])
        half_src = 0.5 * _hat_interp(xq, up[..., 0], self.gap_src.unsqueeze(0).expand(b, -1))
        top = (y_up + half_src).unsqueeze(1)  # (B, 1, M)
        bottom = (y_lo - half_src).unsqueeze(1)
        gap = (y_lo - y_up).unsqueeze(1)
        band = (bottom - top).clamp(min=0.0)
        y = self.mouth_y  # (1, R, 1)
        soft = 0.75
        x_left = torch.minimum(up[:, 0, 0], lo[:, 0, 0]).view(b, 1, 1)
        x_right = torch.maximum(up[:, -1, 0], lo[:, -1, 0]).view(b, 1, 1)
        x = xq
        inside_x = ((x - x_left) / 2.0).clamp(0.0, 1.0) * ((x_right - x) / 2.0).clamp(0.0, 1.0)
        m = (
            ((y - top) / soft + 0.5).clamp(0.0, 1.0)
            * ((bottom - y) / soft + 0.5).clamp(0.0, 1.0)
            * (band / 1.5).clamp(0.0, 1.0)
            * inside_x
        )  # (B, R, M)

        half_w = ((x_right - x_left) / 2.0).clamp(min=1.0)
        sx = ((x - (x_left + x_right) / 2.0) / half_w).clamp(-1.0, 1.0)  # (B, 1, M) -1..1 across the mouth
        t = ((y - top) / band.clamp(min=1.0)).clamp(0.0, 1.0)  # 0 at the band's top, 1 at its bottom
        # cavity: the person's lip colour, dark, darker toward the corners and the back of the throat
        depth_shade = (0.34 * (1.0 - 0.5 * sx * sx) * (0.65 + 0.35 * (2.0 * t - 1.0).abs())).unsqueeze(1)
        cavity = self.lip_rgb * depth_shade
        # tongue hint once the jaw is well open
        tongue_amt = ((gap - 0.16 * iod) / (0.10 * iod)).clamp(0.0, 1.0)
        tongue = (torch.exp(-((sx / 0.55) ** 2) - ((1.0 - t) / 0.35) ** 2) * tongue_amt).unsqueeze(1)
        cavity = cavity * (1.0 - tongue) + (self.lip_rgb * (0.45 + 0.2 * t.unsqueeze(1))) * tongue
        # teeth: the upper row shows below the upper lip in proportion to the opening, the lower row later
        half_src3 = half_src.unsqueeze(1)
        # where the photo shows its own upper teeth they already travel with the lip: add none
        own_teeth = (half_src3 / (0.03 * iod)).clamp(0.0, 1.0)
        up_h = torch.minimum(0.45 * gap, torch.full_like(gap, 0.11 * iod)) * (1.0 - own_teeth)
        # the lower row: hidden behind the lower lip until the jaw is well open, then up to 0.07 IOD;
        # the photo's own interior (its lower half travels with the jaw) never shows lower teeth in
        # the band that opens, so they are drawn whether or not the photo's mouth was open
        lo_h = torch.minimum(0.30 * (gap - 0.12 * iod), torch.full_like(gap, 0.07 * iod)).clamp(min=0.0)
        up_m = ((top + up_h - y) / soft + 0.5).clamp(0.0, 1.0) * (up_h / 1.0).clamp(0.0, 1.0)
        lo_m = ((y - (bottom - lo_h)) / soft + 0.5).clamp(0.0, 1.0) * (lo_h / 1.0).clamp(0.0, 1.0)
        tooth_w = 0.12 * iod
        d = (x - (x_left + x_right) / 2.0) / tooth_w
        d = (d - torch.round(d)) * tooth_w  # px to the nearest gap between teeth
        seams = 1.0 - 0.18 * torch.exp(-((d / 0.8) ** 2))
        lip_shadow = 0.72 + 0.28 * ((y - top) / 2.0).clamp(0.0, 1.0)
        teeth_shade = (1.0 - 0.5 * sx * sx) * seams
        teeth_up = self.teeth_rgb * (teeth_shade * lip_shadow).unsqueeze(1)
        teeth_lo = self.teeth_rgb * (0.85 * teeth_shade).unsqueeze(1)
        interior = cavity * (1.0 - up_m.unsqueeze(1)) + teeth_up * up_m.unsqueeze(1)
        interior = interior * (1.0 - lo_m.unsqueeze(1)) + teeth_lo * lo_m.unsqueeze(1)

        mx, my, mw, mh = self.mouth
        region = warped[:, :, my : my + mh, mx : mx + mw]
        m4 = m.unsqueeze(1)
        blended = region * (1.0 - m4) + interior * m4
        return torch.cat(
            [
                warped[:, :, :my],
                torch.cat(
                    [warped[:, :, my : my + mh, :mx], blended, warped[:, :, my : my + mh, mx + mw :]], dim=3
                ),
                warped[:, :, my + mh :],
            ],
            dim=2,
        )


class RendererWrapper:
    """Owns a ``WarpRenderer`` on a device: numpy rig in, numpy RGB frames out.

    render(rig: (RIG_SIZE,) or (B, RIG_SIZE)) → (B, H, W, 3) uint8. Thread-confined: one compute
    worker owns an instance.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = WarpRenderer(tensors).to(self.device).eval()
        self.size: tuple[int, int] = self.module.size

    def render(self, rig_values: np.ndarray) -> np.ndarray:
        arr = np.asarray(rig_values, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != rig.RIG_SIZE:
            raise ValueError(f"rig must be (B, {rig.RIG_SIZE}), got {arr.shape}")
        with torch.inference_mode():
            frames = self.module(torch.from_numpy(rig.clamp(arr)).to(self.device))
            return frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()

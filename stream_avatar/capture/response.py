"""How the capture stage reads a face: the measured response of render → Face Mesh → inverse fitter.

A reference clip reaches the emotion model as fitted rig coefficients, and those are not the rigs that
made the face: Face Mesh under-reports expression motion, some coefficients move the same landmarks
(crosstalk), others pick up noise, and a stranger's face shape shows as a constant offset. The
emotion embedder's visual branch learns from the data engine's clean face tracks, so it must see
them the way the fitter would report them.

``measure_response`` renders rigs (face tracks from a dataset) on the default avatar, fits every frame
the way ``capture.reference`` does ("video" framing against the default portrait's neutral landmarks)
and fits an affine map, fitted ≈ true @ W + b, per output coefficient by ridge regression, with the
residual spread. ``FitterResponse.apply`` maps clean rigs through it, plus noise, for training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_avatar.motion import rig

RIDGE = 1e-2


@dataclass(frozen=True)
class FitterResponse:
    weight: np.ndarray  # (RIG, RIG) true → fitted (blendshapes; head angles pass through)
    bias: np.ndarray  # (RIG,)
    residual_std: np.ndarray  # (RIG,)
    frames: int

    def apply(self, rigs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = rig.NUM_BLENDSHAPES
        out = np.array(rigs, np.float32, copy=True)
        bs = rigs[:, :k] @ self.weight[:k, :k] + self.bias[:k]
        bs = bs + rng.normal(0.0, 1.0, bs.shape) * self.residual_std[:k]
        out[:, :k] = np.clip(bs, 0.0, 1.0)
        return out.astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        from safetensors.numpy import save_file

        save_file(
            {
                "weight": self.weight.astype(np.float32),
                "bias": self.bias.astype(np.float32),
                "residual_std": self.residual_std.astype(np.float32),
                "frames": np.array([self.frames], np.int64),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FitterResponse:
        from safetensors.numpy import load_file

        d = load_file(str(path))
        return cls(d["weight"], d["bias"], d["residual_std"], int(d["frames"][0]))


def measure_response(rigs: np.ndarray, size: int = 256, batch: int = 8) -> FitterResponse:
    """Render ``rigs`` (n, RIG_SIZE) on the default avatar, fit each frame, fit the affine response."""
    from stream_avatar.avatar.store import AvatarStore
    from stream_avatar.capture.fitter import fit_frame
    from stream_avatar.capture.reference import default_neutral
    from stream_avatar.render.renderer import RendererWrapper

    avatar = AvatarStore().resolve(None, size=size)
    renderer = RendererWrapper(avatar.tensors, device="cpu")
    neutral = default_neutral()
    k = rig.NUM_BLENDSHAPES
    true_rows, fit_rows = [], []
    rigs = np.asarray(rigs, np.float32)
    for i in range(0, rigs.shape[0], batch):
        chunk = rigs[i : i + batch]
        frames = renderer.render(chunk)
        for r, frame in zip(chunk, frames, strict=True):
            result = fit_frame(np.asarray(frame), neutral, framing="video")
            if result is not None:
                true_rows.append(r[:k])
                fit_rows.append(np.asarray(result.rig, np.float32)[:k])
    x = np.asarray(true_rows, np.float64)
    y = np.asarray(fit_rows, np.float64)
    xa = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    reg = RIDGE * np.eye(k + 1)
    reg[k, k] = 0.0
    coef = np.linalg.solve(xa.T @ xa + reg * x.shape[0], xa.T @ y)
    resid = y - xa @ coef
    weight = np.eye(rig.RIG_SIZE, dtype=np.float64)
    weight[:k, :k] = coef[:k]
    bias = np.zeros(rig.RIG_SIZE)
    bias[:k] = coef[k]
    std = np.zeros(rig.RIG_SIZE)
    std[:k] = resid.std(axis=0)
    return FitterResponse(weight, bias, std, int(x.shape[0]))


def sample_rigs(tracks: list[np.ndarray], n: int, seed: int = 0) -> np.ndarray:
    """``n`` frames drawn evenly from face tracks (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    picks = [
        t[int(rng.integers(0, t.shape[0]))] for t in (tracks[int(j)] for j in rng.integers(0, len(tracks), n))
    ]
    return np.stack(picks).astype(np.float32)


def cached_response(path: Path, tracks: list[np.ndarray], n: int = 600, seed: int = 0) -> FitterResponse:
    """The response saved at ``path``, or measured now (and saved) from ``n`` frames of ``tracks``."""
    if path.is_file():
        return FitterResponse.load(path)
    response = measure_response(sample_rigs(tracks, n, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    response.save(path)
    # As saved (float32), so that a run resumed from the cache sees exactly the same numbers.
    return FitterResponse.load(path)

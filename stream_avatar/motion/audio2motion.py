"""Audio-to-motion network: causal dilated convolutions over 100 Hz audio features (architecture only).

The wrapper that owns device, streaming state and loading is ``stream_avatar.motion.learned``
(STYLE §10: modules hold architecture, the wrapper runs them).

Input ``x``: (B, N_INPUT, T) float32, the level-normalised feature rows of
``stream_avatar.audio.features`` (80 log-mel bands + log energy, natural log, minus the causal peak
level; see ``learned.LevelNormalizer``), 100 rows per second. Emotion ``e``: (B, emotion_dim) float32,
the emotion vector (zeros: neutral / unknown); it modulates every block through FiLM (a per-channel
scale and shift), so the emotion model can condition articulation without retraining the acoustic
part.

Every convolution is causal (left context only), so output row ``t`` depends on input rows ``<= t``.
Lookahead is not inside the network: the wrapper reads frame ``k``'s motion at the row ``lookahead``
rows after the frame's last row, so the network has heard that much audio past the frame.

Output: (B, N_OUTPUT, T) raw head values in ``OUTPUT_LAYOUT`` order:

- ``mouth``: len(MOUTH_NAMES) logits of the mouth rig coefficients (sigmoid → [0, 1]);
- ``viseme``: len(VISEMES) logits of the viseme posterior (softmax);
- ``pitch``: the speech-linked nod on headPitch in degrees (linear);
- ``brow``: logit of the speech-linked brow raise (sigmoid → browInnerUp; outer brows at 0.8 of it).

Streaming: ``forward(x, e, state)`` takes the per-block buffers of the previous call (the last
``(kernel - 1) * dilation`` conv inputs of each block) and returns the new ones; feeding a clip in
pieces with the state carried gives the same output as feeding it whole (zero state = zero padding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stream_avatar.audio.features import N_FEATURES
from stream_avatar.data.visemes import MOUTH_NAMES, VISEMES

__all__ = ["N_INPUT", "N_OUTPUT", "OUTPUT_LAYOUT", "Audio2MotionNet", "ModelConfig", "output_slices"]

N_INPUT: int = N_FEATURES
OUTPUT_LAYOUT: tuple[tuple[str, int], ...] = (
    ("mouth", len(MOUTH_NAMES)),
    ("viseme", len(VISEMES)),
    ("pitch", 1),
    ("brow", 1),
)
N_OUTPUT: int = sum(n for _, n in OUTPUT_LAYOUT)


def output_slices() -> dict[str, slice]:
    """Head name → slice of the output channels."""
    out, at = {}, 0
    for name, n in OUTPUT_LAYOUT:
        out[name] = slice(at, at + n)
        at += n
    return out


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and streaming settings; saved as JSON beside the weights.

    channels: width of every block. dilations: one residual block per entry (kernel ``kernel``), so
    the receptive field is ``1 + (kernel - 1) * sum(dilations)`` rows (10 ms each).
    lookahead_rows: rows of audio past a frame's end heard before its motion is emitted (10 ms each;
    the project's bound is 4 = 40 ms). emotion_dim: size of the emotion vector input.
    background: one more input column, the tracked background level (``learned.LevelNormalizer``);
    configs saved before it existed load as False.
    peak_decay_db_per_s, peak_attack: how fast the level normaliser's peak tracker falls (dB/s) and
    rises (share of the gap closed per 10 ms row; ``learned.LevelNormalizer``). Inference settings as
    much as training ones: a model may run with other values than it was trained with (the shipped
    one is, see ``models/MODEL_CARD.md``). Configs saved before they existed load as 4.0 and 0.3, the
    values they were trained and run with.
    """

    channels: int = 128
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 1, 2, 4, 8)
    lookahead_rows: int = 4
    emotion_dim: int = 8
    background: bool = True
    peak_decay_db_per_s: float = 4.0
    peak_attack: float = 0.3
    outputs: tuple[tuple[str, int], ...] = field(default=OUTPUT_LAYOUT)

    def __post_init__(self) -> None:
        if self.channels < 8 or self.kernel < 2 or not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"bad model shape: {self}")
        if not 0.0 < self.peak_decay_db_per_s <= 100.0:
            raise ValueError(f"peak_decay_db_per_s must lie in (0, 100], got {self.peak_decay_db_per_s}")
        if not 0.0 < self.peak_attack <= 1.0:
            raise ValueError(f"peak_attack must lie in (0, 1], got {self.peak_attack}")
        if not 0 <= self.lookahead_rows <= 4:
            raise ValueError(f"lookahead_rows must lie in 0..4 (0-40 ms), got {self.lookahead_rows}")
        if tuple(tuple(o) for o in self.outputs) != OUTPUT_LAYOUT:
            raise ValueError(f"checkpoint outputs {self.outputs} differ from this code's {OUTPUT_LAYOUT}")

    @property
    def n_input(self) -> int:
        """Input columns: the feature rows, plus the background level when ``background``."""
        return N_INPUT + int(self.background)

    @property
    def receptive_field_rows(self) -> int:
        return 1 + (self.kernel - 1) * sum(self.dilations)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        d["outputs"] = [list(o) for o in self.outputs]
        d["n_input"] = self.n_input  # for readers of the file; derived on load
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        if "background" not in d:  # saved before the background column existed
            d["background"] = False
        if "peak_decay_db_per_s" not in d:  # saved before the peak tracker's rates were settings
            d["peak_decay_db_per_s"] = 4.0
        if "peak_attack" not in d:
            d["peak_attack"] = 0.3
        n_input = d.pop("n_input", None)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        if "dilations" in d:
            d["dilations"] = tuple(int(x) for x in d["dilations"])
        if "outputs" in d:
            d["outputs"] = tuple((str(a), int(b)) for a, b in d["outputs"])
        cfg = cls(**d)
        if n_input is not None and int(n_input) != cfg.n_input:
            raise ValueError(f"model config says n_input {n_input}, its settings make {cfg.n_input}")
        return cfg


def _channel_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels at each time step (B, C, T): causal, unlike a norm over time."""
    return F.layer_norm(x.transpose(1, 2), (x.shape[1],)).transpose(1, 2)


def _pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A kernel-1 Conv1d as one matmul: torch's CPU convolution takes a slow generic path for the
    small, dilated shapes of streaming (~100 us a call), a GEMM takes a few."""
    bias = conv.bias
    y = torch.matmul(conv.weight[:, :, 0], x)
    return y if bias is None else y + bias[:, None]


def _dilated(conv: nn.Conv1d, full: torch.Tensor, n_out: int) -> torch.Tensor:
    """Valid dilated convolution of ``full`` (B, C, context + n_out) as one GEMM over stacked taps."""
    k, d = conv.kernel_size[0], conv.dilation[0]
    taps = torch.cat([full[..., j * d : j * d + n_out] for j in range(k)], dim=1)  # (B, k*C, T)
    w = conv.weight.permute(0, 2, 1).reshape(conv.out_channels, -1)  # tap-major, matching ``taps``
    y = torch.matmul(w, taps)
    return y if conv.bias is None else y + conv.bias[:, None]


class CausalBlock(nn.Module):
    """Pre-norm residual block: norm → causal dilated conv → GELU (tanh form) → FiLM(emotion) → 1×1 conv."""

    def __init__(self, channels: int, kernel: int, dilation: int, emotion_dim: int) -> None:
        super().__init__()
        self.context = (kernel - 1) * dilation
        self.kernel, self.dilation = kernel, dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.film = nn.Linear(emotion_dim, 2 * channels)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(
        self, x: torch.Tensor, emotion: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = _channel_norm(x)
        if state is None:
            state = h.new_zeros(h.shape[0], h.shape[1], self.context)
        full = torch.cat([state, h], dim=-1)
        new_state = full[..., full.shape[-1] - self.context :]
        h = F.gelu(_dilated(self.conv, full, h.shape[-1]), approximate="tanh")
        scale, shift = self.film(emotion).unsqueeze(-1).chunk(2, dim=1)
        h = h * (1.0 + scale) + shift
        return x + _pointwise(self.proj, h), new_state


class Audio2MotionNet(nn.Module):
    """Causal audio features (+ emotion vector) → mouth, visemes and speech gestures (see module doc)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.inp = nn.Conv1d(config.n_input, c, 1)
        self.blocks = nn.ModuleList(
            CausalBlock(c, config.kernel, d, config.emotion_dim) for d in config.dilations
        )
        self.out = nn.Conv1d(c, N_OUTPUT, 1)

    def forward(
        self,
        x: torch.Tensor,
        emotion: torch.Tensor,
        state: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, n_input, T), emotion (B, emotion_dim) → (B, N_OUTPUT, T), new state (one per block)."""
        h = _pointwise(self.inp, x)
        new_state = []
        for i, block in enumerate(self.blocks):
            h, s = block(h, emotion, None if state is None else state[i])
            new_state.append(s)
        return _pointwise(self.out, _channel_norm(h)), new_state

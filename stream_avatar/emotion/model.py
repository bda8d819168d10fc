"""The emotion networks (torch modules only; loading, streaming and decoding are in ``inference``).

- ``EmotionEmbedder``: a 2 s window of per-frame audio tokens (``features``) and/or rig-coefficient
  frames (a reference clip through the inverse fitter) → a Gaussian (mu, logvar). Each modality has its
  own small transformer; audio tokens then attend to the visual tokens (cross-modal attention) and a
  learned query pools what is present. Either modality may be missing (modality dropout in training),
  so audio alone and video alone both work. It never sees pixels, only audio and rig coefficients.
- ``EmotionBank``: ``PER_EMOTION`` learnable prototypes for each of the 8 MEAD emotions. A query is
  quantised to its nearest prototype (straight-through gradient, commitment loss) and also attends over
  the whole bank, so an emotion's estimate borrows from related prototypes; the per-emotion probability
  is the attention mass on that emotion's prototypes. A learned prior per emotion is the query an
  operator's label selects.
- ``Discriminator``: a temporal convolution over a rig window (1.6 s) → 8 emotion logits, trained on
  the data engine's face tracks; a loss on the generated expression and an evaluation metric.
- ``GradReverse``: identity forward, negated gradient backward (the speaker adversary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stream_avatar.emotion.facs import EMOTIONS
from stream_avatar.emotion.features import TOKEN_DIM
from stream_avatar.motion import rig

N_EMOTIONS = len(EMOTIONS)
N_CUES = 5  # the voice-quality cues a training utterance was rendered with (``train.emotion.clip_cues``)


@dataclass(frozen=True)
class EmotionConfig:
    window_frames: int = 50  # 2 s at 25 fps
    update_frames: int = 5  # a new estimate every 200 ms (5 Hz)
    d_model: int = 64
    heads: int = 4
    audio_layers: int = 2
    visual_layers: int = 1
    latent_dim: int = 16
    per_emotion: int = 8  # prototypes per emotion: 64 in all, as the paper's bank
    temperature: float = 1.0
    disc_frames: int = 40  # the discriminator's window: 1.6 s
    disc_channels: int = 64
    token_dim: int = TOKEN_DIM
    rig_dim: int = rig.RIG_SIZE

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int | float]) -> EmotionConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})  # type: ignore[arg-type]


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None  # type: ignore[attr-defined]


def _encoder(cfg: EmotionConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        cfg.d_model,
        cfg.heads,
        dim_feedforward=2 * cfg.d_model,
        dropout=0.1,
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class EmotionEmbedder(nn.Module):
    """(audio (B, T, TOKEN_DIM), audio_mask (B, T), rigs (B, T, RIG), rig_mask (B, T)) → mu, logvar.

    Masks are True where a frame is present. A sample whose mask is all False for one modality uses
    the other alone; at least one must be present per sample.
    """

    def __init__(self, cfg: EmotionConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.audio_in = nn.Sequential(nn.Linear(cfg.token_dim, d), nn.GELU(), nn.Linear(d, d))
        self.visual_in = nn.Sequential(nn.Linear(cfg.rig_dim, d), nn.GELU(), nn.Linear(d, d))
        self.pos = nn.Parameter(torch.zeros(1, cfg.window_frames, d))
        self.kind = nn.Parameter(torch.zeros(2, d))
        self.audio_enc = _encoder(cfg, cfg.audio_layers)
        self.visual_enc = _encoder(cfg, cfg.visual_layers)
        self.cross = nn.MultiheadAttention(d, cfg.heads, dropout=0.1, batch_first=True)
        self.cross_norm = nn.LayerNorm(d)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pool = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2 * cfg.latent_dim)
        nn.init.normal_(self.pos, std=0.02)

    def forward(
        self, audio: torch.Tensor, audio_mask: torch.Tensor, rigs: torch.Tensor, rig_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = audio.shape[:2]
        pos = self.pos[:, -t:]  # windows are right-aligned: the last token is "now"
        has_a = audio_mask.any(dim=1)
        has_v = rig_mask.any(dim=1)
        # Padding masks for attention (True = ignore). A missing modality keeps one dummy key so that
        # softmax stays finite; its contribution is removed below.
        a_pad = ~audio_mask
        v_pad = ~rig_mask
        a_pad = a_pad & has_a[:, None] | (~has_a[:, None] & (torch.arange(t, device=audio.device) != t - 1))
        v_pad = v_pad & has_v[:, None] | (~has_v[:, None] & (torch.arange(t, device=audio.device) != t - 1))
        a = self.audio_enc(self.audio_in(audio) + pos + self.kind[0], src_key_padding_mask=a_pad)
        if not self.training and not bool(has_v.any()):
            # Audio alone (live speech): the visual tokens would all be masked out of the pooling and
            # the cross-attention, so they are not computed (same result, a third of the cost).
            pooled, _ = self.pool(
                self.query.expand(b, -1, -1),
                a,
                a,
                key_padding_mask=a_pad | ~has_a[:, None],
                need_weights=False,
            )
            mu, logvar = self.head(self.out_norm(pooled[:, 0])).chunk(2, dim=-1)
            return mu, logvar.clamp(-8.0, 4.0)
        v = self.visual_enc(self.visual_in(rigs) + pos + self.kind[1], src_key_padding_mask=v_pad)
        # Audio attends to the face (cross-modal); nothing to add when the face is missing.
        ctx, _ = self.cross(self.cross_norm(a), v, v, key_padding_mask=v_pad, need_weights=False)
        a = a + ctx * has_v[:, None, None].to(a.dtype)
        tokens = torch.cat([a, v], dim=1)
        pad = torch.cat([a_pad | ~has_a[:, None], v_pad | ~has_v[:, None]], dim=1)
        pooled, _ = self.pool(
            self.query.expand(b, -1, -1), tokens, tokens, key_padding_mask=pad, need_weights=False
        )
        mu, logvar = self.head(self.out_norm(pooled[:, 0])).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 4.0)


@dataclass
class BankOutput:
    probs: torch.Tensor  # (B, 8) attention mass per emotion
    intensity: torch.Tensor  # (B,) in [0, 1]
    vector: torch.Tensor  # (B, latent) the emotion vector (query ⊕ bank context)
    commit_loss: torch.Tensor  # scalar: VQ codebook + commitment
    code: torch.Tensor  # (B,) index of the nearest prototype


class EmotionBank(nn.Module):
    owner: torch.Tensor  # (K, 8) one-hot: which emotion each prototype belongs to

    def __init__(self, cfg: EmotionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, d = N_EMOTIONS * cfg.per_emotion, cfg.latent_dim
        g = torch.Generator().manual_seed(0)
        centres = torch.randn(N_EMOTIONS, 1, d, generator=g)
        self.prototypes = nn.Parameter(
            (centres + 0.3 * torch.randn(N_EMOTIONS, cfg.per_emotion, d, generator=g)).reshape(k, d)
        )
        self.values = nn.Parameter(torch.randn(k, d, generator=g) * 0.1)
        self.prior = nn.Parameter(centres[:, 0].clone())  # one learned query per emotion (operator)
        self.mix = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))
        self.intensity_head = nn.Linear(d, 1)
        owner = torch.arange(N_EMOTIONS).repeat_interleave(cfg.per_emotion)
        self.register_buffer("owner", F.one_hot(owner, N_EMOTIONS).float(), persistent=False)

    def forward(self, q: torch.Tensor, beta: float = 0.25) -> BankOutput:
        d2 = torch.cdist(q, self.prototypes) ** 2  # (B, K)
        code = d2.argmin(dim=1)
        z = self.prototypes[code]
        commit = F.mse_loss(z, q.detach()) + beta * F.mse_loss(q, z.detach())
        q_st = q + (z - q).detach()  # straight-through: the forward value is the prototype
        attn = torch.softmax(-d2 / (self.cfg.temperature * self.cfg.latent_dim**0.5), dim=1)
        probs = attn @ self.owner
        ctx = attn @ self.values
        vector = q_st + self.mix(torch.cat([q_st, ctx], dim=-1))
        intensity = torch.sigmoid(self.intensity_head(vector))[:, 0]
        return BankOutput(probs, intensity, vector, commit, code)

    def operator_query(self, emotion: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """(B,) emotion index + (B,) intensity → the query of that label: neutral prior → label prior."""
        neutral = self.prior[0]
        return neutral + intensity[:, None] * (self.prior[emotion] - neutral)


class Discriminator(nn.Module):
    """(B, T, RIG_SIZE) rig window → (B, 8) emotion logits (any T ≥ 8; trained at ``disc_frames``)."""

    def __init__(self, cfg: EmotionConfig) -> None:
        super().__init__()
        c = cfg.disc_channels
        self.net = nn.Sequential(
            nn.Conv1d(cfg.rig_dim, c, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(c, c, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv1d(c, c, 3, padding=4, dilation=4),
            nn.GELU(),
        )
        self.head = nn.Linear(2 * c, N_EMOTIONS)

    def forward(self, rigs: torch.Tensor) -> torch.Tensor:
        h = self.net(rigs.transpose(1, 2))
        return self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


class EmotionNet(nn.Module):
    """Embedder + bank (+ training-only heads, sized at training time and never saved: the speaker
    adversary's, and one that reads the voice's rendered cues — pitch range, tilt, breathiness, tremor,
    tension — back from mu, so the embedding learns to measure them rather than the speaker)."""

    TRAINING_HEADS = ("speaker_head.", "cue_head.")

    def __init__(self, cfg: EmotionConfig, n_speakers: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedder = EmotionEmbedder(cfg)
        self.bank = EmotionBank(cfg)
        self.speaker_head = (
            nn.Sequential(nn.Linear(cfg.latent_dim, 64), nn.GELU(), nn.Linear(64, n_speakers))
            if n_speakers
            else None
        )
        self.cue_head = (
            nn.Sequential(nn.Linear(cfg.latent_dim, 64), nn.GELU(), nn.Linear(64, N_CUES))
            if n_speakers
            else None
        )

    def forward(
        self, audio: torch.Tensor, audio_mask: torch.Tensor, rigs: torch.Tensor, rig_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, BankOutput]:
        mu, logvar = self.embedder(audio, audio_mask, rigs, rig_mask)
        return mu, logvar, self.bank(mu)


def facs_matrix() -> torch.Tensor:
    """(8, RIG_SIZE): each emotion's FACS expression rig at intensity 1 (neutral: zeros), for a
    differentiable ``expression_rig`` of per-emotion weights (sum of AU activations, then the rig's
    clamp — the AU-level clamp of ``facs.expression_rig`` is dropped: weights here sum to ≤ 1)."""
    from stream_avatar.emotion import facs

    rows = [facs.expression_rig({name: 1.0} if name != "neutral" else {}) for name in EMOTIONS]
    return torch.tensor([list(r) for r in rows], dtype=torch.float32)


def generated_expression(base: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Speech rig (B, T, RIG) ⊕ expression of per-emotion weights (B, 8) → (B, T, RIG), like facs.blend."""
    expr = (weights @ table).clamp(0.0, 1.0)[:, None, :]
    k = rig.NUM_BLENDSHAPES
    out = base.clone()
    out[..., :k] = 1.0 - (1.0 - base[..., :k].clamp(0, 1)) * (1.0 - expr[..., :k])
    return out

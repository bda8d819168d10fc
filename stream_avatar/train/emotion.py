"""Training the emotion stage: discriminator first, then embedder + bank against it.

Data: the data engine's datasets (every synthesizer; each utterance has an emotion label, intensity,
speaker and face track). Per utterance: audio tokens (``emotion.features``) and the target rig track.

Steps 1 .. ``disc_steps`` train the ``Discriminator`` on 1.6 s rig windows: the face tracks (scaled and
noised the way fitted or generated rigs differ) and speech-mouth-only windows with the FACS expression
of the label blended in. It is then frozen.

Every later step trains ``EmotionNet`` on a batch of 2 s windows (right-aligned; shorter at an
utterance's start, as a stream's first seconds are) with modality dropout (audio only / rigs only /
both); windows are drawn with each emotion equally often, recorded (real, neutral) speech taking
``recorded_neutral_share`` of the neutral draws. Audio windows are read against their speaker's
baseline (``Baselines``) as a session would, after some of the speaker's other utterances or none.
Loss: emotion cross-entropy on the bank's probabilities + intensity + KL of the Gaussian + VQ
commitment + the speaker adversary through gradient reversal (synthetic speakers) + the rendered
voice-quality cues read back from mu (a training-only head; voice-quality data) + each learned prior
classified as its emotion + the frozen discriminator's cross-entropy on the generated expression
(speech mouth ⊕ the FACS rig of the predicted emotion).

Checkpoints (model, optimizer, step) every ``checkpoint_every`` steps; a resumed run equals an
uninterrupted one (batches depend on seed and step only).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stream_avatar.data import visemes
from stream_avatar.emotion.facs import EMOTIONS
from stream_avatar.emotion.features import SpeakerBaseline, tokens_from_rows, voiced_sums
from stream_avatar.emotion.model import (
    N_CUES,
    Discriminator,
    EmotionConfig,
    EmotionNet,
    GradReverse,
    facs_matrix,
    generated_expression,
)
from stream_avatar.motion import rig
from stream_avatar.train import checkpoint

CHECKPOINT = checkpoint.CHECKPOINT
_MOUTH_IDX = np.array([rig.index(n) for n in visemes.MOUTH_NAMES])
_HEAD = np.arange(rig.NUM_BLENDSHAPES, rig.RIG_SIZE)


@dataclass(frozen=True)
class Clip:
    """One utterance as the emotion trainer sees it."""

    tokens: np.ndarray  # (T, TOKEN_DIM)
    rigs: np.ndarray  # (T, RIG_SIZE) face track
    emotion: int
    intensity: float
    speaker: str
    language: str
    synthesizer: str
    split: str
    has_rigs: bool = True  # corpora without a fitted video train the audio branch only
    cues: np.ndarray | None = None  # (N_CUES,) the voice-quality cues it was rendered with, if any


def clip_cues(record: dict[str, Any]) -> np.ndarray | None:
    """A manifest record's rendered voice quality → (N_CUES,) targets of similar scale (log pitch-range
    factor, tilt / 10 dB, breathiness × 25, tremor, tension); None without voice quality."""
    vq = record.get("voice_quality")
    if not vq:
        return None
    return np.array(
        [
            math.log(float(vq.get("range_factor", 1.0))),
            float(vq["tilt_db"]) / 10.0,
            float(vq["breath"]) * 25.0,
            float(vq["tremor"]),
            float(vq["tension"]),
        ],
        np.float32,
    )


def load_clips(data_dirs: Sequence[str | os.PathLike[str]], splits: Sequence[str]) -> list[Clip]:
    from stream_avatar.data.synth import read_dataset

    out: list[Clip] = []
    for d in data_dirs:
        for split in splits:
            for utt in read_dataset(d, split):
                rec = utt.record
                tokens = tokens_from_rows(utt.features, utt.audio)
                n = min(tokens.shape[0], utt.targets.shape[0])
                if n < 8:
                    continue
                emo = str(rec.get("emotion", "neutral"))
                out.append(
                    Clip(
                        tokens=tokens[:n],
                        rigs=np.asarray(utt.targets[:n], np.float32),
                        emotion=EMOTIONS.index(emo),
                        intensity=float(rec.get("intensity", 0.0)) if emo != "neutral" else 0.0,
                        speaker=str(rec["speaker"]),
                        language=str(rec.get("language", "")),
                        synthesizer=str(rec.get("synthesizer", "espeak")),
                        split=split,
                        cues=clip_cues(rec),
                    )
                )
    return out


def load_corpus_clips(roots: Sequence[str | os.PathLike[str]]) -> list[Clip]:
    """CREMA-D / RAVDESS / MEAD folders (``data.corpora.read_corpus``) → audio-only training clips.

    Their faces are not read here (MEAD's video needs the fitter per frame: minutes per hour of
    video); the visual branch learns from the data engine's face tracks."""
    from stream_avatar.audio.io import load_audio
    from stream_avatar.audio.resample import resample
    from stream_avatar.data.corpora import read_corpus
    from stream_avatar.emotion.features import clip_tokens

    out: list[Clip] = []
    for root in roots:
        for item in read_corpus(Path(root)):
            samples, rate = load_audio(item.audio_path)
            tokens = clip_tokens(resample(samples, rate, 16000) if rate != 16000 else samples)
            if tokens.shape[0] < 8:
                continue
            out.append(
                Clip(
                    tokens=tokens,
                    rigs=np.zeros((tokens.shape[0], rig.RIG_SIZE), np.float32),
                    emotion=EMOTIONS.index(item.emotion),
                    intensity=float(item.intensity),
                    speaker=item.speaker,
                    language=item.language,
                    synthesizer=item.corpus,
                    split="train",
                    has_rigs=False,
                )
            )
    return out


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2500
    disc_steps: int = 600
    batch: int = 64
    lr: float = 1.5e-3
    weight_decay: float = 1e-2
    warmup: int = 100
    seed: int = 0
    threads: int = 2
    kl_weight: float = 1e-3
    commit_weight: float = 0.5
    speaker_weight: float = 1.0
    prior_weight: float = 0.2
    disc_weight: float = 0.2
    intensity_weight: float = 0.5
    cue_weight: float = 1.0  # reading the rendered voice-quality cues back from mu (voice-quality data)
    p_audio_only: float = 0.55
    p_visual_only: float = 0.2
    min_frames: int = 12  # shortest window (0.48 s): the embedder answers from then on
    response_frames: int = 600  # frames rendered + fitted to measure the fitter's response (0: off)
    p_fitted: float = 0.7  # share of visual windows seen through the measured fitter response
    checkpoint_every: int = 250
    eval_every: int = 500
    # The speaker's baseline (``features.SpeakerBaseline``; 0: off): the weight of the population's
    # statistics in voiced frames (250: 10 s of voice). A training window is normalised as a session
    # would: after 0 (``p_cold``) or 1 .. ``baseline_history`` earlier utterances of the same speaker.
    baseline_frames: float = 250.0
    baseline_history: int = 24
    p_cold: float = 0.15
    # Batches draw the eight emotions equally often. Recorded speech in the data (the Asterisk prompts:
    # real, read, neutral) takes this share of the neutral draws: it anchors "neutral" on a human
    # voice, where synthetic voices alone leave the real-speech domain unseen.
    recorded_neutral_share: float = 0.5


@dataclass(frozen=True)
class Baselines:
    """What a batch needs to normalise windows by their speaker's baseline."""

    mean: np.ndarray
    std: np.ndarray
    prior_frames: float
    sums: list[tuple[float, np.ndarray, np.ndarray]]  # per clip (``voiced_sums``)
    by_speaker: dict[str, np.ndarray]  # speaker -> clip indices

    @classmethod
    def of(cls, clips: Sequence[Clip], prior_frames: float) -> Baselines:
        """Population statistics: every clip's voiced frames, each clip weighted equally."""
        sums = [voiced_sums(c.tokens) for c in clips]
        voiced = [s for s in sums if s[0] > 0]
        if not voiced:
            raise ValueError("no voiced speech in the training utterances: nothing to take a baseline from")
        mean = np.mean([s1 / n for n, s1, _ in voiced], axis=0)
        sq = np.mean([s2 / n for n, _, s2 in voiced], axis=0)
        std = np.sqrt(np.maximum(sq - mean * mean, 1e-6))
        by: dict[str, list[int]] = {}
        for i, c in enumerate(clips):
            by.setdefault(c.speaker, []).append(i)
        return cls(mean, std, prior_frames, sums, {k: np.array(v) for k, v in sorted(by.items())})

    def new(self) -> SpeakerBaseline:
        return SpeakerBaseline(self.mean, self.std, self.prior_frames)

    def config(self) -> dict[str, Any]:
        """The model config's ``inference.speaker_baseline``."""
        return {
            "prior_frames": self.prior_frames,
            "mean": [round(float(v), 6) for v in self.mean],
            "std": [round(float(v), 6) for v in self.std],
        }

    def session_tokens(
        self, clips: Sequence[Clip], k: int, end: int, cfg: TrainConfig, rng: np.random.Generator
    ) -> np.ndarray:
        """Clip ``k``'s tokens [0, end) normalised as in a session that heard some of the speaker's
        other utterances first (none with ``p_cold``)."""
        base = self.new()
        others = self.by_speaker[clips[k].speaker]
        others = others[others != k]
        if others.size and rng.random() >= cfg.p_cold:
            n = int(rng.integers(1, min(cfg.baseline_history, others.size) + 1))
            for j in rng.choice(others, n, replace=False):
                base.add(*self.sums[int(j)])
        return base.apply(clips[k].tokens[:end])


def _window(n: int, length: int, rng: np.random.Generator, min_frames: int) -> tuple[int, int]:
    """A right-aligned window [end - L, end) of at most ``length`` frames inside an n-frame clip."""
    end = int(rng.integers(min(min_frames, n), n + 1))
    return max(0, end - length), end


def augment_rigs(rigs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fitted / generated rigs are weaker and noisier than the data engine's tracks."""
    out = rigs * rng.uniform(0.35, 1.1) + rng.normal(0.0, 0.03, rigs.shape)
    out[:, _HEAD] = rigs[:, _HEAD] * rng.uniform(0.0, 1.5) + rng.normal(0.0, 1.0, (rigs.shape[0], _HEAD.size))
    out[:, : rig.NUM_BLENDSHAPES] = np.clip(out[:, : rig.NUM_BLENDSHAPES], 0.0, 1.0)
    return out.astype(np.float32)


RECORDED = "recorded"  # the ``synthesizer`` of recorded speech (``data prompts``)


def sampling_weights(clips: Sequence[Clip], cfg: TrainConfig) -> np.ndarray:
    """(len(clips),) probabilities: each emotion present 1/E; recorded clips take
    ``recorded_neutral_share`` of their emotion's mass (all of it when nothing synthetic shares it)."""
    emotions = np.array([c.emotion for c in clips])
    recorded = np.array([c.synthesizer == RECORDED for c in clips])
    present = np.unique(emotions)
    w = np.zeros(len(clips))
    for e in present:
        here = emotions == e
        groups = [
            (here & recorded, cfg.recorded_neutral_share),
            (here & ~recorded, 1.0 - cfg.recorded_neutral_share),
        ]
        if not all(g.any() for g, _ in groups):
            groups = [(here, 1.0)]
        for g, share in groups:
            w[g] = share / g.sum() / present.size
    return w / w.sum()


def make_batch(
    clips: Sequence[Clip],
    cfg: TrainConfig,
    ecfg: EmotionConfig,
    speakers: dict[str, int],
    step: int,
    response: Any = None,
    weights: np.ndarray | None = None,
    baselines: Baselines | None = None,
) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng([cfg.seed, step, 1])
    t = ecfg.window_frames
    b = cfg.batch
    audio = np.zeros((b, t, ecfg.token_dim), np.float32)
    rigs = np.zeros((b, t, ecfg.rig_dim), np.float32)
    amask = np.zeros((b, t), bool)
    vmask = np.zeros((b, t), bool)
    mouth = np.zeros((b, ecfg.disc_frames, ecfg.rig_dim), np.float32)
    y = np.zeros(b, np.int64)
    inten = np.zeros(b, np.float32)
    spk = np.full(b, -1, np.int64)
    cues = np.zeros((b, N_CUES), np.float32)
    has_cues = np.zeros(b, bool)
    picks = rng.integers(0, len(clips), b) if weights is None else rng.choice(len(clips), b, p=weights)
    for i, k in enumerate(picks):
        c = clips[int(k)]
        a, e = _window(c.tokens.shape[0], t, rng, cfg.min_frames)
        n = e - a
        u = rng.random()
        use_a = u < cfg.p_audio_only or u >= cfg.p_audio_only + cfg.p_visual_only
        use_v = u >= cfg.p_audio_only and c.has_rigs
        use_a = use_a or not use_v
        if use_a:
            tok = c.tokens if baselines is None else baselines.session_tokens(clips, int(k), e, cfg, rng)
            audio[i, t - n :] = tok[a:e]
            amask[i, t - n :] = True
        if use_v:
            if response is not None and rng.random() < cfg.p_fitted:
                # As a reference clip arrives: through render → Face Mesh → fitter, plus the constant
                # offset a stranger's face shape gives against the default neutral.
                seen = response.apply(c.rigs[a:e], rng)
                k = rig.NUM_BLENDSHAPES
                seen[:, :k] = np.clip(seen[:, :k] + rng.normal(0.0, 0.04, k), 0.0, 1.0)
                rigs[i, t - n :] = seen
            else:
                rigs[i, t - n :] = augment_rigs(c.rigs[a:e], rng)
            vmask[i, t - n :] = True
        y[i], inten[i] = c.emotion, c.intensity
        spk[i] = speakers.get(c.speaker, -1)
        if c.cues is not None and use_a:
            cues[i], has_cues[i] = c.cues, True
        # The speech mouth (no expression) of a discriminator-sized window, for the generated face.
        m = min(ecfg.disc_frames, c.rigs.shape[0])
        s0 = int(rng.integers(0, c.rigs.shape[0] - m + 1))
        mouth[i, ecfg.disc_frames - m :, _MOUTH_IDX] = c.rigs[s0 : s0 + m, _MOUTH_IDX].T
    return {
        "audio": torch.from_numpy(audio),
        "rigs": torch.from_numpy(rigs),
        "amask": torch.from_numpy(amask),
        "vmask": torch.from_numpy(vmask),
        "mouth": torch.from_numpy(mouth),
        "y": torch.from_numpy(y),
        "intensity": torch.from_numpy(inten),
        "speaker": torch.from_numpy(spk),
        "cues": torch.from_numpy(cues),
        "has_cues": torch.from_numpy(has_cues),
    }


def disc_batch(
    clips: Sequence[Clip], cfg: TrainConfig, ecfg: EmotionConfig, step: int, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Face-track windows (augmented) and speech-mouth ⊕ FACS(label) windows, half each."""
    rng = np.random.default_rng([cfg.seed, step, 2])
    clips = [c for c in clips if c.has_rigs]
    t, b = ecfg.disc_frames, cfg.batch
    x = np.zeros((b, t, ecfg.rig_dim), np.float32)
    y = np.zeros(b, np.int64)
    weights = np.zeros((b, len(EMOTIONS)), np.float32)
    synthetic = np.zeros(b, bool)
    for i, k in enumerate(rng.integers(0, len(clips), b)):
        c = clips[int(k)]
        m = min(t, c.rigs.shape[0])
        s0 = int(rng.integers(0, c.rigs.shape[0] - m + 1))
        y[i] = c.emotion
        if i % 2 == 0:
            x[i, t - m :] = augment_rigs(c.rigs[s0 : s0 + m], rng)
        else:
            x[i, t - m :, _MOUTH_IDX] = c.rigs[s0 : s0 + m, _MOUTH_IDX].T * rng.uniform(0.5, 1.1)
            if c.emotion:
                weights[i, c.emotion] = rng.uniform(0.3, 1.0)
            synthetic[i] = True
    xt = torch.from_numpy(x)
    gen = generated_expression(xt, torch.from_numpy(weights), table)
    xt = torch.where(torch.from_numpy(synthetic)[:, None, None], gen, xt)
    return xt, torch.from_numpy(y)


def validation_windows(clips: Sequence[Clip], window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last full window of every clip (shorter clips: the whole clip, left-padded) → tokens,
    valid lengths, labels."""
    tokens = np.zeros((len(clips), window, clips[0].tokens.shape[1] if clips else 1), np.float32)
    lens = np.zeros(len(clips), np.int64)
    for i, c in enumerate(clips):
        n = min(window, c.tokens.shape[0])
        tokens[i, window - n :] = c.tokens[-n:]
        lens[i] = n
    return tokens, lens, np.array([c.emotion for c in clips], np.int64)


def session_clips(model: Any, clips: Sequence[Clip]) -> list[Clip]:
    """Clips with their tokens normalised by the model's speaker baseline as one session per speaker
    hears them, in the given order (unchanged for a model without a baseline)."""
    sessions: dict[str, Any] = {}
    out = []
    for c in clips:
        base = sessions.setdefault(c.speaker, model.new_baseline())
        out.append(c if base is None else replace(c, tokens=base.apply(c.tokens)))
    return out


def validator(data_dirs: Sequence[str | os.PathLike[str]]) -> Callable[[Any], dict[str, float]]:
    """Audio-only accuracy on the synthetic val split (last 2 s of each utterance), for the training
    history (recorded prompts are all neutral: they would swamp the figure)."""
    clips = [c for c in load_clips(data_dirs, ["val"]) if c.synthesizer != RECORDED]

    def evaluate(model: Any) -> dict[str, float]:
        if not clips:
            return {}
        tokens, lens, y = validation_windows(session_clips(model, clips), model.config.window_frames)
        est = model.estimate_windows(tokens, lengths=lens)
        pred = np.array([int(np.argmax(e.probs)) for e in est])
        return {"val_acc": round(float(np.mean(pred == y)), 4)}

    return evaluate


def _lr(cfg: TrainConfig, step: int, start: int, end: int) -> float:
    s = step - start
    if s < cfg.warmup:
        return cfg.lr * (s + 1) / cfg.warmup
    t = (s - cfg.warmup) / max(1, end - start - cfg.warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def loss_fn(
    net: EmotionNet,
    disc: Discriminator,
    batch: dict[str, torch.Tensor],
    cfg: TrainConfig,
    progress: float,
    table: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    mu, logvar = net.embedder(batch["audio"], batch["amask"], batch["rigs"], batch["vmask"])
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    out = net.bank(z)
    y = batch["y"]
    ce = F.nll_loss(torch.log(out.probs + 1e-6), y)
    kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))
    inten = F.mse_loss(out.intensity, batch["intensity"])
    # Speaker adversary: predicts the speaker from mu; the reversed gradient removes it from mu.
    spk = batch["speaker"]
    known = spk >= 0
    assert net.speaker_head is not None
    lam = cfg.speaker_weight * min(1.0, 2.0 * progress)
    spk_logits = net.speaker_head(GradReverse.apply(mu[known], lam))
    spk_loss = F.cross_entropy(spk_logits, spk[known]) if known.any() else mu.sum() * 0
    # The rendered voice-quality cues, read back from mu (heard in the audio, whoever speaks).
    assert net.cue_head is not None
    has = batch["has_cues"]
    cue_loss = F.mse_loss(net.cue_head(mu[has]), batch["cues"][has]) if has.any() else mu.sum() * 0
    # Each learned prior (operator control) decodes to its own emotion at full intensity.
    labels = torch.arange(len(EMOTIONS))
    pq = net.bank.operator_query(labels, torch.ones(len(EMOTIONS)))
    pout = net.bank(pq)
    prior = F.nll_loss(torch.log(pout.probs + 1e-6), labels) + F.mse_loss(
        pout.intensity, (labels > 0).float()
    )
    # The generated expression must show the intended emotion to the frozen discriminator.
    w = out.probs * out.intensity[:, None]
    w = torch.cat([torch.zeros_like(w[:, :1]), w[:, 1:]], dim=1)
    gen = generated_expression(batch["mouth"], w, table)
    dloss = F.cross_entropy(disc(gen), y)
    loss = (
        ce
        + cfg.intensity_weight * inten
        + cfg.kl_weight * kl
        + cfg.commit_weight * out.commit_loss
        + spk_loss
        + cfg.cue_weight * cue_loss
        + cfg.prior_weight * prior
        + cfg.disc_weight * dloss
    )
    acc = (out.probs.argmax(dim=1) == y).float().mean()
    spk_acc = (spk_logits.argmax(dim=1) == spk[known]).float().mean() if known.any() else acc * 0
    parts = {
        "loss": float(loss.detach()),
        "ce": float(ce.detach()),
        "acc": float(acc.detach()),
        "kl": float(kl.detach()),
        "spk_acc": float(spk_acc.detach()),
        "cue": float(cue_loss.detach()),
        "disc": float(dloss.detach()),
        "prior": float(prior.detach()),
    }
    return loss, parts


def save_checkpoint(
    out_dir: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer, info: dict[str, Any]
) -> None:
    state = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    checkpoint.save(out_dir, state, opt, info)


load_checkpoint = checkpoint.load


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}


def train(
    data_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    cfg: TrainConfig,
    ecfg: EmotionConfig | None = None,
    *,
    resume: bool = True,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    log: Callable[[str], None] = print,
    corpora: Sequence[str | os.PathLike[str]] = (),
    fitter_response: str | os.PathLike[str] | None = None,
) -> Any:
    """Train (or resume) into ``out_dir``; writes the final ``EmotionModel`` there; returns it.

    ``corpora``: CREMA-D / RAVDESS / MEAD folders added to the training clips (audio branch)."""
    from stream_avatar.emotion.inference import VOICE_PRIOR_NEUTRAL, EmotionModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_load = time.perf_counter()
    clips = load_clips(data_dirs, ["train"]) + load_corpus_clips(corpora)
    if not clips:
        raise ValueError(f"no training utterances in {list(map(str, data_dirs))} (split 'train')")
    # The speaker adversary sees synthetic speakers only: the recorded speaker is always neutral, so
    # removing who they are would remove "neutral" with it.
    speakers = {s: i for i, s in enumerate(sorted({c.speaker for c in clips if c.synthesizer != RECORDED}))}
    weights = sampling_weights(clips, cfg)
    baselines = Baselines.of(clips, cfg.baseline_frames) if cfg.baseline_frames > 0 else None
    inference: dict[str, Any] = {"voice_prior_neutral": VOICE_PRIOR_NEUTRAL}
    if baselines is not None:
        inference["speaker_baseline"] = baselines.config()
    log(
        f"loaded {len(clips)} train utterances, {len(speakers)} speakers "
        f"in {time.perf_counter() - t_load:.1f} s"
    )
    ckpt = load_checkpoint(out) if resume else None
    if ckpt is not None:
        ecfg = EmotionConfig.from_dict(ckpt[2]["model"])
    ecfg = ecfg or EmotionConfig()
    torch.manual_seed(cfg.seed)
    net = EmotionNet(ecfg, n_speakers=len(speakers))
    disc = Discriminator(ecfg)
    table = facs_matrix()
    params = list(net.parameters()) + list(disc.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, elapsed, history = 0, 0.0, []
    if ckpt is not None:
        net.load_state_dict(_sub(ckpt[0], "net"))
        disc.load_state_dict(_sub(ckpt[0], "disc"))
        checkpoint.load_optimizer(opt, ckpt[1], ckpt[2]["optimizer"])
        start, elapsed = int(ckpt[2]["step"]), float(ckpt[2].get("train_seconds", 0.0))
        history = list(ckpt[2].get("history", []))
        log(f"resumed at step {start}")
    response = None
    if fitter_response is not None:
        # A response measured before (``capture.response``; the shipped model's is in models/emotion),
        # so that a run reproduces the shipped one exactly whatever the renderer measures today.
        from stream_avatar.capture.response import FitterResponse

        response = FitterResponse.load(fitter_response)
        log(f"fitter response from {fitter_response} ({response.frames} frames)")
    elif cfg.response_frames > 0:
        from stream_avatar.capture.response import cached_response

        t_resp = time.perf_counter()
        response = cached_response(
            out / CHECKPOINT / "fitter_response.safetensors",
            [c.rigs for c in clips if c.has_rigs],
            n=cfg.response_frames,
            seed=cfg.seed,
        )
        log(f"fitter response from {response.frames} rendered frames ({time.perf_counter() - t_resp:.0f} s)")
    total = cfg.disc_steps + cfg.steps
    data_info = {
        "data": [str(d) for d in data_dirs],
        "corpora": [str(c) for c in corpora],
        "train_utterances": len(clips),
        "train_speakers": len(speakers),
    }
    running: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in range(start, total):
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        if step < cfg.disc_steps:
            disc.train()
            x, y = disc_batch(clips, cfg, ecfg, step, table)
            logits = disc(x)
            loss = F.cross_entropy(logits, y)
            acc = (logits.argmax(1) == y).float().mean()
            parts = {"disc_train": float(loss.detach()), "disc_acc": float(acc)}
            lr = _lr(cfg, step, 0, cfg.disc_steps)
        else:
            disc.eval()
            for p in disc.parameters():
                p.requires_grad_(False)
            net.train()
            batch = make_batch(clips, cfg, ecfg, speakers, step, response, weights, baselines)
            loss, parts = loss_fn(net, disc, batch, cfg, (step - cfg.disc_steps) / cfg.steps, table)
            lr = _lr(cfg, step, cfg.disc_steps, total)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in params if p.requires_grad], 1.0)
        opt.step()
        for k, v in parts.items():
            running[k] = 0.95 * running.get(k, v) + 0.05 * v
        done = step + 1
        if progress is not None:
            progress(done, total, running)
        if evaluate is not None and done > cfg.disc_steps and (done % cfg.eval_every == 0 or done == total):
            net.eval()
            scores = evaluate(EmotionModel(net, disc, {"inference": inference}))
            entry = {"step": done, **{k: round(v, 4) for k, v in running.items()}, **scores}
            history.append(entry)
            log(json.dumps(entry))
        if done % cfg.checkpoint_every == 0 or done == total:
            info = {
                "step": done,
                "model": ecfg.to_dict(),
                "train": asdict(cfg),
                "history": history,
                "train_seconds": round(elapsed + time.perf_counter() - t0, 1),
                **data_info,
            }
            save_checkpoint(out, {"net": net, "disc": disc}, opt, info)
    net.eval()
    meta = {
        "train": asdict(cfg),
        "inference": inference,
        "history": history,
        "torch": torch.__version__,
        "train_seconds": round(elapsed + time.perf_counter() - t0, 1),
        **data_info,
    }
    model = EmotionModel(net, disc, meta)
    model.save(out)
    return model

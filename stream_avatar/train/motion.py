"""Training of the learned audio-to-motion model (``stream-avatar train motion``).

Data: a dataset written by ``stream-avatar data synth`` (``stream_avatar.data.synth``). Targets are
rebuilt from each utterance's phoneme timeline, not copied from the stored face track, because the
stored track also carries the utterance's emotional expression, which in the engine comes from the
emotion layer on top of the driver:

- mouth: ``visemes.mouth_targets`` (coarticulated visemes, mouth leading the sound by 40 ms), scaled by
  the emotion's articulation gain (angry speech opens wider, sad speech less; ``expressive``);
- viseme: the class of the phoneme sounding at the frame's target time (frame centre + LEAD_S);
- pitch: the stored headPitch track (speech-linked nods; the expression never touches head angles);
- brow: the stored browInnerUp track, learned on neutral utterances only (elsewhere it mixes the
  expression's brows with the speech gestures).

Batches: each training stream is 2-3 random utterances of the train split joined end to end (so the
model sees speaker and level changes mid-stream), normalised as a live stream would be, and cropped
to ``crop_s``. The loss is read at the rows that carry each frame's motion (``learned.frame_rows``).
With probability ``emotion_p`` the utterance's emotion (one-hot × intensity) is fed to the FiLM input,
otherwise the neutral zero vector, so the model works without an emotion model and learns to use one.

Feature-domain augmentation on top of the dataset's own (which is applied to the audio when the
dataset is made): with probability ``babble_p`` 1 to ``babble_talkers`` other training utterances are
mixed in at 0-20 dB below the stream's speech level (babble: the mouth must follow the main voice,
not every voice), and with probability ``band_p`` the mel bands are attenuated above 3.3-4 kHz and
below 100-350 Hz (an 8 kHz or telephone channel), and with probability ``eq_p`` a smooth random
equaliser (a tilt and two slow ripples across the mel axis, up to about ±10 dB: another microphone,
room or codec than the synthesizers'). All three work on mel powers, where independent signals add
(their cross terms average out over a band), so no audio has to be re-synthesized per batch.

Loss: squared error of the mouth coefficients plus, with weight ``delta_weight``, squared error of
their frame-to-frame change (the mouth must move when the target moves, and not jitter when it
does not), viseme cross-entropy, and the speech-linked gestures.

Shipped weights: the exponential moving average of the weights over the last ~``1/(1-ema)`` steps
(``ema``), kept beside the raw weights in every checkpoint.

Resumable and reproducible: a checkpoint (weights, their average, optimizer state, step; safetensors +
JSON) is written every ``checkpoint_every`` steps and at the end; batch ``i`` is drawn from
``np.random.default_rng([seed, i])`` and torch is seeded per step, so a resumed run continues exactly
as an uninterrupted one would.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stream_avatar.audio.features import EPS, HOP, N_MELS, SAMPLE_RATE_HZ, mel_band_edges_hz
from stream_avatar.data import expressive, visemes
from stream_avatar.emotion import facs as emotion_mod
from stream_avatar.motion import rig
from stream_avatar.motion.audio2motion import Audio2MotionNet, ModelConfig, output_slices
from stream_avatar.motion.learned import LevelNormalizer, MotionModel, frame_rows
from stream_avatar.train import checkpoint

__all__ = ["Track", "TrainConfig", "load_tracks", "make_batch", "train"]

FPS = 25
ROWS_PER_FRAME = SAMPLE_RATE_HZ // FPS // HOP
_MOUTH_IDX = np.array([rig.index(n) for n in visemes.MOUTH_NAMES])
_PITCH = rig.index("headPitch")
_BROW = rig.index("browInnerUp")
_VIS_INDEX = {v: i for i, v in enumerate(visemes.VISEMES)}
_SLICES = output_slices()
CHECKPOINT = checkpoint.CHECKPOINT


@dataclass
class Track:
    """One utterance ready for training: raw feature rows and per-frame targets (n frames)."""

    rows: np.ndarray  # (4n, N_FEATURES) float32, un-normalised
    mouth: np.ndarray  # (n, len(MOUTH_NAMES)) float32
    viseme: np.ndarray  # (n,) int64
    pitch: np.ndarray  # (n,) float32 degrees
    brow: np.ndarray  # (n,) float32
    brow_valid: bool
    emotion: np.ndarray  # (len(EMOTIONS),) float32 one-hot × intensity
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.mouth.shape[0])


def viseme_ids(phonemes: Sequence[visemes.TimedPhoneme], n_frames: int, fps: int = FPS) -> np.ndarray:
    """(n_frames,) int64: viseme class of the phoneme sounding at each frame's target time."""
    t = (np.arange(n_frames) + 0.5) / fps + visemes.LEAD_S
    spans = sorted((p.start_s, p.end_s, p.symbol) for p in phonemes if p.end_s > p.start_s)
    starts = [s for s, _, _ in spans]
    out = np.full(n_frames, _VIS_INDEX["sil"], np.int64)
    for k, tk in enumerate(t.tolist()):
        j = bisect.bisect_right(starts, tk) - 1
        if j >= 0 and tk < spans[j][1]:
            out[k] = _VIS_INDEX[visemes.viseme_of(spans[j][2], visemes.UNKNOWN_VISEME)]
    return out


def targets_from_phonemes(
    phonemes: Sequence[visemes.TimedPhoneme], n_frames: int, gain: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Mouth (n_frames, len(MOUTH_NAMES)) and viseme ids (n_frames,) from a phoneme timeline."""
    full = visemes.mouth_targets(phonemes, n_frames, FPS, unknown=visemes.UNKNOWN_VISEME)
    mouth = np.clip(full[:, _MOUTH_IDX] * gain, 0.0, 1.0).astype(np.float32)
    return mouth, viseme_ids(phonemes, n_frames)


def emotion_vector(emotion: str, intensity: float) -> np.ndarray:
    v = np.zeros(len(emotion_mod.EMOTIONS), np.float32)
    if emotion != "neutral":
        v[emotion_mod.EMOTIONS.index(emotion)] = float(intensity)
    return v


def track_from_utterance(utt: Any) -> Track | None:
    """A ``synth.Utterance`` → Track (None when shorter than one frame)."""
    rec = utt.record
    n_full = min(utt.features.shape[0] // ROWS_PER_FRAME, utt.targets.shape[0])
    if n_full < 1:
        return None
    phon = visemes.phonemes_from_samples(utt.phonemes, SAMPLE_RATE_HZ)
    emo, inten = str(rec.get("emotion", "neutral")), float(rec.get("intensity", 0.0))
    gain = 1.0 + inten * (expressive.ARTICULATION.get(emo, 1.0) - 1.0)
    mouth, vis = targets_from_phonemes(phon, n_full, gain)
    return Track(
        rows=np.ascontiguousarray(utt.features[: n_full * ROWS_PER_FRAME], np.float32),
        mouth=mouth,
        viseme=vis,
        pitch=utt.targets[:n_full, _PITCH].astype(np.float32),
        brow=utt.targets[:n_full, _BROW].astype(np.float32),
        brow_valid=emo == "neutral",
        emotion=emotion_vector(emo, inten),
        record={k: rec.get(k) for k in ("id", "language", "speaker", "split", "synthesizer", "emotion")},
    )


def load_tracks(data_dir: str | os.PathLike[str], split: str) -> list[Track]:
    """Every utterance of ``split`` as a Track, in manifest order."""
    from stream_avatar.data.synth import read_dataset

    out = []
    for utt in read_dataset(data_dir, split):
        t = track_from_utterance(utt)
        if t is not None:
            out.append(t)
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (saved in the checkpoint and beside the shipped weights)."""

    steps: int = 4000
    batch: int = 24
    crop_s: float = 3.2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    seed: int = 0
    emotion_p: float = 0.5
    babble_p: float = 0.5
    babble_talkers: int = 4  # at most this many other utterances in one babble mix
    band_p: float = 0.3
    eq_p: float = 0.5
    delta_weight: float = 1.0
    viseme_weight: float = 0.2
    gesture_weight: float = 0.3
    checkpoint_every: int = 250
    eval_every: int = 500
    threads: int = 0  # 0: torch's default
    # Exponential moving average of the weights (0: off). The EMA weights are what is evaluated and
    # shipped: single late checkpoints of this model moved real-speech r by +-0.02 from one to the
    # next (the last batches' draw); the average over the last ~1/(1-ema) steps does not.
    ema: float = 0.998

    def __post_init__(self) -> None:
        if not 0.0 <= self.babble_p <= 1.0 or not 1 <= self.babble_talkers <= 16:
            raise ValueError(f"babble_p must be in [0, 1] and babble_talkers 1-16: {self}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.steps < 1 or self.batch < 1 or not 0.4 <= self.crop_s <= 30 or self.lr <= 0:
            raise ValueError(f"bad training settings: {self}")


_CENTERS_HZ = mel_band_edges_hz()[1:-1]
_BAND_WEIGHT = np.diff(mel_band_edges_hz(), 2) / 2.0  # band power ~ value × half the triangle's base


def _with_energy(mel_power: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Feature rows from changed mel powers (T, 80): the energy column moves by the same power ratio."""
    before = np.exp(old[:, :N_MELS].astype(np.float64)) @ _BAND_WEIGHT
    ratio = (mel_power @ _BAND_WEIGHT) / np.maximum(before, 1e-30)
    energy = old[:, N_MELS].astype(np.float64) + np.log(np.maximum(ratio, 1e-30))
    return np.concatenate([np.log(mel_power + EPS), energy[:, None]], axis=1).astype(np.float32)


def mix_babble(
    rows: np.ndarray, tracks: Sequence[Track], rng: np.random.Generator, max_talkers: int = 4
) -> np.ndarray:
    """Rows (T, N_FEATURES) + 1 to ``max_talkers`` other utterances (tiled from random offsets) at
    0-20 dB below the stream's speech level, added as powers."""
    power = np.exp(rows.astype(np.float64))
    level = np.median(np.sort(power[:, N_MELS])[power.shape[0] // 2 :])  # louder half: speech
    babble = np.zeros_like(power)
    for _ in range(int(rng.integers(1, max_talkers + 1))):
        other = tracks[int(rng.integers(len(tracks)))].rows
        idx = (int(rng.integers(other.shape[0])) + np.arange(rows.shape[0])) % other.shape[0]
        op = np.exp(other[idx].astype(np.float64))
        babble += op / max(float(np.median(np.sort(op[:, N_MELS])[op.shape[0] // 2 :])), 1e-20)
    babble *= level * 10.0 ** (-rng.uniform(0.0, 20.0) / 10.0) / max(float(np.mean(babble[:, N_MELS])), 1e-20)
    return np.log(power + babble).astype(np.float32)


def narrow_band(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Attenuate mel bands above 3.3-4 kHz (30-60 dB) and below 100-350 Hz (10-30 dB)."""
    gain = np.ones(N_MELS)
    gain[rng.uniform(3300.0, 4000.0) < _CENTERS_HZ] = 10.0 ** (-rng.uniform(3.0, 6.0))
    gain[rng.uniform(100.0, 350.0) > _CENTERS_HZ] = 10.0 ** (-rng.uniform(1.0, 3.0))
    mel = np.exp(rows[:, :N_MELS].astype(np.float64)) * gain
    return _with_energy(mel, rows)


def random_eq(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth random gain across the mel bands: tilt ±6 dB end to end, two cosine ripples ±3 dB."""
    m = np.linspace(0.0, 1.0, N_MELS)
    gain_db = rng.uniform(-6.0, 6.0) * (m - 0.5)
    for k in (1, 2):
        gain_db += rng.uniform(-3.0, 3.0) * np.cos(
            np.pi * (k + rng.uniform(0.0, 1.0)) * m + rng.uniform(0, np.pi)
        )
    mel = np.exp(rows[:, :N_MELS].astype(np.float64)) * 10.0 ** (gain_db / 10.0)
    return _with_energy(mel, rows)


def make_batch(
    tracks: Sequence[Track],
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    step: int,
) -> dict[str, torch.Tensor]:
    """Batch ``step`` (a pure function of the seed and step; see the module docstring); the rows are
    normalised as ``model_cfg``'s driver normalises them (``LevelNormalizer.for_config``)."""
    rng = np.random.default_rng([cfg.seed, step])
    n_frames = round(cfg.crop_s * FPS)
    lookahead_rows = model_cfg.lookahead_rows
    n_rows = n_frames * ROWS_PER_FRAME + lookahead_rows
    xs, emos = [], []
    mouth, vis, pitch, brow, bmask, fmask = [], [], [], [], [], []
    for _ in range(cfg.batch):
        parts: list[Track] = []
        total = 0
        while total < n_frames + 8 or len(parts) < 2:
            t = tracks[int(rng.integers(len(tracks)))]
            parts.append(t)
            total += t.n_frames
            if len(parts) >= 6:
                break
        rows = np.concatenate([p.rows for p in parts])
        if rng.uniform() < cfg.babble_p:
            rows = mix_babble(rows, tracks, rng, cfg.babble_talkers)
        if rng.uniform() < cfg.band_p:
            rows = narrow_band(rows, rng)
        if rng.uniform() < cfg.eq_p:
            rows = random_eq(rows, rng)
        rows = LevelNormalizer.for_config(model_cfg).push(rows)
        cat = {
            "mouth": np.concatenate([p.mouth for p in parts]),
            "vis": np.concatenate([p.viseme for p in parts]),
            "pitch": np.concatenate([p.pitch for p in parts]),
            "brow": np.concatenate([p.brow for p in parts]),
            "bmask": np.concatenate([np.full(p.n_frames, p.brow_valid, np.float32) for p in parts]),
        }
        # Emotion of the stream: the crop's dominant utterance decides; fed with probability emotion_p.
        f0 = int(rng.integers(0, max(1, total - n_frames)))
        owner = np.concatenate([np.full(p.n_frames, i) for i, p in enumerate(parts)])
        dom = int(np.bincount(owner[f0 : f0 + n_frames]).argmax())
        emo = parts[dom].emotion if rng.uniform() < cfg.emotion_p else np.zeros_like(parts[dom].emotion)
        x = np.zeros((n_rows, rows.shape[1]), np.float32)
        seg = rows[f0 * ROWS_PER_FRAME : f0 * ROWS_PER_FRAME + n_rows]
        x[: seg.shape[0]] = seg
        if seg.shape[0] < n_rows:  # past the end: the floor of normalised silence
            x[seg.shape[0] :] = -20.0
        valid = np.zeros(n_frames, np.float32)
        m = min(n_frames, total - f0)
        valid[:m] = 1.0

        def crop(a: np.ndarray, m: int = m, f0: int = f0) -> np.ndarray:
            out = np.zeros((n_frames, *a.shape[1:]), a.dtype)
            out[:m] = a[f0 : f0 + m]
            return out

        xs.append(x)
        emos.append(emo)
        mouth.append(crop(cat["mouth"]))
        vis.append(crop(cat["vis"]))
        pitch.append(crop(cat["pitch"]))
        brow.append(crop(cat["brow"]))
        bmask.append(crop(cat["bmask"]) * valid)
        fmask.append(valid)
    return {
        "x": torch.from_numpy(np.stack(xs).transpose(0, 2, 1).copy()),
        "emotion": torch.from_numpy(np.stack(emos)),
        "mouth": torch.from_numpy(np.stack(mouth)),
        "viseme": torch.from_numpy(np.stack(vis)),
        "pitch": torch.from_numpy(np.stack(pitch)),
        "brow": torch.from_numpy(np.stack(brow)),
        "brow_mask": torch.from_numpy(np.stack(bmask)),
        "mask": torch.from_numpy(np.stack(fmask)),
    }


def loss_fn(
    net: Audio2MotionNet, batch: dict[str, torch.Tensor], cfg: TrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    y, _ = net(batch["x"], batch["emotion"])
    n_frames = batch["mouth"].shape[1]
    idx = torch.from_numpy(frame_rows(n_frames, ROWS_PER_FRAME, net.config.lookahead_rows))
    y = y[:, :, idx].transpose(1, 2)  # (B, n_frames, N_OUTPUT)
    mask = batch["mask"]
    denom = mask.sum().clamp_min(1.0)
    mouth = torch.sigmoid(y[..., _SLICES["mouth"]])
    l_mouth = (((mouth - batch["mouth"]) ** 2).mean(-1) * mask).sum() / denom
    d_err = torch.diff(mouth, dim=1) - torch.diff(batch["mouth"], dim=1)
    d_mask = mask[:, 1:] * mask[:, :-1]
    l_delta = ((d_err**2).mean(-1) * d_mask).sum() / d_mask.sum().clamp_min(1.0)
    ce = F.cross_entropy(
        y[..., _SLICES["viseme"]].reshape(-1, len(visemes.VISEMES)),
        batch["viseme"].reshape(-1),
        reduction="none",
    ).reshape(mask.shape)
    l_vis = (ce * mask).sum() / denom
    pitch = y[..., _SLICES["pitch"]][..., 0]
    l_pitch = (F.smooth_l1_loss(pitch, batch["pitch"], reduction="none") * mask).sum() / denom
    brow = torch.sigmoid(y[..., _SLICES["brow"]][..., 0])
    bm = batch["brow_mask"]
    l_brow = (((brow - batch["brow"]) ** 2) * bm).sum() / bm.sum().clamp_min(1.0)
    total = (
        (l_mouth + cfg.delta_weight * l_delta) * 10.0
        + cfg.viseme_weight * l_vis
        + cfg.gesture_weight * (0.1 * l_pitch + 10.0 * l_brow)
    )
    parts = {
        k: float(v.detach())
        for k, v in (
            ("mouth", l_mouth),
            ("delta", l_delta),
            ("viseme", l_vis),
            ("pitch", l_pitch),
            ("brow", l_brow),
        )
    }
    return total, parts


# ------------------------------------------------------------------------------------ checkpoints


EMA_PREFIX = "ema."


def save_checkpoint(
    out_dir: Path,
    net: Audio2MotionNet,
    opt: torch.optim.Optimizer,
    step: int,
    info: dict[str, Any],
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """The weights (and, when kept, their moving average under ``ema.``), optimizer and meta."""
    meta = {"step": step, "model": net.config.to_json(), **info}
    tensors = dict(net.state_dict())
    if ema is not None:
        tensors.update({EMA_PREFIX + k: v for k, v in ema.items()})
    return checkpoint.save(out_dir, tensors, opt, meta)


load_checkpoint = checkpoint.load


def _split_ema(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Checkpoint tensors → (weights, their moving average; empty when the run kept none)."""
    weights = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    ema = {k[len(EMA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    return weights, ema


@torch.no_grad()
def _update_ema(ema: dict[str, torch.Tensor], net: Audio2MotionNet, decay: float, step: int) -> None:
    """ema ← d·ema + (1−d)·weights, with d ramped up over the first steps (early weights are noise)."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    for k, v in net.state_dict().items():
        if v.dtype.is_floating_point:
            ema[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
        else:
            ema[k].copy_(v)


def _ema_net(net: Audio2MotionNet, ema: dict[str, torch.Tensor] | None) -> Audio2MotionNet:
    """A copy of the network holding the averaged weights (the network itself when none are kept)."""
    if ema is None:
        return net
    copy = Audio2MotionNet(net.config)
    copy.load_state_dict(ema)
    copy.eval()
    return copy


# ------------------------------------------------------------------------------------ training


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def train(
    data_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    cfg: TrainConfig,
    model_cfg: ModelConfig | None = None,
    *,
    resume: bool = True,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    evaluate: Callable[[MotionModel], dict[str, float]] | None = None,
    log: Callable[[str], None] = print,
) -> MotionModel:
    """Train (or resume) into ``out_dir``; writes the final model there (config.json + safetensors).

    ``data_dir``: one dataset folder or several (their train splits are pooled).

    ``evaluate(model) -> {name: value}`` runs every ``eval_every`` steps (logged into the history).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_load = time.perf_counter()
    dirs = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
    tracks = [t for d in dirs for t in load_tracks(d, "train")]
    if not tracks:
        raise ValueError(f"no training utterances in {data_dir} (split 'train')")
    log(f"loaded {len(tracks)} train utterances in {time.perf_counter() - t_load:.1f} s")
    ckpt = load_checkpoint(out) if resume else None
    if ckpt is not None:
        model_cfg = ModelConfig.from_json(ckpt[2]["model"])
    model_cfg = model_cfg or ModelConfig()
    torch.manual_seed(cfg.seed)
    net = Audio2MotionNet(model_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    history: list[dict[str, Any]] = []
    elapsed = 0.0
    ema: dict[str, torch.Tensor] | None = None
    if cfg.ema > 0:
        ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if ckpt is not None:
        weights, saved_ema = _split_ema(ckpt[0])
        net.load_state_dict(weights)
        if ema is not None:
            ema = {k: v.clone() for k, v in (saved_ema or weights).items()}
        checkpoint.load_optimizer(opt, ckpt[1], ckpt[2]["optimizer"])
        start = int(ckpt[2]["step"])
        history = list(ckpt[2].get("history", []))
        elapsed = float(ckpt[2].get("train_seconds", 0.0))
        log(f"resumed at step {start}")
    data_info = {"data": [str(d) for d in dirs], "train_utterances": len(tracks)}
    t0 = time.perf_counter()
    net.train()
    running: dict[str, float] = {}
    for step in range(start, cfg.steps):
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        batch = make_batch(tracks, cfg, model_cfg, step)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        loss, parts = loss_fn(net, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if ema is not None:
            _update_ema(ema, net, cfg.ema, step)
        for k, v in parts.items():
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        done = step + 1
        if progress is not None:
            progress(done, cfg.steps, running)
        entry: dict[str, Any] | None = None
        if evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            net.eval()
            scores = evaluate(MotionModel(_ema_net(net, ema)))
            net.train()
            entry = {"step": done, **{k: round(v, 4) for k, v in running.items()}, **scores}
            history.append(entry)
            log(json.dumps(entry))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            info = {
                "train": asdict(cfg),
                "history": history,
                "train_seconds": round(elapsed + time.perf_counter() - t0, 1),
                **data_info,
            }
            save_checkpoint(out, net, opt, done, info, ema)
    net.eval()
    model = MotionModel(_ema_net(net, ema))
    total_s = elapsed + time.perf_counter() - t0
    model.save(
        out,
        meta={
            "train": asdict(cfg),
            "history": history,
            "train_seconds": round(total_s, 1),
            "torch": torch.__version__,
            **data_info,
        },
    )
    return model

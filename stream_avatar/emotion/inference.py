"""The emotion stage at run time: load the shipped model, stream audio in, read emotions out.

``EmotionModel``: embedder + bank + discriminator, loaded from ``models/emotion`` (``config.json`` +
``model.safetensors``; the speaker adversary is training-only and not shipped).

``EmotionStream`` (one per stream): 16 kHz audio in any chunks → per-frame audio tokens, read against
the session's speaker baseline when the model was trained with one (``features.SpeakerBaseline``, the
model's ``config.json`` → ``inference`` → ``speaker_baseline``: emotion as a departure from the
speaker's own voice, the baseline kept for the whole session), into a 2 s ring; every
``update_frames`` frames (200 ms) the window is embedded and read through the bank. Until
``MIN_VOICED_FRAMES`` voiced frames are in the window the estimate is neutral (silence says nothing
about emotion), and it stays where it was through pauses. ``estimate`` is the latest ``Estimate``.

``Estimate``: per-emotion probabilities, intensity, the bank's emotion vector; ``weights()`` gives the
FACS-layer weights and ``motion_vector()`` the motion model's 8-dim emotion input in the convention it
was trained with (one-hot × intensity, neutral = zeros). Both show an emotion only when the bank is
confident: the dominant emotion is not neutral and has at least ``CONFIDENT_P`` of the probability;
then it is that emotion at the estimated intensity, else nothing. A spread of small probabilities
would otherwise sum to a grimace of every emotion at once, and a face that shows an emotion the
voice does not carry is worse than a neutral one (the probabilities themselves are reported as they
are, for the page and the rig stream).

``clip_estimates(model, audio)`` runs the same windows on a whole clip at once (tests: streaming ==
whole clip).

The voice prior: the bank is trained on batches that draw the eight emotions equally often, so its
probabilities are posteriors under a uniform prior. Live speech is mostly neutral: estimates from the
voice are re-weighted to the model's ``voice_prior`` (``config.json`` → ``inference`` →
``voice_prior_neutral``, the prior share of neutral; the other seven share the rest equally), the
standard correction for a known shift of the class prior (posterior ∝ trained posterior × new prior
/ training prior). Reference clips (the visual branch) and operator labels are read with the
uniform prior: an operator or a clip chose to show an emotion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_avatar.emotion.facs import EMOTIONS
from stream_avatar.emotion.features import TOKEN_DIM, FrameTokens, SpeakerBaseline, clip_tokens
from stream_avatar.emotion.model import Discriminator, EmotionConfig, EmotionNet

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "emotion"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CONFIDENT_P = 0.8  # real neutral speech (the real-speech set): at 0.5 6.5 % of frames showed one, at 0.8 none
MIN_VOICED_FRAMES = 10  # 0.4 s of voiced speech in the window before the voice's emotion counts
_VOICING = TOKEN_DIM - 1


class MissingModelError(FileNotFoundError):
    """No trained emotion model where one was expected."""


@dataclass(frozen=True)
class Estimate:
    probs: np.ndarray  # (8,) over EMOTIONS, sums to 1
    intensity: float
    vector: np.ndarray  # (latent,) the bank's emotion vector
    mu: np.ndarray  # (latent,) the embedder's mean (identity-free by training; the probe reads it)

    def probabilities(self) -> dict[str, float]:
        return {name: float(p) for name, p in zip(EMOTIONS, self.probs, strict=True)}

    @property
    def shown(self) -> int:
        """Index of the emotion the face shows: the dominant one when confident, else 0 (neutral)."""
        k = int(np.argmax(self.probs))
        return k if k != 0 and float(self.probs[k]) >= CONFIDENT_P else 0

    def weights(self) -> dict[str, float]:
        k = self.shown
        return {EMOTIONS[k]: float(np.clip(self.intensity, 0.0, 1.0))} if k else {}

    def motion_vector(self) -> np.ndarray:
        v = np.zeros(len(EMOTIONS), np.float32)
        k = self.shown
        if k:
            v[k] = np.float32(np.clip(self.intensity, 0.0, 1.0))
        return v

    @property
    def label(self) -> str:
        return EMOTIONS[int(np.argmax(self.probs))]


UNIFORM_NEUTRAL = 1.0 / len(EMOTIONS)  # the training prior: every emotion equally often
# What a trained model's config gets: live speech (a support agent, a presenter, a narrator) is neutral
# about half of the time, the rest any emotion. An assumption about use, not fitted to any test set;
# `eval emotion` reports accuracy and the real-speech figures with both priors.
VOICE_PRIOR_NEUTRAL = 0.5


def prior_with_neutral(neutral: float) -> np.ndarray:
    """(8,) prior over EMOTIONS: ``neutral`` for neutral, the rest shared equally by the other seven."""
    if not 0.0 < neutral < 1.0:
        raise ValueError(f"the prior share of neutral must be in (0, 1), got {neutral}")
    prior = np.full(len(EMOTIONS), (1.0 - neutral) / (len(EMOTIONS) - 1), np.float64)
    prior[0] = neutral
    return prior


def neutral_estimate(latent_dim: int) -> Estimate:
    probs = np.zeros(len(EMOTIONS), np.float32)
    probs[0] = 1.0
    return Estimate(probs, 0.0, np.zeros(latent_dim, np.float32), np.zeros(latent_dim, np.float32))


class EmotionModel:
    def __init__(self, net: EmotionNet, disc: Discriminator, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.disc = disc.eval()
        self.config: EmotionConfig = net.cfg
        self.meta = dict(meta or {})
        inference = self.meta.get("inference") or {}
        self.voice_prior = prior_with_neutral(float(inference.get("voice_prior_neutral", UNIFORM_NEUTRAL)))
        self.baseline_config: dict[str, Any] | None = inference.get("speaker_baseline")
        if self.baseline_config is not None:
            self.new_baseline()  # refuse a malformed one at load, not at a stream's first frame

    def new_baseline(self) -> SpeakerBaseline | None:
        """A fresh speaker baseline (one per session) for a model trained with one, else None."""
        b = self.baseline_config
        if b is None:
            return None
        return SpeakerBaseline(np.asarray(b["mean"]), np.asarray(b["std"]), float(b["prior_frames"]))

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str] | None = None) -> EmotionModel:
        from safetensors.torch import load_file

        folder = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not (cfg_path.is_file() and w_path.is_file()):
            raise MissingModelError(
                f"no emotion model in {folder} (expected {CONFIG_FILE} and {WEIGHTS_FILE}); "
                "train one with `stream-avatar train emotion --data DIR`"
            )
        info = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = EmotionConfig.from_dict(info["model"])
        state = load_file(str(w_path))
        net, disc = EmotionNet(cfg), Discriminator(cfg)
        net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        disc.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("disc.")})
        model = cls(net, disc, {k: v for k, v in info.items() if k != "model"})
        model.warm_up()
        return model

    def warm_up(self) -> None:
        """One dummy estimate per path. torch's first call on a process takes ~0.8 s (kernel and
        allocator set-up); paid at load, it would otherwise stall a live stream's first update."""
        cfg = self.config
        self.estimate_windows(np.zeros((1, cfg.window_frames, cfg.token_dim), np.float32))
        self.estimate_windows(None, np.zeros((1, cfg.window_frames, cfg.rig_dim), np.float32))

    def save(self, model_dir: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(model_dir)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            f"net.{k}": v
            for k, v in self.net.state_dict().items()
            if not k.startswith(EmotionNet.TRAINING_HEADS)
        }
        state.update({f"disc.{k}": v for k, v in self.disc.state_dict().items()})
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(folder / WEIGHTS_FILE))
        info = {"model": self.config.to_dict(), **(meta if meta is not None else self.meta)}
        (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return folder

    # ------------------------------------------------------------------------------- inference

    @torch.inference_mode()
    def estimate_windows(
        self,
        audio: np.ndarray | None,
        rigs: np.ndarray | None = None,
        lengths: Sequence[int] | None = None,
        prior: np.ndarray | None = None,
    ) -> list[Estimate]:
        """Windows (B, L ≤ window, TOKEN_DIM) audio and/or (B, L, RIG) rigs, right-aligned, the last
        ``lengths[i]`` frames valid (default: all) → one Estimate each. ``prior`` (8,): the class
        prior the probabilities are re-weighted to (default: the training prior, uniform)."""
        cfg = self.config
        ref = audio if audio is not None else rigs
        assert ref is not None, "audio or rigs"
        b, t = ref.shape[:2]
        if t > cfg.window_frames:
            raise ValueError(f"windows are at most {cfg.window_frames} frames, got {t}")
        lens = np.asarray(lengths if lengths is not None else [t] * b)
        valid = np.arange(t)[None, :] >= (t - lens)[:, None]
        a = torch.zeros(b, t, cfg.token_dim)
        v = torch.zeros(b, t, cfg.rig_dim)
        am = torch.zeros(b, t, dtype=torch.bool)
        vm = torch.zeros(b, t, dtype=torch.bool)
        if audio is not None:
            a = torch.from_numpy(np.asarray(audio, np.float32))
            am = torch.from_numpy(valid)
        if rigs is not None:
            v = torch.from_numpy(np.asarray(rigs, np.float32))
            vm = torch.from_numpy(valid)
        mu, _ = self.net.embedder(a, am, v, vm)
        out = self.net.bank(mu)
        probs = out.probs.numpy().astype(np.float64)
        if prior is not None:
            probs = probs * (np.asarray(prior, np.float64) * len(EMOTIONS))[None, :]
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        return [
            Estimate(probs[i], float(out.intensity[i]), out.vector[i].numpy().copy(), mu[i].numpy().copy())
            for i in range(b)
        ]

    @torch.inference_mode()
    def operator_estimate(self, weights: Mapping[str, float]) -> Estimate:
        """The bank's reading of an operator's label + intensity (its learned prior), one term or the
        strongest of several."""
        terms = {k: float(v) for k, v in weights.items() if k in EMOTIONS and k != "neutral"}
        name, inten = max(terms.items(), key=lambda kv: kv[1]) if terms else ("neutral", 0.0)
        q = self.net.bank.operator_query(torch.tensor([EMOTIONS.index(name)]), torch.tensor([inten]))
        out = self.net.bank(q)
        probs = out.probs[0].numpy().astype(np.float32)
        return Estimate(
            probs / probs.sum(), float(out.intensity[0]), out.vector[0].numpy().copy(), q[0].numpy().copy()
        )

    @torch.inference_mode()
    def discriminate(self, rig_windows: np.ndarray) -> np.ndarray:
        """(B, T, RIG) rig windows → (B, 8) emotion probabilities from the discriminator."""
        logits = self.disc(torch.from_numpy(np.asarray(rig_windows, np.float32)))
        return torch.softmax(logits, dim=1).numpy()


def _voiced_enough(tokens: np.ndarray) -> bool:
    return int((tokens[:, _VOICING] > 0).sum()) >= MIN_VOICED_FRAMES


class EmotionStream:
    """Causal emotion for one stream (see the module docstring). Not thread-safe: one worker."""

    def __init__(self, model: EmotionModel, prior: np.ndarray | None = None) -> None:
        self.model = model
        self.prior = model.voice_prior if prior is None else np.asarray(prior, np.float64)
        self.window = model.config.window_frames
        self.every = model.config.update_frames
        self.reset()

    def reset(self) -> None:
        self._tokens_src = FrameTokens()
        self.baseline = self.model.new_baseline()
        self._ring = np.zeros((0, TOKEN_DIM), np.float32)
        self._frames = 0
        self.estimate = neutral_estimate(self.model.config.latent_dim)
        self.updates = 0

    def push(self, samples: np.ndarray) -> list[Estimate]:
        """Audio in → the estimate in force at each completed frame (one entry per frame)."""
        tokens = self._tokens_src.push(samples)
        if self.baseline is not None:
            tokens = self.baseline.apply(tokens)
        out: list[Estimate] = []
        for tok in tokens:
            self._ring = np.concatenate([self._ring[-(self.window - 1) :], tok[None]])
            self._frames += 1
            if self._frames % self.every == 0 and _voiced_enough(self._ring):
                self.estimate = self.model.estimate_windows(self._ring[None], prior=self.prior)[0]
                self.updates += 1
            out.append(self.estimate)
        return out


def clip_estimates(
    model: EmotionModel,
    audio: np.ndarray,
    prior: np.ndarray | None = None,
    baseline: SpeakerBaseline | None = None,
) -> list[Estimate]:
    """Offline: the estimate an ``EmotionStream`` (with the same ``prior``; default the model's voice
    prior) holds at every frame of a whole clip. ``baseline``: the session's speaker baseline, moved on
    past the clip (a later clip of the same session continues it); default a fresh one."""
    prior = model.voice_prior if prior is None else np.asarray(prior, np.float64)
    tokens = clip_tokens(audio)
    baseline = baseline if baseline is not None else model.new_baseline()
    if baseline is not None:
        tokens = baseline.apply(tokens)
    cfg = model.config
    ends = [e for e in range(cfg.update_frames, tokens.shape[0] + 1, cfg.update_frames)]
    ends = [e for e in ends if _voiced_enough(tokens[max(0, e - cfg.window_frames) : e])]
    results: dict[int, Estimate] = {}
    for lo in range(0, len(ends), 64):
        group = ends[lo : lo + 64]
        # Same-length windows batch together (attention over a padded window differs in float order).
        by_len: dict[int, list[int]] = {}
        for e in group:
            by_len.setdefault(min(e, cfg.window_frames), []).append(e)
        for length in sorted(by_len):
            es = by_len[length]
            batch = np.stack([tokens[e - length : e] for e in es])
            for e, est in zip(es, model.estimate_windows(batch, prior=prior), strict=True):
                results[e] = est
    current = neutral_estimate(cfg.latent_dim)
    out: list[Estimate] = []
    for f in range(1, tokens.shape[0] + 1):
        current = results.get(f, current)
        out.append(current)
    return out

"""The learned mouth driver: streaming wrapper around ``audio2motion.Audio2MotionNet``.

Three layers (STYLE §10):

- ``LevelNormalizer``: causal loudness normalisation of the feature rows. A peak tracker follows the
  level of loud speech (attack within ~30 ms, decay ``DECAY_DB_PER_S``; a model's config may set
  other rates, ``ModelConfig.peak_attack`` / ``peak_decay_db_per_s``) and every row is expressed
  relative to it. A gain on the input shifts every log-mel value and the tracked peak by the same
  amount, so the model never sees the absolute level (a quiet mic and a loud TTS give the same
  motion). The recursion runs row by row in float64 Python arithmetic, so chunking cannot change it.
  With ``background=True`` (models whose config says so) it also tracks the background level, the
  lower envelope of the energy (falls within ~30 ms, rises ``BACKGROUND_RISE_DB_PER_S``), and appends
  it relative to the peak as one more input column: in a pause under babble or noise the energy
  falls only to that level, in a quiet one to silence, and a row alone cannot tell a pause in
  babble from a quiet consonant.
- ``MotionModel``: the network plus its config, device, ``inference_mode`` and the one loader /
  saver (safetensors weights + ``config.json`` beside them; never unpickles). ``stream(...)`` runs it
  on new rows with the per-block buffers carried, ``run(...)`` on a whole clip.
- ``LearnedMouthDriver``: the engine's driver interface (``push`` 16 kHz audio → one ``MotionFrame``
  per completed video frame, ``clear``, ``flush``). Frame ``k`` (audio samples ``[640k, 640(k+1))``
  at 25 fps) is emitted when ``lookahead_rows`` more 10 ms feature rows have arrived, i.e. with
  ``lookahead_rows * 10`` ms of audio past the frame: that bounded lookahead is the whole delay.

Frame timing: frame ``k``'s motion is the network output at feature row ``(k + 1) * R - 1 + L``
(``R`` rows per frame, ``L`` lookahead rows). Training reads the same rows (``frame_rows``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_avatar.audio.features import HOP, N_FEATURES, N_MELS, SAMPLE_RATE_HZ, FeatureStream
from stream_avatar.audio.io import pcm_to_float32
from stream_avatar.data.visemes import MOUTH_NAMES, VISEMES
from stream_avatar.motion import rig
from stream_avatar.motion.audio2motion import Audio2MotionNet, ModelConfig, output_slices
from stream_avatar.motion.dsp_driver import MotionFrame

__all__ = [
    "DEFAULT_MODEL_DIR",
    "LearnedMouthDriver",
    "LevelNormalizer",
    "ModelNotFoundError",
    "MotionModel",
    "frame_rows",
    "normalize_features",
]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "motion"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

_ENERGY = N_MELS  # column of the log energy in a feature row
_SLICES = output_slices()
_MOUTH_IDX = np.array([rig.index(n) for n in MOUTH_NAMES])
_PITCH = rig.index("headPitch")
_BROW_INNER = rig.index("browInnerUp")
_BROW_OUTER = (rig.index("browOuterUpLeft"), rig.index("browOuterUpRight"))
_SIL = VISEMES.index("sil")


class ModelNotFoundError(FileNotFoundError):
    """No model files where one was expected (message names the folder and how to make one)."""


class LevelNormalizer:
    """Causal level normalisation of feature rows (see the module docstring).

    ``push(rows (n, N_FEATURES)) -> (n, N_FEATURES [+ 1]) float32``: each row minus the tracked peak
    of the log energy (natural-log power units), clipped to ``[FLOOR, CEIL]``; with ``background``
    one more column, the tracked background level minus the peak, clipped to ``[FLOOR, 0]``. State:
    the peak and the background level.
    """

    DECAY_DB_PER_S = 4.0
    ATTACK = 0.3  # share of the gap closed per 10 ms row when louder than the peak (~30 ms)
    FLOOR = -20.0  # ~ -87 dB below the peak: deeper silence carries no information
    CEIL = 6.0
    # The background tracker rises slowly so that a talker's pauses (every 0.2-1 s) keep it down at
    # the level between words, and falls as fast as the peak tracker rises.
    BACKGROUND_RISE_DB_PER_S = 3.0

    def __init__(
        self, background: bool = False, decay_db_per_s: float | None = None, attack: float | None = None
    ) -> None:
        self.background = background
        self.decay_db_per_s = self.DECAY_DB_PER_S if decay_db_per_s is None else float(decay_db_per_s)
        # The peak's attack; the background tracker keeps ATTACK for its fall.
        self.attack = self.ATTACK if attack is None else float(attack)
        self._decay = self.decay_db_per_s * HOP / SAMPLE_RATE_HZ * math.log(10.0) / 10.0
        self._rise = self.BACKGROUND_RISE_DB_PER_S * HOP / SAMPLE_RATE_HZ * math.log(10.0) / 10.0
        self.reset()

    @classmethod
    def for_config(cls, cfg: ModelConfig) -> LevelNormalizer:
        """The normaliser a model with config ``cfg`` was made for (column and peak-tracker rates)."""
        return cls(cfg.background, cfg.peak_decay_db_per_s, cfg.peak_attack)

    @property
    def n_out(self) -> int:
        return N_FEATURES + int(self.background)

    def reset(self) -> None:
        self.peak: float | None = None
        self.floor: float | None = None

    def push(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape[0] == 0:
            return np.zeros((0, self.n_out), np.float32)
        energy = rows[:, _ENERGY].astype(np.float64).tolist()
        peaks = np.empty(len(energy), dtype=np.float64)
        floors = np.empty(len(energy), dtype=np.float64)
        p, f = self.peak, self.floor
        for i, e in enumerate(energy):
            if p is None:
                p = e
            elif e > p:
                p = p + self.attack * (e - p)
            else:
                p = max(e, p - self._decay)
            if f is None:
                f = e
            elif e < f:
                f = f + self.ATTACK * (e - f)
            else:
                f = f + self._rise
            f = min(f, p)
            peaks[i] = p
            floors[i] = f
        self.peak, self.floor = p, f
        out = np.clip(rows.astype(np.float64) - peaks[:, None], self.FLOOR, self.CEIL)
        if self.background:
            bg = np.clip(floors - peaks, self.FLOOR, 0.0)
            out = np.concatenate([out, bg[:, None]], axis=1)
        return out.astype(np.float32)


def normalize_features(rows: np.ndarray, background: bool = False) -> np.ndarray:
    """Offline: a whole clip's feature rows, normalised as a fresh stream would normalise them."""
    return LevelNormalizer(background).push(rows)


def frame_rows(n_frames: int, rows_per_frame: int, lookahead_rows: int) -> np.ndarray:
    """(n_frames,) int: the output row that carries each video frame's motion."""
    return (np.arange(n_frames) + 1) * rows_per_frame - 1 + lookahead_rows


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def _layer_norm(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Over the last axis (channels), as F.layer_norm without affine parameters."""
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    return d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)


class _NumpyStreamer:
    """The network's streaming step in numpy, for the CPU.

    Why by hand: per 40 ms frame the engine runs the net on 4 new rows, and at that size torch's
    per-operator dispatch (~10-90 us each, dozens of operators) costs milliseconds, while the same
    arithmetic as a dozen numpy matmuls on pre-arranged weights costs well under one. Layout here is
    time-major (T, C). It computes exactly what ``Audio2MotionNet.forward`` does (tested against it
    to 1e-4); the state is the same per-block context, stored (context, C).
    """

    def __init__(self, net: Audio2MotionNet) -> None:
        sd = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in net.state_dict().items()}
        self.inp_w, self.inp_b = sd["inp.weight"][:, :, 0].T.copy(), sd["inp.bias"]
        self.out_w, self.out_b = sd["out.weight"][:, :, 0].T.copy(), sd["out.bias"]
        self.blocks = []
        for i, blk in enumerate(net.blocks):
            w = sd[f"blocks.{i}.conv.weight"]  # (C_out, C_in, k) → (k*C_in, C_out), tap-major
            self.blocks.append(
                {
                    "context": blk.context,
                    "dilation": blk.dilation,
                    "k": blk.kernel,
                    "w": w.transpose(2, 1, 0).reshape(-1, w.shape[0]).copy(),
                    "b": sd[f"blocks.{i}.conv.bias"],
                    "film_w": sd[f"blocks.{i}.film.weight"],
                    "film_b": sd[f"blocks.{i}.film.bias"],
                    "proj_w": sd[f"blocks.{i}.proj.weight"][:, :, 0].T.copy(),
                    "proj_b": sd[f"blocks.{i}.proj.bias"],
                }
            )
        self.channels = self.inp_w.shape[1]
        # FiLM scale/shift per emotion vector, computed once per distinct vector. Sessions share one
        # model from several engine threads: entries are only ever added whole (a dict store is atomic),
        # so a reader sees either no entry or a complete one.
        self._film: dict[bytes, list[tuple[np.ndarray, np.ndarray]]] = {}

    def _film_for(self, emotion: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        key = emotion.tobytes()
        film = self._film.get(key)
        if film is None:
            c = self.channels
            film = []
            for b in self.blocks:
                ss = b["film_w"] @ emotion + b["film_b"]
                film.append((1.0 + ss[:c], ss[c:]))
            if len(self._film) >= 256:  # a continuously varying emotion must not grow it forever
                self._film = {}
            self._film[key] = film
        return film

    def zero_state(self) -> list[np.ndarray]:
        return [np.zeros((b["context"], self.channels), np.float32) for b in self.blocks]

    def step(
        self, rows: np.ndarray, emotion: np.ndarray, state: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """rows (T, n_input) → outputs (T, N_OUTPUT), new state."""
        film = self._film_for(np.asarray(emotion, np.float32))
        h = rows @ self.inp_w + self.inp_b
        t = h.shape[0]
        new_state = []
        for b, (scale, shift), st in zip(self.blocks, film, state, strict=True):
            full = np.concatenate([st, _layer_norm(h)], axis=0)
            new_state.append(full[full.shape[0] - b["context"] :])
            d = b["dilation"]
            taps = np.concatenate([full[j * d : j * d + t] for j in range(b["k"])], axis=1)
            z = _gelu_tanh(taps @ b["w"] + b["b"]) * scale + shift
            h = h + z @ b["proj_w"] + b["proj_b"]
        return (_layer_norm(h) @ self.out_w + self.out_b).astype(np.float32), new_state


class MotionModel:
    """The audio-to-motion network with its config, on one device, in inference mode.

    ``stream(rows (T, n_input), emotion (emotion_dim,), state) -> (outputs (T, N_OUTPUT), state)``;
    ``run(rows, emotion)`` is ``stream`` from the zero state. ``decode(outputs)`` turns output rows
    into rig vectors (T, RIG_SIZE), viseme posteriors (T, len(VISEMES)) and speech probabilities (T,).
    """

    def __init__(self, net: Audio2MotionNet, device: str = "cpu", meta: dict[str, Any] | None = None) -> None:
        self.config: ModelConfig = net.config
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.meta = dict(meta or {})
        # CPU streaming runs the numpy step (see _NumpyStreamer); CUDA runs the torch module.
        self._numpy = _NumpyStreamer(self.net) if self.device.type == "cpu" else None
        self._silence: dict[bytes, Any] = {}

    # -- files -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str] | None = None, device: str = "cpu") -> MotionModel:
        """Rebuild from ``config.json`` + ``model.safetensors`` in ``model_dir`` (default: shipped)."""
        from safetensors.torch import load_file

        folder = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise ModelNotFoundError(
                f"no motion model in {folder} (expected {CONFIG_FILE} and {WEIGHTS_FILE}); "
                "train one with `stream-avatar train motion` or use --driver dsp"
            )
        info = json.loads(cfg_path.read_text(encoding="utf-8"))
        config = ModelConfig.from_json(info["model"])
        net = Audio2MotionNet(config)
        state = load_file(str(w_path), device="cpu")
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"weights in {w_path} do not fit the config: missing {missing}, extra {unexpected}"
            )
        return cls(net, device=device, meta={k: v for k, v in info.items() if k != "model"})

    def save(self, model_dir: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (model config + ``meta``) and ``model.safetensors``; returns the folder."""
        from safetensors.torch import save_file

        folder = Path(model_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE))
        info = {"model": self.config.to_json(), **(meta if meta is not None else self.meta)}
        (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return folder

    # -- inference ---------------------------------------------------------------------------------

    def silence_state(self, emotion: np.ndarray | None = None) -> Any:
        """The network's streaming state after a receptive field of silence (normalised rows at the
        floor): where a stream starts. A zero state would stand for rows at the tracked peak level,
        i.e. a loud flat spectrum, and open the mouth for the first frames after a start or an
        interrupt."""
        e = self.neutral_emotion() if emotion is None else np.asarray(emotion, np.float32)
        key = e.tobytes()
        cached = self._silence.get(key)
        if cached is None:
            rows = np.full(
                (self.config.receptive_field_rows, self.config.n_input), LevelNormalizer.FLOOR, np.float32
            )
            _, cached = self.stream(rows, e, None)
            if len(self._silence) >= 64:
                self._silence = {}
            self._silence[key] = cached
        return cached

    def neutral_emotion(self) -> np.ndarray:
        return np.zeros(self.config.emotion_dim, dtype=np.float32)

    def stream(self, rows: np.ndarray, emotion: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """New rows (T, n_input) with the state of the previous call (None at the start)."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape[0] == 0:
            return np.zeros((0, sum(n for _, n in self.config.outputs)), np.float32), state
        if self._numpy is not None:
            return self._numpy.step(rows, emotion, self._numpy.zero_state() if state is None else state)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(rows.T[None])).to(self.device)
            e = torch.from_numpy(np.asarray(emotion, np.float32).reshape(1, -1)).to(self.device)
            y, new_state = self.net(x, e, state)
        return _to_numpy(y[0].T), new_state

    def run(self, rows: np.ndarray, emotion: np.ndarray | None = None) -> np.ndarray:
        """Whole clip of normalised rows (T, n_input) → outputs (T, N_OUTPUT)."""
        out, _ = self.stream(rows, self.neutral_emotion() if emotion is None else emotion, None)
        return out

    @staticmethod
    def decode(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """outputs (T, N_OUTPUT) → rigs (T, RIG_SIZE) float32, visemes (T, 15), speech prob (T,)."""
        outputs = np.asarray(outputs, np.float64)
        n = outputs.shape[0]
        rigs = np.zeros((n, rig.RIG_SIZE), np.float32)
        rigs[:, _MOUTH_IDX] = 1.0 / (1.0 + np.exp(-outputs[:, _SLICES["mouth"]]))
        logits = outputs[:, _SLICES["viseme"]]
        logits = logits - logits.max(axis=1, keepdims=True)
        post = np.exp(logits)
        post /= post.sum(axis=1, keepdims=True)
        rigs[:, _PITCH] = outputs[:, _SLICES["pitch"]][:, 0]
        brow = 1.0 / (1.0 + np.exp(-outputs[:, _SLICES["brow"]][:, 0]))
        rigs[:, _BROW_INNER] = brow
        for i in _BROW_OUTER:
            rigs[:, i] = 0.8 * brow
        return rig.clamp(rigs), post.astype(np.float32), (1.0 - post[:, _SIL]).astype(np.float32)


class LearnedMouthDriver:
    """Causal audio → motion with the learned model (engine ``Driver``; see the module docstring).

    ``push(samples)``: (n,) 16 kHz float32 in [-1, 1] (int16 accepted), any chunking → one
    ``MotionFrame`` per video frame whose lookahead is complete. ``flush()`` (end of input) emits the
    frames still waiting for their lookahead, as if silence followed. ``clear()`` (an interrupt)
    forgets the audio but keeps the tracked speech level, and holds the mouth shut until
    ``INTERRUPT_SPEECH_FRAMES`` consecutive frames are speech again; ``reset()`` forgets everything.
    ``set_emotion(vector)`` sets the (emotion_dim,) conditioning vector (zeros = neutral) for frames
    computed from then on. ``last_visemes`` holds the viseme posterior
    of the frames returned by the last call (for the data channel and tests).
    """

    name = "learned"
    # After an interrupt, audio already in flight (jitter buffers, the network) keeps arriving for a
    # few tens of ms: the mouth stays shut until this many consecutive frames are speech again.
    INTERRUPT_SPEECH_FRAMES = 2

    def __init__(
        self,
        fps: int = 25,
        seed: int = 0,
        model: MotionModel | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
    ) -> None:
        if fps < 1 or SAMPLE_RATE_HZ % fps or (SAMPLE_RATE_HZ // fps) % HOP:
            raise ValueError(f"fps must divide 16000 into whole 10 ms rows (25, 50, 100 ...), got {fps!r}")
        self.fps = fps
        self.seed = seed  # the model is deterministic; kept for the driver interface
        self.model = model if model is not None else MotionModel.load(model_dir, device=device)
        self.rows_per_frame = SAMPLE_RATE_HZ // fps // HOP
        self.lookahead_rows = self.model.config.lookahead_rows
        self._features = FeatureStream()
        self._norm = LevelNormalizer.for_config(self.model.config)
        self._emotion = self.model.neutral_emotion()
        self.last_visemes = np.zeros((0, len(VISEMES)), np.float32)
        self.reset()

    @property
    def lookahead_s(self) -> float:
        return self.lookahead_rows * HOP / SAMPLE_RATE_HZ

    def set_emotion(self, vector: Sequence[float] | np.ndarray) -> None:
        v = np.asarray(vector, np.float32).reshape(-1)
        if v.shape != (self.model.config.emotion_dim,) or not np.isfinite(v).all():
            raise ValueError(f"emotion vector must be {self.model.config.emotion_dim} finite values")
        self._emotion = v

    def reset(self) -> None:
        """Back to the initial state, level tracker included (a new speaker / session)."""
        self._norm.reset()
        self.clear()
        self._gate_closed = False
        self._early_first = False

    def clear(self) -> None:
        """Interrupt: forget the audio (features, network context, pending frames) but keep the
        tracked speech level. The speaker has not changed, and with a fresh tracker the silence or
        comfort noise that follows an interrupt would count as the new peak and read as speech."""
        self._features.reset()
        self._state: Any = self.model.silence_state(self._emotion)
        self._gate_closed = getattr(self, "_rows_seen", 0) > 0  # only after real audio, not at start
        # The first frame after an interrupt is shut by the gate whatever the audio says, so it needs
        # no lookahead: it goes out as soon as its own 40 ms have arrived, and the face closes one
        # frame sooner. The lookahead is taken back before the next frame (one frame period later,
        # inside the pause the interrupt made).
        self._early_first = self._gate_closed and self.lookahead_rows > 0
        self._speech_run = 0
        self._rows_seen = 0
        self._audio_rows = 0
        self._next_frame = 0

    def push(self, samples: np.ndarray) -> list[MotionFrame]:
        x = pcm_to_float32(np.asarray(samples).reshape(-1))
        rows = self._features.push(x)
        self._audio_rows += rows.shape[0]
        return self._consume(rows)

    def flush(self) -> list[MotionFrame]:
        """Frames still waiting for lookahead, completed with silence (call once at end of input)."""
        frames_audio = self._audio_rows // self.rows_per_frame  # padding is not audio
        if self._next_frame >= frames_audio:
            return []
        pad = np.zeros(self.lookahead_rows * HOP, np.float32)
        rows = self._features.push(pad)
        out = self._consume(rows, limit=frames_audio)
        return out

    def _consume(self, rows: np.ndarray, limit: int | None = None) -> list[MotionFrame]:
        if rows.shape[0] == 0:
            self.last_visemes = np.zeros((0, len(VISEMES)), np.float32)
            return []
        normed = self._norm.push(rows)
        outputs, self._state = self.model.stream(normed, self._emotion, self._state)
        first_row = self._rows_seen
        self._rows_seen += rows.shape[0]
        # Frame k is read at row (k + 1) * R - 1 + L; collect every such row inside this batch.
        r, la = self.rows_per_frame, self.lookahead_rows
        k_end = (self._rows_seen - la) // r  # frames whose read row has arrived
        early = self._early_first and self._next_frame == 0
        if early and self._rows_seen >= r:
            k_end = max(k_end, 1)
        if limit is not None:
            k_end = min(k_end, limit)
        ks = np.arange(self._next_frame, max(self._next_frame, k_end))
        if ks.size == 0:
            self.last_visemes = np.zeros((0, len(VISEMES)), np.float32)
            return []
        local = (ks + 1) * r - 1 + la - first_row
        if early:
            local[0] -= la  # read at the frame's own last row (see clear())
        rigs, post, speech = self.model.decode(outputs[local])
        self._next_frame = int(ks[-1]) + 1
        self.last_visemes = post
        talking = speech > 0.5
        if self._gate_closed:
            for i in range(ks.size):
                self._speech_run = self._speech_run + 1 if talking[i] else 0
                if self._speech_run >= self.INTERRUPT_SPEECH_FRAMES:
                    self._gate_closed = False
                    break
                rigs[i] = 0.0
                talking[i] = False
        return [MotionFrame(rig=rigs[i], speaking=bool(talking[i])) for i in range(ks.size)]

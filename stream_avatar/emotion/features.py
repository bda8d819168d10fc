"""Per-frame audio tokens for the emotion embedder: what a 40 ms frame says about *how* it is spoken.

One token per video frame (25 fps), computed causally from that frame's audio and the stream so far:

- the spectral envelope: the 80 log-mel bands of the frame's four 10 ms rows, level-normalised by the
  motion driver's causal peak tracker (``LevelNormalizer``: no dependence on absolute level), pooled
  into 20 bands and averaged over the rows;
- loudness: the rows' mean normalised log energy and its range inside the frame (attack, effort);
- pitch: log2 of f0 re 150 Hz and a voicing strength from a YIN-style normalised difference function
  over the last 60 ms (50–400 Hz; ``_pitch``), 0 / 0 when unvoiced. Emotion is carried by pitch level,
  range and movement; the embedder sees them as a 2 s sequence and the speaker classifier behind
  gradient reversal keeps the speaker's own pitch out of the embedding.

``FrameTokens`` is the streaming form; ``clip_tokens`` runs the same code on a whole clip.
"""

from __future__ import annotations

import numpy as np

from stream_avatar.audio.features import HOP, N_MELS, SAMPLE_RATE_HZ, FeatureStream, extract_features
from stream_avatar.audio.io import pcm_to_float32
from stream_avatar.motion.learned import LevelNormalizer

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE_HZ // FPS
ROWS_PER_FRAME = SAMPLES_PER_FRAME // HOP
BANDS = 20
TOKEN_DIM = BANDS + 4  # bands, energy mean, energy range, log2 f0 re 150 Hz, voicing
_PITCH_WIN = 960  # 60 ms: the 40 ms integration window + the longest lag (20 ms, 50 Hz)
_LAG_MIN, _LAG_MAX = SAMPLE_RATE_HZ // 400, SAMPLE_RATE_HZ // 50
_INTEGRATE = _PITCH_WIN - _LAG_MAX  # samples compared at each lag
_THRESHOLD = 0.15  # the first dip of the normalised difference below this is the period
_UNVOICED = 0.3  # no dip below this anywhere: not voiced
_NFFT = 2048


def _pitch(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, _PITCH_WIN) → (log2 f0 / 150 Hz, voicing) per window; zeros where unvoiced or silent.

    The cumulative-mean-normalised difference function of de Cheveigné & Kawahara (2002, "YIN"): the
    period is the first lag whose normalised difference dips under a threshold, so a multiple of the
    period (a sub-octave) or a formant's half period cannot win the way they do with a plain
    autocorrelation peak. Voicing strength is 1 minus the dip. Written here because the maintained
    trackers (librosa's pyin, crepe) run on whole clips, too slowly for one call per 40 ms frame."""
    x = windows - windows.mean(axis=1, keepdims=True)
    n = x.shape[0]
    head = x[:, :_INTEGRATE]
    # r(tau) = sum_j x_j x_{j+tau} over the integration window, all lags at once through the FFT.
    spec = np.fft.rfft(x, _NFFT, axis=1) * np.conj(np.fft.rfft(head, _NFFT, axis=1))
    r = np.fft.irfft(spec, _NFFT, axis=1)[:, : _LAG_MAX + 1]
    sq = np.concatenate([np.zeros((n, 1)), np.cumsum(x * x, axis=1)], axis=1)
    e0 = sq[:, _INTEGRATE : _INTEGRATE + 1]
    lags = np.arange(_LAG_MAX + 1)
    e_tau = sq[:, lags + _INTEGRATE] - sq[:, lags]
    d = np.maximum(e0 + e_tau - 2.0 * r, 0.0)
    d[:, 0] = 0.0
    cum = np.cumsum(d[:, 1:], axis=1)
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] * lags[1:][None, :] / np.maximum(cum, 1e-12)
    seg = cmnd[:, _LAG_MIN : _LAG_MAX + 1]
    m = seg.shape[1]
    local = np.zeros_like(seg, dtype=bool)
    local[:, 1:-1] = (seg[:, 1:-1] <= seg[:, :-2]) & (seg[:, 1:-1] <= seg[:, 2:])
    under = local & (seg < _THRESHOLD)
    first = np.argmax(under, axis=1)
    # No dip under the threshold: the deepest local dip (never the range's edge, where a falling
    # curve would end), voiced only if it is deep enough.
    best = np.where(under.any(axis=1), first, np.argmin(np.where(local, seg, np.inf), axis=1))
    rows = np.arange(n)
    dip = np.where(local.any(axis=1), seg[rows, best], 1.0)
    # Parabolic refinement of the dip (sub-sample lag).
    a = seg[rows, np.clip(best - 1, 0, m - 1)]
    c = seg[rows, np.clip(best + 1, 0, m - 1)]
    den = a - 2.0 * dip + c
    inner = (best > 0) & (best < m - 1) & (np.abs(den) > 1e-12)
    shift = np.where(inner, 0.5 * (a - c) / np.where(inner, den, 1.0), 0.0)
    lag = best + _LAG_MIN + np.clip(shift, -0.5, 0.5)
    voiced = (dip < _UNVOICED) & (e0[:, 0] > 1e-7 * _INTEGRATE)
    logf0 = np.where(voiced, np.log2(SAMPLE_RATE_HZ / lag / 150.0), 0.0)
    voicing = np.where(voiced, np.clip(1.0 - dip, 0.0, 1.0), 0.0)
    return logf0.astype(np.float32), voicing.astype(np.float32)


def _tokens(norm_rows: np.ndarray, audio_tail: np.ndarray) -> np.ndarray:
    """(n * ROWS_PER_FRAME, N_FEATURES) normalised rows + (n, _PITCH_WIN) windows → (n, TOKEN_DIM)."""
    n = audio_tail.shape[0]
    rows = norm_rows.reshape(n, ROWS_PER_FRAME, -1)
    mel = rows[:, :, :N_MELS].reshape(n, ROWS_PER_FRAME, BANDS, N_MELS // BANDS).mean(axis=(1, 3))
    energy = rows[:, :, N_MELS]
    logf0, voicing = _pitch(audio_tail.astype(np.float64))
    out = np.empty((n, TOKEN_DIM), np.float32)
    out[:, :BANDS] = mel / 10.0
    out[:, BANDS] = energy.mean(axis=1) / 10.0
    out[:, BANDS + 1] = (energy.max(axis=1) - energy.min(axis=1)) / 10.0
    out[:, BANDS + 2] = logf0
    out[:, BANDS + 3] = voicing
    return out


class FrameTokens:
    """Streaming: 16 kHz audio in any chunks → one token per completed 40 ms frame."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._features = FeatureStream()
        self._norm = LevelNormalizer()
        self._rows = np.zeros((0, N_MELS + 1), np.float32)
        self._audio = np.zeros(_PITCH_WIN, np.float32)  # the last samples (zeros before the start)
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = pcm_to_float32(np.asarray(samples).reshape(-1))
        rows = self._norm.push(self._features.push(x))
        self._rows = np.concatenate([self._rows, rows]) if self._rows.size else rows
        self._pending = np.concatenate([self._pending, x])
        n = min(self._rows.shape[0] // ROWS_PER_FRAME, self._pending.size // SAMPLES_PER_FRAME)
        if n == 0:
            return np.zeros((0, TOKEN_DIM), np.float32)
        audio = np.concatenate([self._audio, self._pending[: n * SAMPLES_PER_FRAME]])
        ends = _PITCH_WIN + SAMPLES_PER_FRAME * np.arange(1, n + 1)
        windows = np.stack([audio[e - _PITCH_WIN : e] for e in ends])
        out = _tokens(self._rows[: n * ROWS_PER_FRAME], windows)
        self._rows = self._rows[n * ROWS_PER_FRAME :]
        self._audio = audio[-_PITCH_WIN:]
        self._pending = self._pending[n * SAMPLES_PER_FRAME :]
        return out


def clip_tokens(audio: np.ndarray) -> np.ndarray:
    """Offline: a whole 16 kHz clip → (frames, TOKEN_DIM), the tokens ``FrameTokens`` emits for it."""
    x = pcm_to_float32(np.asarray(audio).reshape(-1))
    return tokens_from_rows(extract_features(x), x)


def tokens_from_rows(rows: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """Tokens from already-extracted feature rows (e.g. a dataset's stored rows) and the clip's audio."""
    norm = LevelNormalizer().push(np.asarray(rows, np.float32))
    x = np.asarray(audio, np.float32).reshape(-1)
    n = min(norm.shape[0] // ROWS_PER_FRAME, x.size // SAMPLES_PER_FRAME)
    if n == 0:
        return np.zeros((0, TOKEN_DIM), np.float32)
    padded = np.concatenate([np.zeros(_PITCH_WIN, np.float32), x])
    ends = _PITCH_WIN + SAMPLES_PER_FRAME * np.arange(1, n + 1)
    windows = np.stack([padded[e - _PITCH_WIN : e] for e in ends])
    return _tokens(norm[: n * ROWS_PER_FRAME], windows)


# ----------------------------------------------------------------------------- the speaker's baseline

# The token columns that carry who is speaking as much as how: the spectral envelope (timbre, the
# microphone) and the pitch level. Loudness is already relative (the peak tracker), voicing is not
# personal.
BASELINE_COLUMNS = np.array([*range(BANDS), BANDS + 2])
_VOICED = BANDS + 3


class SpeakerBaseline:
    """Emotion as a departure from the speaker's own voice: a session's running statistics.

    Emotion in speech is heard against the speaker's habitual voice (a high voice is not a happy one;
    a bright microphone is not an angry speaker). The baseline is the running mean and spread of the
    session's voiced tokens in ``BASELINE_COLUMNS``, started from the training population's statistics
    with the weight of ``prior_frames`` voiced frames; every token is mapped through the speaker's
    statistics onto the population's before the embedder sees it (``(x - m) / s * s_pop + m_pop``;
    pitch only where voiced). Each frame is normalised with the statistics of the frames before it,
    so streaming in any chunks equals a whole clip. One per session (one speaker): it lives across
    utterances and interrupts, and starts again with ``reset``.

    Written here because what it does is a running mean and variance with a prior count (two
    cumulative sums); a library would add nothing."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, prior_frames: float) -> None:
        self.mean = np.asarray(mean, np.float64).reshape(-1)
        self.std = np.asarray(std, np.float64).reshape(-1)
        if self.mean.shape != (BASELINE_COLUMNS.size,) or self.std.shape != self.mean.shape:
            raise ValueError(f"baseline statistics need {BASELINE_COLUMNS.size} values each")
        if not np.all(self.std > 0) or not prior_frames > 0:
            raise ValueError("baseline spreads and the prior weight must be positive")
        self.prior_frames = float(prior_frames)
        self.reset()

    def reset(self) -> None:
        n = self.prior_frames
        self.count = n
        self.s1 = n * self.mean
        self.s2 = n * (self.std**2 + self.mean**2)

    def add(self, count: float, s1: np.ndarray, s2: np.ndarray) -> None:
        """Fold in statistics heard before (``voiced_sums`` of earlier speech of the same speaker)."""
        self.count += float(count)
        self.s1 = self.s1 + s1
        self.s2 = self.s2 + s2

    def apply(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens in stream order → the same tokens normalised; the statistics move on past them."""
        out = np.array(tokens, np.float32)
        if out.shape[0] == 0:
            return out
        x = out[:, BASELINE_COLUMNS].astype(np.float64)
        voiced = out[:, _VOICED] > 0
        inc1 = x * voiced[:, None]
        inc2 = inc1 * inc1
        n: float | np.ndarray
        if out.shape[0] == 1:  # a stream's usual call: one frame, no running sums needed
            s1, s2, n = self.s1, self.s2, self.count
        else:  # statistics before each frame: the state + this chunk's voiced frames before it
            s1 = self.s1 + (np.cumsum(inc1, axis=0) - inc1)
            s2 = self.s2 + (np.cumsum(inc2, axis=0) - inc2)
            n = self.count + (np.cumsum(voiced) - voiced)[:, None]
        m = s1 / n
        var = np.maximum(s2 / n - m * m, 1e-4 * self.std**2)
        z = (x - m) / np.sqrt(var) * self.std + self.mean
        out[:, BASELINE_COLUMNS] = z
        out[~voiced, BANDS + 2] = 0.0
        self.count += float(voiced.sum())
        self.s1 = self.s1 + inc1.sum(axis=0)
        self.s2 = self.s2 + inc2.sum(axis=0)
        return out


def voiced_sums(tokens: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(count, Σx, Σx²) of the voiced frames' ``BASELINE_COLUMNS``: a clip's share of a baseline."""
    t = np.asarray(tokens)
    x = t[t[:, _VOICED] > 0][:, BASELINE_COLUMNS].astype(np.float64)
    return float(x.shape[0]), x.sum(axis=0), (x * x).sum(axis=0)

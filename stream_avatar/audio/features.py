"""Causal log-mel + log-energy features at 100 Hz, identical streaming and offline.

Frame ``i`` (0-based) covers the 25 ms window of samples ``[(i + 1) * HOP - WIN, (i + 1) * HOP)``: it
ends exactly at the end of hop ``i``, so a frame is emitted as soon as its hop is complete and never
looks ahead. Samples before the stream start are zeros. Each row is ``N_MELS`` natural-log mel band
values followed by the natural-log mean-square energy of the window::

    row = [log(mel_0 + EPS), ..., log(mel_79 + EPS), log(mean(x_window ** 2) + EPS)]

Spectrum: periodic Hann window of 400 samples, zero-padded to a 512-point FFT, power ``|X|**2``;
mel bands: 80 Slaney-scale triangles over 0-8000 Hz with Slaney area normalisation (each band is the
average power density over its triangle), the convention Whisper and librosa use by default.

The filterbank is written here (a dozen lines) instead of importing librosa or torchaudio: librosa
drags numba/llvmlite into the runtime image and torchaudio would tie the audio front end to the torch
build; the formulas are standard (Slaney 1998, Auditory Toolbox) and tested for non-empty bands.
"""

from __future__ import annotations

import numpy as np

from stream_avatar.audio.io import pcm_to_float32

__all__ = [
    "EPS",
    "HOP",
    "N_FEATURES",
    "N_FFT",
    "N_MELS",
    "SAMPLE_RATE_HZ",
    "WIN",
    "FeatureStream",
    "extract_features",
    "mel_band_edges_hz",
    "mel_filterbank",
]

SAMPLE_RATE_HZ: int = 16000
HOP: int = 160  # 10 ms -> 100 frames per second
WIN: int = 400  # 25 ms analysis window
N_FFT: int = 512
N_MELS: int = 80
N_FEATURES: int = N_MELS + 1  # log-mel bands + log energy
EPS: float = 1e-10  # floor inside the logs: exact digital silence maps to log(1e-10) ~ -23.0

_F_SP = 200.0 / 3.0  # Slaney: linear region, Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    lin = f / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(f >= _MIN_LOG_HZ, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = m * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOG_STEP * (m - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log, lin)


def mel_band_edges_hz(n_mels: int = N_MELS, fmin_hz: float = 0.0, fmax_hz: float = 8000.0) -> np.ndarray:
    """(n_mels + 2,) float64 Hz: band ``k`` rises from edge k, peaks at edge k+1, falls to edge k+2."""
    mels = np.linspace(_hz_to_mel(np.array(fmin_hz)), _hz_to_mel(np.array(fmax_hz)), n_mels + 2)
    return _mel_to_hz(mels)


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    fmin_hz: float = 0.0,
    fmax_hz: float = 8000.0,
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float64 triangular weights on the rfft bins, Slaney area-normalised."""
    edges = mel_band_edges_hz(n_mels, fmin_hz, fmax_hz)
    bins_hz = np.arange(n_fft // 2 + 1, dtype=np.float64) * sample_rate_hz / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz[None, :] - lo) / (mid - lo)
    falling = (hi - bins_hz[None, :]) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Area normalisation: a band's value is the mean power density under it, so wide high bands are not
    # louder than narrow low ones just because they span more bins.
    return weights * (2.0 / (hi - lo))


_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN) / WIN)  # periodic Hann


def _sparse_filterbank() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filterbank as (bin indices, weights, band start offsets) of its contiguous non-zero runs.

    Each triangle touches only a few bins (about 2 * 257 non-zeros in total), so a gather plus a
    segmented sum is cheaper than a dense (257, 80) product. It is also reproducible: BLAS picks
    different kernels (and summation orders) for different row counts, which would make the streaming
    result depend on how the audio was chunked; ``np.add.reduceat`` sums each band in bin order.
    """
    fb = mel_filterbank()
    cols: list[np.ndarray] = []
    starts: list[int] = []
    n = 0
    for row in fb:
        nz = np.flatnonzero(row)
        idx = np.arange(nz[0], nz[-1] + 1) if nz.size else np.array([0])
        starts.append(n)
        cols.append(idx)
        n += idx.size
    col = np.concatenate(cols)
    weights = np.concatenate([fb[k, c] for k, c in enumerate(cols)])
    return col, weights, np.asarray(starts, dtype=np.intp)


_FB_COLS, _FB_WEIGHTS, _FB_STARTS = _sparse_filterbank()


def _frames_to_features(frames: np.ndarray) -> np.ndarray:
    """(n, WIN) float64 windows -> (n, N_FEATURES) float32 rows."""
    spec = np.fft.rfft(frames * _WINDOW, n=N_FFT, axis=-1)
    power = spec.real**2 + spec.imag**2
    out = np.empty((frames.shape[0], N_FEATURES), dtype=np.float64)
    out[:, :N_MELS] = np.add.reduceat(power[:, _FB_COLS] * _FB_WEIGHTS, _FB_STARTS, axis=1)
    out[:, N_MELS] = np.add.reduce(frames * frames, axis=-1) * (1.0 / WIN)
    return np.log(out + EPS).astype(np.float32)


class FeatureStream:
    """Push 16 kHz mono audio in any chunking; get every newly completed 10 ms feature row.

    ``push(samples)`` takes (n,) float32 in [-1, 1] at 16 kHz (int16 is accepted and scaled) and
    returns (n_frames, N_FEATURES) float32, where n_frames is the number of hops completed by these
    samples (0 for a short chunk). ``frames_emitted`` counts rows so far; row i ends at sample
    (i + 1) * HOP of the stream.
    """

    def __init__(self) -> None:
        self.frames_emitted = 0
        self._buf = np.zeros(WIN - HOP, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget all audio (partial hop included); the next push starts a new stream."""
        self.frames_emitted = 0
        self._buf = np.zeros(WIN - HOP, dtype=np.float64)  # left context: zeros before the stream

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = pcm_to_float32(np.asarray(samples).reshape(-1))
        buf = np.concatenate([self._buf, x]) if x.size else self._buf  # float64: the buffer's dtype
        n = (buf.shape[0] - WIN) // HOP + 1 if buf.shape[0] >= WIN else 0
        if n == 0:
            self._buf = buf
            return np.zeros((0, N_FEATURES), dtype=np.float32)
        # Read-only strided view of the n overlapping windows (no copy); buf stays alive meanwhile.
        windows = np.lib.stride_tricks.as_strided(
            buf, shape=(n, WIN), strides=(HOP * buf.strides[0], buf.strides[0]), writeable=False
        )
        feats = _frames_to_features(windows)
        self._buf = buf[n * HOP :].copy()
        self.frames_emitted += n
        return feats


def extract_features(samples16k: np.ndarray) -> np.ndarray:
    """Offline: (n,) 16 kHz mono -> (n // HOP, N_FEATURES) float32, the rows a FeatureStream emits."""
    return FeatureStream().push(samples16k)

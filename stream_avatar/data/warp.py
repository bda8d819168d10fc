"""Speaker warps that keep the phone timing: pitch shift, vocal-tract-length (formant) warp, tempo.

A few recorded voices become many "speakers" by changing what differs most between real talkers:
the pitch (F0) and the vocal-tract length, which scales all formants together (a shorter tract, as
in women and children, raises them; Lee, Potamianos & Narayanan 1999 measure ~15-20 % between adult
men and women).

Method. sox's ``pitch`` (a WSOLA stretch plus resampling) moves the whole spectrum, formants included,
and ``speed`` (resampling) moves pitch and formants together too, so no sox chain changes one without
the other. Hence two steps:

1. sox (one call, raw float32 through pipes, ``-D``: no dither, so deterministic): ``tempo -s t``
   (WSOLA: duration / t, spectrum and pitch kept) then ``pitch c`` with ``c = pitch_cents``. After it
   pitch AND formants are up by ``r = 2 ** (c / 1200)``.
2. Formants moved to ``vtl_factor`` in numpy: per STFT frame (64 ms, hop 16 ms) the spectral envelope
   is the liftered real cepstrum (first 32 quefrency bins = 2 ms, below any voice's pitch period), and
   the magnitude is multiplied by ``env(f / b) / env(f)`` with ``b = vtl_factor / r``: the harmonics
   (pitch) stay, the envelope (formants, i.e. the vocal tract) scales by ``b``. Phases are kept.

The result is cut or zero-padded to exactly ``round(n / tempo)`` samples and ``time_scale`` =
that / n is returned, exactly as ``augment.change_speed`` does, so callers scale phone times by it.
WSOLA keeps local timing within its search window (sox ``tempo -s``: 82 ms segments, ±14 ms search),
so a phone boundary moves by at most ~15 ms relative to the exact linear scaling; the STFT step
changes no timing.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "PITCH_CENTS_RANGE",
    "TEMPO_RANGE",
    "VTL_RANGE",
    "Warp",
    "apply_warp",
    "formant_shift",
    "random_warp",
]

PITCH_CENTS_RANGE = (-500.0, 500.0)
VTL_RANGE = (0.8, 1.25)
TEMPO_RANGE = (0.7, 1.4)
SOX_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Warp:
    """``pitch_cents`` net F0 change, ``vtl_factor`` formant scale (> 1: shorter tract, higher
    formants), ``tempo`` speaking-rate factor (> 1: faster, shorter)."""

    pitch_cents: float = 0.0
    vtl_factor: float = 1.0
    tempo: float = 1.0

    def __post_init__(self) -> None:
        for name, value, (lo, hi) in (
            ("pitch_cents", self.pitch_cents, PITCH_CENTS_RANGE),
            ("vtl_factor", self.vtl_factor, VTL_RANGE),
            ("tempo", self.tempo, TEMPO_RANGE),
        ):
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be within [{lo}, {hi}], got {value}")

    @property
    def identity(self) -> bool:
        return self.pitch_cents == 0.0 and self.vtl_factor == 1.0 and self.tempo == 1.0

    def combined(self, pitch_cents: float = 0.0, tempo: float = 1.0) -> Warp:
        """This warp with an extra pitch change and tempo factor (clipped to the allowed ranges)."""
        return Warp(
            pitch_cents=round(float(np.clip(self.pitch_cents + pitch_cents, *PITCH_CENTS_RANGE)), 1),
            vtl_factor=self.vtl_factor,
            tempo=round(float(np.clip(self.tempo * tempo, *TEMPO_RANGE)), 4),
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def random_warp(rng: np.random.Generator, gender: str) -> Warp:
    """A plausible other speaker of the same voice: pitch ±4 semitones, formants ±10 %, rate ±10 %.

    Pitch and tract length move together on average (taller speakers have both lower), with spread.
    """
    vtl = float(np.clip(math.exp(rng.normal(0.0, 0.06)), 0.88, 1.13))
    pitch = 1200.0 * math.log2(vtl) * 1.5 + rng.normal(0.0, 150.0)
    if gender == "m":  # male base voices shifted up less far than down (they stay plausible)
        pitch = min(pitch, 300.0)
    return Warp(
        pitch_cents=round(float(np.clip(pitch, -400.0, 400.0)), 1),
        vtl_factor=round(vtl, 4),
        tempo=round(float(np.clip(math.exp(rng.normal(0.0, 0.06)), 0.88, 1.13)), 4),
    )


def _sox() -> str:
    path = shutil.which("sox")
    if path is None:
        raise RuntimeError("sox not found: install the Debian package sox (needed for speaker warps)")
    return path


def apply_warp(samples: np.ndarray, warp: Warp, sample_rate_hz: int = 16000) -> tuple[np.ndarray, float]:
    """Warp (n,) float32 mono audio. Returns (float32 (m,), time_scale) with m = round(n / tempo) and
    time_scale = m / n (multiply phone times by it)."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    n = x.shape[0]
    if warp.identity or n == 0:
        return x.copy(), 1.0
    raw = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-r", str(sample_rate_hz)]
    effects = []
    if warp.tempo != 1.0:
        effects += ["tempo", "-s", f"{warp.tempo:.6f}"]
    if warp.pitch_cents != 0.0:
        effects += ["pitch", f"{warp.pitch_cents:.3f}"]
    y = x
    if effects:
        cmd = [_sox(), "-D", "-V1", *raw, "-", *raw, "-", *effects, "rate", "-h", str(sample_rate_hz)]
        try:
            proc = subprocess.run(
                cmd, input=x.tobytes(), capture_output=True, timeout=SOX_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"sox did not finish within {SOX_TIMEOUT_S:.0f} s") from exc
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")[-400:]
            raise RuntimeError(f"sox failed (exit {proc.returncode}): {err}")
        y = np.frombuffer(proc.stdout, np.float32)
    m = round(n / warp.tempo)
    out = np.zeros(m, np.float32)
    out[: min(m, y.size)] = y[:m]
    beta = warp.vtl_factor / 2.0 ** (warp.pitch_cents / 1200.0)
    if abs(beta - 1.0) > 1e-6:
        out = formant_shift(out, beta)
    return np.clip(out, -1.0, 1.0), m / n


N_FFT, HOP, N_CEPSTRUM = 1024, 256, 32


def formant_shift(samples: np.ndarray, factor: float) -> np.ndarray:
    """Scale the spectral envelope's frequency axis by ``factor`` keeping pitch and length (see above).

    (n,) float32 → (n,) float32."""
    from scipy.signal import istft, stft

    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[0]
    if n < N_FFT:
        return x.astype(np.float32)
    _, _, z = stft(x, nperseg=N_FFT, noverlap=N_FFT - HOP, window="hann")
    log_mag = np.log(np.abs(z) + 1e-9)  # (bins, frames)
    cep = np.fft.irfft(log_mag, axis=0)
    cep[N_CEPSTRUM : cep.shape[0] - N_CEPSTRUM + 1] = 0.0
    env = np.fft.rfft(cep, axis=0).real[: z.shape[0]]
    bins = np.arange(z.shape[0], dtype=np.float64) / factor  # env_new(f) = env(f / factor)
    lo = np.clip(np.floor(bins).astype(int), 0, z.shape[0] - 1)
    hi = np.clip(lo + 1, 0, z.shape[0] - 1)
    frac = np.clip(bins - lo, 0.0, 1.0)[:, None]
    warped = (1.0 - frac) * env[lo] + frac * env[hi]
    gain = np.exp(np.clip(warped - env, -6.0, 6.0))  # at most ±52 dB per bin
    _, y = istft(z * gain, nperseg=N_FFT, noverlap=N_FFT - HOP, window="hann")
    out = np.zeros(n)
    out[: min(n, y.shape[0])] = y[:n]
    return out.astype(np.float32)

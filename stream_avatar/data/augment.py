"""Speech augmentation for training data: what microphones, rooms and WebRTC do to clean audio.

The synthetic training speech (espeak-ng) is studio-clean; the engine hears laptop microphones in
rooms, through Opus at whatever bitrate the network allows. Each transform here models one of those
stages on 16 kHz mono float32 audio in [-1, 1]:

- ``change_speed``: tape-style speed change (tempo and pitch together) by resampling; it changes
  timing, so it returns ``time_scale`` (new duration / old duration) for the caller to rescale phoneme
  timelines and per-frame mouth targets. A pitch shift without tempo change is not provided (it needs
  a phase vocoder or PSOLA, and the mouth does not care about pitch alone).
- ``reverberate``: a synthetic room impulse response (direct path at tap 0, a few early reflections,
  exponentially decaying noise with a given RT60), FFT-convolved, level-normalised; no delay is added.
- ``band_limit``: telephone band or random low/high-pass, zero-phase Butterworth (no time shift).
- ``add_noise``: white, pink, brown, mains hum or caller-supplied babble at an SNR against the active
  speech level.
- ``apply_gain``: a gain in dB, then a memoryless soft limiter, or hard clipping at full scale.
- ``opus_round_trip``: libopus encode/decode at 48 kHz with 20 ms frames through PyAV, realigned and
  trimmed so that sample ``i`` of the output is sample ``i`` of the input.

Every transform keeps the length of its input except ``change_speed``. Parameters are explicit
arguments; the stochastic parts of a transform (the noise realisation, the impulse response) come from
a caller's ``numpy.random.Generator``, and ``augment`` draws the parameters themselves from an
``AugmentConfig`` with the same generator, so one seed reproduces one augmented utterance exactly.

scipy (the ``train`` extra) is imported inside the functions that need it so that importing this
module, or the runtime engine, never requires it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np

from stream_avatar.audio.resample import MAX_RATE_HZ, MIN_RATE_HZ, resample

__all__ = [
    "BAND_KINDS",
    "CHAIN_ORDER",
    "NOISE_KINDS",
    "OPUS_RATE_HZ",
    "SAMPLE_RATE_HZ",
    "TELEPHONE_BAND_HZ",
    "AugmentConfig",
    "Augmented",
    "active_rms",
    "add_noise",
    "apply_gain",
    "augment",
    "band_limit",
    "change_speed",
    "convolve_rir",
    "make_noise",
    "opus_round_trip",
    "reverberate",
    "room_impulse_response",
    "soft_limit",
]

SAMPLE_RATE_HZ: int = 16000
OPUS_RATE_HZ: int = 48000  # what a browser's WebRTC stack captures and encodes at
OPUS_FRAME_MS: int = 20  # WebRTC's default Opus packet duration
TELEPHONE_BAND_HZ: tuple[float, float] = (300.0, 3400.0)  # ITU-T G.712 narrowband channel
NOISE_KINDS: tuple[str, ...] = ("white", "pink", "brown", "hum", "babble")
BAND_KINDS: tuple[str, ...] = ("telephone", "lowpass", "highpass")
CHAIN_ORDER: tuple[str, ...] = ("speed", "reverb", "band", "noise", "gain", "opus")

# Below this the pink/brown spectra stay flat: a 1/f or 1/f^2 law down to DC makes brown noise a random
# walk that wanders far off zero, which no microphone (all have a high-pass around 20-80 Hz) passes.
_COLOURED_NOISE_FLOOR_HZ = 20.0
_ACTIVE_FRAME_MS = 20.0
_ACTIVE_THRESHOLD_DB = -35.0  # frames more than 35 dB below the loudest frame are pauses, not speech
_DIGITAL_SILENCE_POWER = 1e-10  # -100 dBFS: never "active", whatever the loudest frame is


def _as_float64(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {x.shape}")
    return x.astype(np.float64, copy=False)


def active_rms(
    samples: np.ndarray,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    threshold_db: float = _ACTIVE_THRESHOLD_DB,
) -> float:
    """RMS of the speech-active part of ``samples`` (n,), in the samples' own units.

    An SNR against the plain mean would depend on how much silence surrounds the utterance (the same
    sentence with a second of padding would get 3 dB "cleaner"). Instead, the signal is cut into 20 ms
    frames and only frames whose power is within ``threshold_db`` of the loudest frame (and above
    -100 dBFS) count: a simplified ITU-T P.56 active speech level. Returns 0.0 for digital silence.
    """
    x = _as_float64(samples)
    if x.size == 0:
        return 0.0
    frame = max(1, round(sample_rate_hz * _ACTIVE_FRAME_MS / 1000.0))
    if x.size < frame:
        power = np.array([np.mean(np.square(x))])
    else:  # a partial last frame is left out: it would be a biased, noisy estimate
        n_frames = x.size // frame
        power = np.square(x[: n_frames * frame]).reshape(n_frames, frame).mean(axis=1)
    peak = float(power.max())
    threshold = max(peak * 10.0 ** (threshold_db / 10.0), _DIGITAL_SILENCE_POWER)
    active = power[power >= threshold]
    return float(np.sqrt(active.mean())) if active.size else 0.0


# --------------------------------------------------------------------------------------------- noise


def _coloured_noise(n: int, rng: np.random.Generator, exponent: float, sample_rate_hz: int) -> np.ndarray:
    """Gaussian noise with power spectral density ~ 1/f**exponent, shaped in one FFT."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate_hz)
    weight = np.maximum(freqs, _COLOURED_NOISE_FLOOR_HZ) ** (-exponent / 2.0)
    weight[0] = 0.0  # no DC offset
    return np.fft.irfft(spectrum * weight, n)


def _hum(n: int, rng: np.random.Generator, sample_rate_hz: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz (slightly off nominal, as grids are) and harmonics with random levels.

    Ground loops and transformers give a fundamental plus strong odd harmonics (buzz), so odd
    harmonics get an extra random boost; phases are random.
    """
    mains_hz = float(rng.choice([50.0, 60.0])) + float(rng.uniform(-0.2, 0.2))
    rolloff = float(rng.uniform(0.5, 1.5))
    odd_boost = float(rng.uniform(1.0, 3.0))
    t = np.arange(n) / sample_rate_hz
    out = np.zeros(n)
    for h in range(1, 13):
        f = h * mains_hz
        if f >= 0.45 * sample_rate_hz:
            break
        amplitude = h**-rolloff * (odd_boost if h % 2 == 1 else 1.0) * float(rng.uniform(0.5, 1.0))
        out += amplitude * np.sin(2.0 * np.pi * f * t + float(rng.uniform(0.0, 2.0 * np.pi)))
    return out


def _babble(
    n: int, rng: np.random.Generator, sources: Sequence[np.ndarray], sample_rate_hz: int
) -> np.ndarray:
    """3-6 overlapping talkers cut from ``sources`` at random offsets (wrapping), each at its active level.

    Sources shorter than ``n`` are repeated (circularly) so any utterance length can be covered.
    """
    usable = [s for s in sources if np.asarray(s).size > 0 and active_rms(s, sample_rate_hz) > 0.0]
    if not usable:
        raise ValueError("babble needs at least one non-silent source signal")
    out = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        src = _as_float64(usable[int(rng.integers(len(usable)))])
        start = int(rng.integers(src.size))
        idx = (start + np.arange(n)) % src.size
        talker = src[idx] / active_rms(src, sample_rate_hz)
        out += talker * 10.0 ** (float(rng.uniform(-3.0, 3.0)) / 20.0)
    return out


def make_noise(
    kind: str,
    n: int,
    rng: np.random.Generator,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    babble_sources: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """(n,) float64 noise of one of ``NOISE_KINDS`` with unit RMS over its whole length.

    ``babble`` needs ``babble_sources``: other speech at ``sample_rate_hz`` (never the utterance
    itself, or the babble would correlate with the target).
    """
    if n <= 0:
        return np.zeros(max(n, 0))
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":
        noise = _coloured_noise(n, rng, 1.0, sample_rate_hz)
    elif kind == "brown":
        noise = _coloured_noise(n, rng, 2.0, sample_rate_hz)
    elif kind == "hum":
        noise = _hum(n, rng, sample_rate_hz)
    elif kind == "babble":
        if not babble_sources:
            raise ValueError("noise kind 'babble' needs babble_sources")
        noise = _babble(n, rng, babble_sources, sample_rate_hz)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")
    rms = float(np.sqrt(np.mean(np.square(noise))))
    return noise / rms if rms > 0.0 else noise


def add_noise(
    samples: np.ndarray,
    rng: np.random.Generator,
    snr_db: float,
    kind: str = "white",
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    babble_sources: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``samples`` (n,) + noise so that active_rms(samples)² / mean(noise²) = 10^(snr_db / 10).

    Returns float32 (n,). The noise power is its mean over the whole utterance (it is stationary,
    except babble); the speech power is the active level, so pauses neither raise nor lower the SNR.
    Digital silence (no active level) is returned unchanged. No clipping here: ``augment`` brings the
    peak back to full scale afterwards so the requested SNR stays exact.
    """
    x = _as_float64(samples)
    level = active_rms(x, sample_rate_hz)
    if level == 0.0:
        return x.astype(np.float32)
    noise = make_noise(kind, x.size, rng, sample_rate_hz=sample_rate_hz, babble_sources=babble_sources)
    return (x + noise * (level * 10.0 ** (-snr_db / 20.0))).astype(np.float32)


# -------------------------------------------------------------------------------------------- reverb


def room_impulse_response(
    rng: np.random.Generator,
    rt60_s: float,
    drr_db: float = 6.0,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> np.ndarray:
    """Synthetic room impulse response, (m,) float32 with m = RT60 in samples (the tail's -60 dB point).

    Tap 0 is the direct path (value 1.0, and the largest tap): convolving with it adds no delay, which
    keeps phoneme timelines valid. After a 2.5-8 ms gap (the extra path length of the first wall
    bounce) come 3-6 early reflections of random sign, then a diffuse tail of Gaussian noise under an
    amplitude envelope 10^(-3 t / rt60_s), so its energy decays by 60 dB in ``rt60_s``; reflections
    follow the same envelope so the Schroeder decay stays a straight line. Everything after the direct
    path is scaled so that direct / reverberant energy = ``drr_db``. Not modelled: frequency-dependent
    absorption (real tails are darker) and the room's modal structure below the Schroeder frequency.
    """
    if not 0.05 <= rt60_s <= 5.0:
        raise ValueError(f"rt60_s must be in [0.05, 5.0] s, got {rt60_s}")
    m = max(2, round(rt60_s * sample_rate_hz))
    t = np.arange(m) / sample_rate_hz
    envelope = 10.0 ** (-3.0 * t / rt60_s)
    first = min(m - 1, max(1, round(float(rng.uniform(0.0025, 0.008)) * sample_rate_hz)))
    # A 2 ms fade-in after the first reflection avoids a step; a longer build-up would leave the early
    # decay flatter than the tail and make the room measure longer than the requested RT60.
    build_up = np.clip((np.arange(m) - first) / (0.002 * sample_rate_hz), 0.0, 1.0)
    reverberant: np.ndarray = rng.standard_normal(m) * envelope * build_up
    n_early = int(rng.integers(3, 7))
    spread = max(1, int(0.020 * sample_rate_hz))
    taps = np.minimum(m - 1, first + np.concatenate([[0], rng.integers(0, spread, n_early - 1)]))
    signs = rng.choice([-1.0, 1.0], n_early)
    reverberant[taps] += signs * envelope[taps] * rng.uniform(2.0, 5.0, n_early)
    reverberant[0] = 0.0
    energy = float(np.sum(np.square(reverberant)))
    if energy > 0.0:
        reverberant *= math.sqrt(10.0 ** (-drr_db / 10.0) / energy)
    reverberant[0] = 1.0
    return reverberant.astype(np.float32)


def convolve_rir(samples: np.ndarray, rir: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Convolve (n,) ``samples`` with ``rir`` (direct path at tap 0), keep the first n samples.

    Returns float32 (n,), rescaled to the input's active level (a room changes the sound, not how
    loud the speaker is for the mouth targets). The tail past the end is dropped so the length, and the
    timeline, are unchanged. FFT convolution: O(n log n), a 0.8 s RIR on a 5 s utterance takes ~ms.
    """
    from scipy.signal import fftconvolve

    x = _as_float64(samples)
    if x.size == 0:
        return x.astype(np.float32)
    y = fftconvolve(x, np.asarray(rir, dtype=np.float64))[: x.size]
    before, after = active_rms(x, sample_rate_hz), active_rms(y, sample_rate_hz)
    if before > 0.0 and after > 0.0:
        y *= before / after
    return y.astype(np.float32)


def reverberate(
    samples: np.ndarray,
    rng: np.random.Generator,
    rt60_s: float,
    drr_db: float = 6.0,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> np.ndarray:
    """``convolve_rir(samples, room_impulse_response(rng, rt60_s, drr_db))``: float32 (n,)."""
    rir = room_impulse_response(rng, rt60_s, drr_db, sample_rate_hz)
    return convolve_rir(samples, rir, sample_rate_hz)


# ------------------------------------------------------------------------------------- band-limiting


def band_limit(
    samples: np.ndarray,
    low_hz: float | None = None,
    high_hz: float | None = None,
    order: int = 6,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> np.ndarray:
    """High-pass at ``low_hz`` and/or low-pass at ``high_hz`` (Butterworth), float32 (n,).

    Applied with ``scipy.signal.sosfiltfilt`` (forward and backward): zero phase, so no component is
    delayed and phoneme boundaries stay where they were to the sample. A causal ``sosfilt`` would
    delay frequencies near each corner by up to several ms (group delay varies with frequency, so no
    single shift could undo it). The price: the magnitude response is squared (-6 dB at the corner,
    12 * order dB per octave beyond it, steep like a telephone channel mask), and the phase distortion
    of real analogue front ends is not reproduced. Second-order sections keep low corners stable.
    """
    from scipy.signal import butter, sosfiltfilt

    x = _as_float64(samples)
    nyquist = sample_rate_hz / 2.0
    if low_hz is None and high_hz is None:
        return x.astype(np.float32)
    if low_hz is not None and not 0.0 < low_hz < nyquist:
        raise ValueError(f"low_hz must be in (0, {nyquist}), got {low_hz}")
    if high_hz is not None and not 0.0 < high_hz < nyquist:
        raise ValueError(f"high_hz must be in (0, {nyquist}), got {high_hz}")
    if low_hz is not None and high_hz is not None and low_hz >= high_hz:
        raise ValueError(f"low_hz ({low_hz}) must be below high_hz ({high_hz})")
    sections = []
    if low_hz is not None:
        sections.append(butter(order, low_hz, btype="highpass", fs=sample_rate_hz, output="sos"))
    if high_hz is not None:
        sections.append(butter(order, high_hz, btype="lowpass", fs=sample_rate_hz, output="sos"))
    sos = np.concatenate(sections, axis=0)
    # sosfiltfilt's default edge padding needs a signal longer than ~6 * n_sections samples.
    if x.size <= 3 * (2 * sos.shape[0] + 1):
        return x.astype(np.float32)
    return sosfiltfilt(sos, x).astype(np.float32)


# ----------------------------------------------------------------------------------------------- gain


def soft_limit(samples: np.ndarray, knee: float = 0.8) -> np.ndarray:
    """Memoryless soft limiter, float32: identity below ``knee``, above it a tanh curve towards ±1.

    The curve continues the identity with slope 1 at the knee (no kink, so only mild harmonics), and
    |output| <= 1 for any input (it only rounds to 1.0 in float32 for inputs far over full scale). It
    stands in for the saturating preamp / limiter of consumer devices; a dynamic limiter with attack
    and release (as in WebRTC's AGC) is not modelled.
    """
    if not 0.0 < knee < 1.0:
        raise ValueError(f"knee must be in (0, 1), got {knee}")
    x = _as_float64(samples)
    mag = np.abs(x)
    over = mag > knee
    out = x.copy()
    out[over] = np.sign(x[over]) * (knee + (1.0 - knee) * np.tanh((mag[over] - knee) / (1.0 - knee)))
    return out.astype(np.float32)


def apply_gain(samples: np.ndarray, gain_db: float, mode: str = "soft") -> np.ndarray:
    """Scale by ``gain_db`` then bound to full scale, float32 (n,).

    ``mode``: ``"soft"`` (``soft_limit``), ``"clip"`` (hard clipping at ±1, a hot microphone driving the
    ADC past full scale) or ``"none"`` (caller guarantees the range).
    """
    y = _as_float64(samples) * 10.0 ** (gain_db / 20.0)
    if mode == "soft":
        return soft_limit(y)
    if mode == "clip":
        return np.clip(y, -1.0, 1.0).astype(np.float32)
    if mode == "none":
        return y.astype(np.float32)
    raise ValueError(f"mode must be 'soft', 'clip' or 'none', got {mode!r}")


# ---------------------------------------------------------------------------------------------- speed


def change_speed(
    samples: np.ndarray, factor: float, sample_rate_hz: int = SAMPLE_RATE_HZ
) -> tuple[np.ndarray, float]:
    """Tape-style speed change: ``factor`` > 1 is faster and higher. Returns (float32 (m,), time_scale).

    The signal is declared to be at ``round(sample_rate_hz * factor)`` Hz and resampled back to
    ``sample_rate_hz`` (libswresample via ``stream_avatar.audio.resample``, which handles any integer
    ratio and adds no delay), so tempo and pitch both scale by the factor, quantised to 1 /
    ``sample_rate_hz``. ``time_scale`` = new duration / old duration = sample_rate_hz / that rate,
    exactly; the output length is ``round(n * time_scale)``. Multiply timeline times (and resample
    per-frame targets) by ``time_scale``.
    """
    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"speed factor must be in [0.5, 2.0], got {factor}")
    x = _as_float64(samples).astype(np.float32)
    virtual_rate = round(sample_rate_hz * factor)
    if virtual_rate == sample_rate_hz or x.size == 0:
        return x.copy(), 1.0
    if not MIN_RATE_HZ <= virtual_rate <= MAX_RATE_HZ:
        raise ValueError(f"speed factor {factor} gives an unsupported rate {virtual_rate} Hz")
    time_scale = sample_rate_hz / virtual_rate
    y = resample(x, virtual_rate, sample_rate_hz)
    return _fit_length(y, round(x.size * time_scale)), time_scale


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad float32 ``y`` at the end to exactly ``n`` samples."""
    if y.size >= n:
        return np.ascontiguousarray(y[:n], dtype=np.float32)
    return np.concatenate([y.astype(np.float32), np.zeros(n - y.size, dtype=np.float32)])


# ----------------------------------------------------------------------------------------------- opus


def _opus_pre_skip(extradata: bytes | None) -> int:
    """Pre-skip (samples at 48 kHz) from an OpusHead (RFC 7845 §5.1: bytes 10-11, little endian)."""
    if extradata is None or len(extradata) < 12 or extradata[:8] != b"OpusHead":
        return 0
    return int.from_bytes(extradata[10:12], "little")


def opus_round_trip(
    samples: np.ndarray,
    bitrate_bps: int,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    *,
    complexity: int = 10,
) -> np.ndarray:
    """Encode with libopus and decode again, as a WebRTC call would. float32 (n,), aligned with the input.

    The audio is resampled to 48 kHz, encoded in one pass (one codec context per call; PyAV rebuffers
    the whole utterance into 20 ms frames), decoded with FFmpeg's Opus decoder and resampled back. The
    encoder's algorithmic delay (pre-skip: 312 samples = 6.5 ms at 48 kHz for the VoIP application) is
    removed by the decoder when it is given the encoder's OpusHead, as done here (measured with PyAV
    18: delay 0 at 12-64 kbps, < 0.15 ms at 6-8 kbps where Opus falls back to narrowband SILK). It does
    not for a single-packet stream (input under ~20 ms), and other versions might not at all: then the
    decoded length exceeds the packets' total duration minus the pre-skip, and the pre-skip is cut here.
    The result is trimmed to the input length (the encoder pads the last frame). No packet loss.
    """
    x16 = _as_float64(samples).astype(np.float32)
    n = x16.size
    if n == 0:
        return x16.copy()
    bitrate = int(min(max(int(bitrate_bps), 6000), 510000))
    x = resample(x16, sample_rate_hz, OPUS_RATE_HZ) if sample_rate_hz != OPUS_RATE_HZ else x16

    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = OPUS_RATE_HZ
    encoder.layout = "mono"
    encoder.format = "flt"
    encoder.bit_rate = bitrate
    # "voip" is what libwebrtc uses for speech: it favours intelligibility (and adds the 6.5 ms lookahead).
    encoder.options = {
        "application": "voip",
        "frame_duration": str(OPUS_FRAME_MS),
        "compression_level": str(int(complexity)),
    }
    encoder.open()
    frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
    frame.sample_rate = OPUS_RATE_HZ
    frame.pts = 0
    packets = list(encoder.encode(frame)) + list(encoder.encode(None))
    extradata = encoder.extradata
    pre_skip = _opus_pre_skip(bytes(extradata) if extradata is not None else None)

    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate = OPUS_RATE_HZ
    decoder.layout = "mono"
    if extradata is not None:
        decoder.extradata = extradata
    parts: list[np.ndarray] = []
    for packet in [*packets, None]:
        for decoded in decoder.decode(packet):
            a = decoded.to_ndarray()
            scale = 1.0 / 32768.0 if np.issubdtype(a.dtype, np.integer) else 1.0
            parts.append((a.reshape(-1) * scale).astype(np.float32))
    y = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    coded = sum(int(p.duration or 0) for p in packets)
    if pre_skip and coded and y.size > coded - pre_skip:
        y = y[pre_skip:]  # this decoder kept the encoder's lookahead: drop it here instead
    y16 = resample(y, OPUS_RATE_HZ, sample_rate_hz) if sample_rate_hz != OPUS_RATE_HZ else y
    return _fit_length(y16, n)


# --------------------------------------------------------------------------------------------- chain


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (each step independently) and parameter ranges for ``augment``.

    Ranges are (low, high), drawn uniformly unless noted. The defaults aim at a webcam/laptop user
    on a WebRTC call: mostly mild, sometimes bad. ``p_clean`` of the utterances skip the chain
    entirely (the engine also hears clean TTS audio, and the independent steps alone would leave only
    ~1.6 % untouched); the others get on average ~2.9 steps.
    """

    sample_rate_hz: int = SAMPLE_RATE_HZ
    p_clean: float = 0.15
    p_speed: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    p_reverb: float = 0.4
    rt60_range_s: tuple[float, float] = (0.15, 0.8)
    drr_range_db: tuple[float, float] = (0.0, 12.0)
    p_band: float = 0.3
    band_kinds: tuple[str, ...] = BAND_KINDS  # chosen uniformly
    lowpass_range_hz: tuple[float, float] = (3000.0, 7000.0)
    highpass_range_hz: tuple[float, float] = (80.0, 400.0)
    band_order: int = 6
    p_noise: float = 0.7
    snr_range_db: tuple[float, float] = (0.0, 30.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS  # uniformly; "babble" only when sources are passed
    p_gain: float = 0.5
    gain_range_db: tuple[float, float] = (-18.0, 9.0)
    p_clip: float = 0.2  # given a gain step: drive the peak past full scale and hard-clip
    clip_over_db: tuple[float, float] = (0.5, 6.0)  # how far past full scale the peak is driven
    p_opus: float = 0.5
    opus_bitrate_range_bps: tuple[int, int] = (8000, 64000)  # log-uniform, rounded to 1 kbps
    opus_complexity: int = 10

    def __post_init__(self) -> None:
        for name in ("p_clean", "p_speed", "p_reverb", "p_band", "p_noise", "p_gain", "p_clip", "p_opus"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        for name in (
            "speed_range",
            "rt60_range_s",
            "drr_range_db",
            "lowpass_range_hz",
            "highpass_range_hz",
            "snr_range_db",
            "gain_range_db",
            "clip_over_db",
            "opus_bitrate_range_bps",
        ):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
        unknown = (set(self.noise_kinds) - set(NOISE_KINDS)) | (set(self.band_kinds) - set(BAND_KINDS))
        if unknown:
            raise ValueError(f"unknown noise or band kinds: {sorted(unknown)}")


@dataclass(frozen=True)
class Augmented:
    """Result of ``augment``.

    ``samples``: float32 (m,) in [-1, 1], m = round(n * time_scale) ± 1. ``time_scale``: new duration /
    old duration (the product of all timing changes; only the speed step changes timing). ``applied``:
    step names in the order they ran (a subset of ``CHAIN_ORDER``, plus ``"peak_normalize"`` when the
    chain pushed the peak past full scale without a gain step to bound it). ``params``: the drawn
    parameters, e.g. ``speed_factor``, ``rt60_s``, ``snr_db``, ``noise_kind``, ``opus_bitrate_bps``.
    """

    samples: np.ndarray
    time_scale: float
    applied: tuple[str, ...]
    params: dict[str, float | str]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def augment(
    samples: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
    *,
    babble_sources: Sequence[np.ndarray] | None = None,
) -> Augmented:
    """Apply a random chain speed → reverb → band-limit → noise → gain → opus to (n,) audio.

    The order follows the physical path: the talker (speed stands in for speaking rate), the room,
    the microphone's band, noise in the room and the electronics, the preamp's gain/clipping, then the
    codec on the wire. Each step runs with its probability; all random draws come from ``rng``, so the
    same seed and input give the same output. With probability ``config.p_clean`` nothing is applied.
    Before the codec the peak is brought to at most full scale; the codec's tiny overshoots are
    clipped, as its int16 output would be.
    """
    cfg = config if config is not None else AugmentConfig()
    sr = cfg.sample_rate_hz
    x = _as_float64(samples).astype(np.float32)
    applied: list[str] = []
    params: dict[str, float | str] = {}
    time_scale = 1.0
    if rng.random() < cfg.p_clean:
        return Augmented(samples=x.copy(), time_scale=1.0, applied=(), params={})

    if rng.random() < cfg.p_speed:
        requested = _uniform(rng, cfg.speed_range)
        x, scale = change_speed(x, requested, sr)
        time_scale *= scale
        applied.append("speed")
        params["speed_factor"] = 1.0 / scale
        params["speed_time_scale"] = scale

    if rng.random() < cfg.p_reverb:
        rt60 = _uniform(rng, cfg.rt60_range_s)
        drr = _uniform(rng, cfg.drr_range_db)
        x = reverberate(x, rng, rt60, drr, sr)
        applied.append("reverb")
        params["rt60_s"] = rt60
        params["drr_db"] = drr

    if rng.random() < cfg.p_band and cfg.band_kinds:
        kind = str(rng.choice(list(cfg.band_kinds)))
        low: float | None = None
        high: float | None = None
        if kind == "telephone":
            low, high = TELEPHONE_BAND_HZ
        elif kind == "lowpass":
            high = _uniform(rng, cfg.lowpass_range_hz)
        else:
            low = _uniform(rng, cfg.highpass_range_hz)
        x = band_limit(x, low, high, cfg.band_order, sr)
        applied.append("band")
        params["band_kind"] = kind
        if low is not None:
            params["band_low_hz"] = low
        if high is not None:
            params["band_high_hz"] = high

    kinds = [k for k in cfg.noise_kinds if k != "babble" or babble_sources]
    if rng.random() < cfg.p_noise and kinds:
        kind = str(rng.choice(kinds))
        snr = _uniform(rng, cfg.snr_range_db)
        x = add_noise(x, rng, snr, kind, sample_rate_hz=sr, babble_sources=babble_sources)
        applied.append("noise")
        params["noise_kind"] = kind
        params["snr_db"] = snr

    if rng.random() < cfg.p_gain:
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if rng.random() < cfg.p_clip and peak > 0.0:
            gain = -20.0 * math.log10(peak) + _uniform(rng, cfg.clip_over_db)
            mode = "clip"
        else:
            gain = _uniform(rng, cfg.gain_range_db)
            mode = "soft"
        x = apply_gain(x, gain, mode)
        applied.append("gain")
        params["gain_db"] = gain
        params["gain_mode"] = mode

    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        x = (x * (0.999 / peak)).astype(np.float32)
        applied.append("peak_normalize")
        params["peak_normalize_db"] = 20.0 * math.log10(0.999 / peak)

    if rng.random() < cfg.p_opus:
        lo, hi = cfg.opus_bitrate_range_bps
        bitrate = round(math.exp(_uniform(rng, (math.log(lo), math.log(hi)))) / 1000.0) * 1000
        x = opus_round_trip(x, bitrate, sr, complexity=cfg.opus_complexity)
        applied.append("opus")
        params["opus_bitrate_bps"] = float(bitrate)

    y = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0).astype(np.float32)
    return Augmented(samples=y, time_scale=time_scale, applied=tuple(applied), params=params)

"""Emotion in the synthetic data: how each emotion changes the voice (prosody) and the face over time.

Prosody. Relative to a speaker's own baseline, each emotion at intensity 1 shifts espeak-ng's pitch
(F0 level), pitch range, speaking rate and volume in the directions of the published acoustic profiles
of vocal emotion (Banse & Scherer 1996; Juslin & Laukka 2003, review of 104 studies): anger — high
F0, wide range, loud, fast; happiness — high F0, wide range, a little loud and fast; sadness — low F0,
narrow range, soft, slow; fear — high F0, fast, narrowish range; disgust — low F0, slow, soft;
surprise — high F0, very wide range; contempt — low F0, narrow range, slow. Intensity scales the shift
linearly. Every sample then gets its own random deviation on every parameter, with spreads of the
same size as the differences between neighbouring emotions, so the labels overlap on each single
feature (a classifier has to combine them, as with real speech) while the means differ as published.

Voice quality (opt-in per dataset, ``DatasetConfig.voice_quality``). Prosody alone leaves the emotions
overlapping and tied to the speaker's own baseline (a high voice is not a happy one). Real emotional
speech also differs in *how* the voice is produced, largely independent of the speaker (Gobl & Ní
Chasaide 2003, voice quality and affect; Juslin & Laukka 2003: high-frequency energy, jitter): anger
is tense and harsh (strong high frequencies), happiness a little tense, sadness lax and breathy (weak
high frequencies), fear whispery with a trembling pitch, disgust harsh and low, surprise a breathy
onset and bright, contempt lax and a little harsh. ``render_voice_quality`` applies these to the
synthesized speech as four measurable changes: a spectral tilt (shelf above ~1 kHz), aspiration noise
that follows the speech envelope, a 4.5-7 Hz pitch tremor (a fractional delay line) with a matching
amplitude tremor, and tension (soft saturation: added harmonics). Phone timings are unchanged (the
tremor's delay stays under 1 ms). Intensity scales the shift; every sample jitters every parameter.

Face. The expression follows the rig's FACS table (``stream_avatar.emotion.facs``) with natural
dynamics: an onset shortly before the speech starts (150-450 ms rise), an apex at the sample's
intensity with a slow drift, and an offset after the speech ends toward a lingering fraction. On top,
prosody-linked gestures: brow raises (AU1+AU2) on some primary-stressed syllables and nods on others
and at the phrase start, more brows for surprise and fear, fewer nods for sadness, firmer nods for
anger (accents: lengthened vowels, see ``accented_syllables``). Articulation scales with vocal
effort (angry speech opens the jaw wider than sad speech).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream_avatar.data.visemes import TimedPhoneme, viseme_of
from stream_avatar.data.warp import Warp
from stream_avatar.emotion import facs as emotion_mod
from stream_avatar.motion import rig

# emotion → (pitch shift on espeak's 0-99 scale, range factor, rate factor, volume factor) at intensity 1
PROSODY: dict[str, tuple[float, float, float, float]] = {
    "neutral": (0.0, 1.00, 1.00, 1.00),
    "happy": (12.0, 1.35, 1.08, 1.10),
    "angry": (10.0, 1.40, 1.15, 1.35),
    "sad": (-10.0, 0.60, 0.82, 0.75),
    "fear": (16.0, 0.90, 1.15, 0.95),
    "disgusted": (-6.0, 1.10, 0.85, 0.90),
    "surprised": (18.0, 1.50, 1.00, 1.15),
    "contempt": (-8.0, 0.80, 0.88, 0.85),
}
# emotion → (spectral tilt in dB above ~1 kHz, breathiness, tremor, tension, pitch-range factor) at
# intensity 1 (voice quality; see the module docstring). Breathiness: aspiration noise level re the
# speech envelope; tremor: 1 = 60 cents of pitch modulation (and 15 % amplitude); tension:
# soft-saturation drive; range: the spread of log f0 around the utterance's median, re the speaker's own
# (rendered through the WORLD vocoder for every synthesizer, so Festival and Flite voices, whose
# recorded intonation espeak's range parameter cannot reach, carry it too). Values as an actor's
# clear portrayal (MEAD's top intensity), so that the eight are told apart by what does not depend on
# the speaker: range, voice quality and rate, not the speaker's own pitch level.
VOICE_QUALITY: dict[str, tuple[float, float, float, float, float]] = {
    "neutral": (0.0, 0.0, 0.0, 0.0, 1.0),
    "happy": (5.0, 0.0, 0.0, 0.3, 1.6),
    "angry": (10.0, 0.0, 0.0, 1.2, 1.45),
    "sad": (-9.0, 0.04, 0.4, 0.0, 0.45),
    "fear": (1.0, 0.035, 1.4, 0.0, 1.0),
    "disgusted": (-4.0, 0.0, 0.0, 0.9, 0.95),
    "surprised": (3.0, 0.02, 0.0, 0.0, 2.2),
    "contempt": (-3.0, 0.03, 0.0, 0.3, 0.65),
}
# Per-sample spread: tilt in dB (also the speaker-to-speaker spread of a neutral voice), the next three
# absolute, the range factor in log units.
VOICE_JITTER = (1.5, 0.005, 0.1, 0.1, 0.12)
# Per-sample spread (standard deviations): pitch in scale steps, the factors in log units.
JITTER = (6.0, 0.18, 0.07, 0.10)
# Articulation gain per emotion (jaw and lip excursion with vocal effort), at intensity 1.
ARTICULATION: dict[str, float] = {
    "neutral": 1.0, "happy": 1.05, "angry": 1.2, "sad": 0.8, "fear": 0.95,
    "disgusted": 0.9, "surprised": 1.1, "contempt": 0.85,
}  # fmt: skip
# Gesture rates: (brow raise probability, nod probability) per primary-stressed syllable.
GESTURES: dict[str, tuple[float, float]] = {
    "neutral": (0.15, 0.35), "happy": (0.3, 0.45), "angry": (0.1, 0.55), "sad": (0.1, 0.15),
    "fear": (0.45, 0.2), "disgusted": (0.1, 0.3), "surprised": (0.6, 0.3), "contempt": (0.1, 0.3),
}  # fmt: skip
NOD_DEG = (0.8, 2.2)
NOD_PEAK_S = 0.25
BROW_PEAK_S = 0.18


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: a voice and a personal prosodic baseline.

    espeak speakers: ``voice`` is an espeak-ng voice with variant and the baseline is espeak's own
    parameters. Festival speakers (``synthesizer == "festival"``): ``voice`` is a Festival voice, the
    baseline is espeak's neutral values (emotion shifts are taken relative to it and rendered as pitch
    / tempo / gain changes) and ``warp`` makes the recorded voice another person.
    """

    id: str
    language: str
    voice: str  # e.g. "en-us+f3", or a Festival voice name
    pitch: float  # espeak 0-99
    pitch_range: float  # espeak 0-99
    rate_wpm: float
    volume: float  # espeak 0-200
    synthesizer: str = "espeak"
    warp: Warp | None = None


@dataclass(frozen=True)
class Prosody:
    """espeak-ng parameters of one utterance."""

    pitch: int
    pitch_range: int
    rate_wpm: int
    volume: int


def prosody_for(speaker: Speaker, emotion: str, intensity: float, rng: np.random.Generator) -> Prosody:
    """The espeak parameters of one utterance: speaker baseline + emotion shift × intensity + jitter."""
    d_pitch, f_range, f_rate, f_vol = PROSODY[emotion]
    j = rng.standard_normal(4) * np.asarray(JITTER)
    pitch = speaker.pitch + intensity * d_pitch + j[0]
    prange = speaker.pitch_range * (1.0 + intensity * (f_range - 1.0)) * math.exp(j[1])
    rate = speaker.rate_wpm * (1.0 + intensity * (f_rate - 1.0)) * math.exp(j[2])
    volume = speaker.volume * (1.0 + intensity * (f_vol - 1.0)) * math.exp(j[3])
    return Prosody(
        pitch=int(np.clip(round(pitch), 5, 95)),
        pitch_range=int(np.clip(round(prange), 5, 99)),
        rate_wpm=int(np.clip(round(rate), 90, 400)),
        volume=int(np.clip(round(volume), 30, 200)),
    )


@dataclass(frozen=True)
class VoiceQuality:
    """Voice-quality parameters of one utterance (see ``VOICE_QUALITY``)."""

    tilt_db: float
    breath: float
    tremor: float
    tremor_hz: float
    tension: float
    range_factor: float = 1.0  # spread of log f0 re the speaker's own (1: unchanged, no vocoder pass)


def voice_quality_for(emotion: str, intensity: float, rng: np.random.Generator) -> VoiceQuality:
    """The emotion's voice quality × intensity + per-sample jitter (``VOICE_JITTER``)."""
    tilt, breath, tremor, tension, prange = VOICE_QUALITY[emotion]
    j = rng.standard_normal(5) * np.asarray(VOICE_JITTER)
    return VoiceQuality(
        tilt_db=round(float(intensity * tilt + j[0]), 3),
        breath=round(float(max(0.0, intensity * breath + j[1])), 4),
        tremor=round(float(max(0.0, intensity * tremor + j[2])), 4),
        tremor_hz=round(float(rng.uniform(4.5, 7.0)), 3),
        tension=round(float(max(0.0, intensity * tension + j[3])), 4),
        range_factor=round(float(math.exp(intensity * math.log(prange) + j[4])), 4),
    )


def render_pitch_range(samples: np.ndarray, factor: float, sample_rate_hz: int = 16000) -> np.ndarray:
    """Speech (n,) float → the same speech with its log f0 spread around the median scaled by ``factor``.

    Analysis and resynthesis by the WORLD vocoder (``pyworld``: DIO + StoneMask f0, CheapTrick envelope,
    D4C aperiodicity; 5 ms frames): the spectral envelope and the timing stay, so phone timings hold.
    Same length as the input."""
    import pyworld

    x = np.asarray(samples, np.float64).reshape(-1)
    if x.size < sample_rate_hz // 10 or not np.any(x):
        return np.asarray(samples, np.float32).copy()
    f0, t = pyworld.dio(x, sample_rate_hz, frame_period=5.0)
    f0 = pyworld.stonemask(x, f0, t, sample_rate_hz)
    sp = pyworld.cheaptrick(x, f0, t, sample_rate_hz)
    ap = pyworld.d4c(x, f0, t, sample_rate_hz)
    voiced = f0 > 0
    if voiced.any():
        lf = np.log2(np.where(voiced, f0, 1.0))
        mid = float(np.median(lf[voiced]))
        f0 = np.where(voiced, 2.0 ** np.clip(mid + factor * (lf - mid), np.log2(50.0), np.log2(500.0)), 0.0)
    y = pyworld.synthesize(f0, sp, ap, sample_rate_hz, 5.0)
    out = np.zeros(x.size)
    out[: min(x.size, y.size)] = y[: x.size]
    return out.astype(np.float32)


def render_voice_quality(
    samples: np.ndarray, vq: VoiceQuality, rng: np.random.Generator, sample_rate_hz: int = 16000
) -> np.ndarray:
    """Speech (n,) float → the same speech with ``vq``'s voice quality; same length, same RMS.

    Hand-written because no maintained package renders these four changes on arbitrary speech (voice
    conversion libraries resynthesize and would move the phone timings the labels depend on)."""
    from scipy.signal import butter, lfilter, sosfilt

    x = np.asarray(samples, np.float64).reshape(-1)
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    if rms <= 0.0:
        return np.asarray(samples, np.float32).copy()
    if vq.range_factor != 1.0:
        x = render_pitch_range(x, vq.range_factor, sample_rate_hz).astype(np.float64)
    t = np.arange(x.size) / sample_rate_hz
    phase = rng.uniform(0.0, 2.0 * math.pi)
    if vq.tremor > 0.0:
        # Pitch tremor: reading x at t + d(t) scales the instantaneous frequency by 1 + d'(t).
        depth = (2.0 ** (60.0 * vq.tremor / 1200.0) - 1.0) / (2.0 * math.pi * vq.tremor_hz)
        d = depth * np.sin(2.0 * math.pi * vq.tremor_hz * t + phase)
        x = np.interp(np.clip(t + d, 0.0, t[-1]), t, x)
        x = x * (1.0 + 0.15 * min(vq.tremor, 2.0) * np.sin(2.0 * math.pi * vq.tremor_hz * t + phase))
    if vq.tension > 0.0:
        drive = 1.0 + 4.0 * vq.tension
        peak = float(np.max(np.abs(x))) or 1.0
        x = np.tanh(drive * x / peak)
    # Speech envelope (10 ms smoothing) for the aspiration noise.
    a = math.exp(-1.0 / (0.01 * sample_rate_hz))
    env = np.sqrt(np.maximum(lfilter([1.0 - a], [1.0, -a], x * x), 0.0))
    if vq.breath > 0.0:
        band = [1500.0, min(7000.0, 0.45 * sample_rate_hz)]
        sos = butter(2, band, "bandpass", fs=sample_rate_hz, output="sos")
        noise = sosfilt(sos, rng.standard_normal(x.size))
        noise /= float(np.sqrt(np.mean(noise * noise))) or 1.0
        x = x + vq.breath * env * noise
    if vq.tilt_db != 0.0:
        b = math.exp(-2.0 * math.pi * 1000.0 / sample_rate_hz)
        low = lfilter([1.0 - b], [1.0, -b], x)
        x = low + 10.0 ** (vq.tilt_db / 20.0) * (x - low)
    out = x * (rms / (float(np.sqrt(np.mean(x * x))) or 1.0))
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _envelope(t: np.ndarray, start: float, end: float, rng: np.random.Generator) -> np.ndarray:
    """Onset / apex / offset of an expression over frame times ``t`` (s), in [0, 1]."""
    onset_at = start - rng.uniform(0.05, 0.35)
    onset_len = rng.uniform(0.15, 0.45)
    offset_len = rng.uniform(0.3, 0.7)
    linger = rng.uniform(0.3, 0.7)
    rise = np.clip((t - onset_at) / onset_len, 0.0, 1.0)
    rise = rise * rise * (3.0 - 2.0 * rise)
    fall = np.clip((t - end) / offset_len, 0.0, 1.0)
    fall = 1.0 - (1.0 - linger) * fall * fall * (3.0 - 2.0 * fall)
    drift = 1.0 + 0.08 * np.sin(2.0 * math.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 2 * math.pi))
    return np.clip(rise * fall * drift, 0.0, 1.0)


def _pulse(t: np.ndarray, start: float, peak_s: float) -> np.ndarray:
    u = np.clip((t - start) / peak_s, 0.0, None)
    return np.where(u < 6.0, u * u * np.exp(2.0 * (1.0 - u)), 0.0)


_VOWEL_VISEMES = {"aa", "E", "ih", "oh", "ou"}


def accented_syllables(phonemes: Sequence[TimedPhoneme]) -> list[float]:
    """Start times (s) of probably accented syllables: vowels at least 1.3× the utterance's median vowel
    duration (accented syllables are lengthened; espeak-ng's phoneme events carry no stress marks)."""
    vowels = []
    for p in phonemes:
        try:
            if viseme_of(p.symbol) in _VOWEL_VISEMES:
                vowels.append(p)
        except KeyError:
            continue
    if not vowels:
        return []
    median = float(np.median([v.end_s - v.start_s for v in vowels]))
    return [v.start_s for v in vowels if v.end_s - v.start_s >= 1.3 * median]


def face_targets(
    mouth: np.ndarray,
    phonemes: Sequence[TimedPhoneme],
    emotion: str,
    intensity: float,
    rng: np.random.Generator,
    fps: int = 25,
) -> np.ndarray:
    """Mouth targets (n_frames, RIG_SIZE) from the visemes → the full face track of the utterance.

    Adds the emotion's expression (with onset/apex/offset), prosody-linked brow raises and nods, and
    scales articulation with vocal effort. Returns (n_frames, RIG_SIZE) float32, clamped.
    """
    n = mouth.shape[0]
    t = (np.arange(n) + 0.5) / fps
    speech = [p for p in phonemes if p.symbol != "_"]
    start = speech[0].start_s if speech else 0.0
    end = speech[-1].end_s if speech else 0.0

    gain = 1.0 + intensity * (ARTICULATION[emotion] - 1.0)
    out = mouth.astype(np.float32).copy()
    out[:, : rig.NUM_BLENDSHAPES] = np.clip(out[:, : rig.NUM_BLENDSHAPES] * gain, 0.0, 1.0)

    expression = emotion_mod.expression_rig(
        {emotion: intensity} if emotion != "neutral" else {}, emotion_mod.TRACK_AUS
    )
    track = _envelope(t, start, end, rng)[:, None] * expression[None, :]

    brow_p, nod_p = GESTURES[emotion]
    accents = accented_syllables(speech)
    pitch = np.zeros(n)
    brows = np.zeros(n)
    if speech:  # a nod opens the phrase
        pitch += rng.uniform(*NOD_DEG) * 0.7 * _pulse(t, start - 0.05, NOD_PEAK_S)
    last_gesture = -1.0
    for at in accents:
        if at - last_gesture < 0.5:  # one gesture per half second at most
            continue
        r = rng.uniform()
        if r < brow_p:
            brows += rng.uniform(0.25, 0.5) * _pulse(t, at - 0.05, BROW_PEAK_S)
            last_gesture = at
        elif r < brow_p + nod_p:
            strength = 1.2 if emotion == "angry" else 1.0
            pitch += strength * rng.uniform(*NOD_DEG) * _pulse(t, at - 0.05, NOD_PEAK_S)
            last_gesture = at
    brow_rig = np.zeros((n, rig.RIG_SIZE), np.float32)
    brow_rig[:, rig.index("browInnerUp")] = brows
    brow_rig[:, rig.index("browOuterUpLeft")] = 0.8 * brows
    brow_rig[:, rig.index("browOuterUpRight")] = 0.8 * brows

    out = emotion_mod.blend(emotion_mod.blend(out, track.astype(np.float32)), brow_rig)
    out[:, rig.index("headPitch")] += pitch.astype(np.float32)
    return rig.clamp(out)

"""DSP mouth driver: speech audio -> mouth blendshapes, causal, no model weights.

The baseline (and fallback) driver. It needs no training data, runs in tens of microseconds per
20 ms of audio, and gives a plausible mouth: open on loud voiced sound, rounded on back vowels, spread
and nearly closed on sibilants, lips pressed on closures, shut in silence.

Pipeline per 20 ms chunk of 16 kHz audio (two 10 ms feature rows from ``FeatureStream``):

1. Level ``E`` (dBFS, mean-square of the analysis windows) and spectral shape from the 80 mel bands:
   ``low`` = energy share below 1 kHz, ``mid`` = share of 1.2-4 kHz within 0.1-4 kHz (near 0 for
   rounded vowels /u/ /o/ whose F2 stays below 1 kHz; ~0.3-0.45 for /i/), ``high`` = share above
   3.5 kHz (sibilants /s/ /sh/ > 0.5, vowels < 0.05). Thresholds were read off espeak-ng speech.
2. Loudness normalisation: a causal peak tracker follows the level of loud speech (fast attack, slow
   ~2 s decay, updated only on VAD-speech chunks) and a floor tracker follows the background (fast
   fall, slow rise). The jaw target depends on ``E`` relative to the tracked peak, so a quiet mic and a
   loud TTS stream produce the same mouth range.
3. Targets: jawOpen from relative level (less for sibilants, more for open vowels); mouthFunnel on loud
   rounded sound; mouthStretch on sibilants and spread vowels; mouthClose when the level drops far
   below the peak inside speech (closures of /p b m/, plosive silence) while the jaw is still open.
4. Gate: webrtcvad decides speech per 20 ms chunk; a 160 ms hangover bridges short pauses; when the
   gate is off every target is 0.
5. Smoothing: one-pole attack (tau 30 ms) / release (tau 80 ms) per coefficient, so the mouth opens
   quickly and closes a little slower, as real articulators do.
6. Speech-linked head motion: speakers nod on phrase onsets and on stressed syllables. A nod fires
   when the gate opens after a pause, or on a syllable within 3 dB of the tracked peak after a rise of
   at least 6 dB (an accent), at most one per 0.6 s. Each nod is a smooth pulse on headPitch (chin
   down; peak after 250 ms, gone after ~1.2 s), 0.8-2.0 degrees by loudness, with a small yaw
   component of random side (seeded). Pulses add up; the idle sway comes on top in the engine.

One ``MotionFrame`` is produced per video frame (16000 / fps samples; 640 at 25 fps). Its rig is the
smoothed state after the last 20 ms chunk that ends at or before the frame's end: only audio up to the
frame end is used (causal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream_avatar.audio.features import HOP, N_MELS, SAMPLE_RATE_HZ, FeatureStream, mel_band_edges_hz
from stream_avatar.audio.io import pcm_to_float32
from stream_avatar.audio.vad import FRAME_SAMPLES, Vad
from stream_avatar.motion import rig

__all__ = ["CHUNK_SAMPLES", "DSPMouthDriver", "MotionFrame"]

CHUNK_SAMPLES: int = FRAME_SAMPLES  # 20 ms at 16 kHz: the VAD frame and the driver's update step
_CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE_HZ
assert CHUNK_SAMPLES % HOP == 0

_JAW = rig.index("jawOpen")
_CLOSE = rig.index("mouthClose")
_FUNNEL = rig.index("mouthFunnel")
_STRETCH_L = rig.index("mouthStretchLeft")
_STRETCH_R = rig.index("mouthStretchRight")
_PITCH = rig.index("headPitch")
_YAW = rig.index("headYaw")

_EDGES = mel_band_edges_hz()
_CENTERS_HZ = _EDGES[1:-1]
# The filterbank is area-normalised (band value = mean power density), so band energy ~ value * width.
_HALF_WIDTHS_HZ = (_EDGES[2:] - _EDGES[:-2]) / 2.0


def _band(lo_hz: float, hi_hz: float) -> np.ndarray:
    return ((lo_hz <= _CENTERS_HZ) & (hi_hz > _CENTERS_HZ)).astype(np.float64)


# Columns: all (0.1-8 kHz), low (0.1-1 kHz), up to 4 kHz, mid (1.2-4 kHz), high (3.5-8 kHz); one
# (80,) @ (80, 5) product gives every band sum the targets need.
_BAND_SUMS = (
    np.stack(
        [_band(100, 8000), _band(100, 1000), _band(100, 4000), _band(1200, 4000), _band(3500, 8000)], axis=1
    )
    * _HALF_WIDTHS_HZ[:, None]
)
_DB_PER_NEPER = 10.0 / math.log(10.0)


def _alpha(tau_s: float) -> float:
    """One-pole smoothing coefficient for one 20 ms step with time constant ``tau_s``."""
    return 1.0 - math.exp(-_CHUNK_S / tau_s)


def _ramp(x: float, x0: float, x1: float) -> float:
    """0 at x0, 1 at x1, linear between, clipped (x1 may be below x0 for a falling ramp)."""
    t = (x - x0) / (x1 - x0)
    return 0.0 if t <= 0.0 else 1.0 if t >= 1.0 else t


@dataclass(frozen=True, slots=True)
class MotionFrame:
    """One video frame of motion: ``rig`` (RIG_SIZE,) float32 (see ``motion.rig``) and the VAD state."""

    rig: np.ndarray
    speaking: bool


class DSPMouthDriver:
    """Causal audio -> mouth driver (see the module docstring for the method).

    ``push(samples)`` takes 16 kHz mono audio ((n,) float32 in [-1, 1]; int16 accepted) in any
    chunking and returns one ``MotionFrame`` per video frame completed by these samples. The rig has
    jawOpen, mouthClose, mouthFunnel, mouthStretchLeft/Right and the nods' headPitch/headYaw set and
    every other coefficient 0. ``seed`` picks the side of each nod's yaw; the same seed and audio give
    the same frames.
    """

    name = "dsp"

    # Smoothing time constants (s): fast attack, slower release.
    ATTACK_S = 0.030
    RELEASE_S = 0.080
    # After clear() (an interrupt) the mouth closes much faster than after a natural pause: the speech
    # was cut off, and a front end promises rest within 100 ms. 10 ms per e-fold closes 0.85 to < 0.05
    # within the first 40 ms frame after the interrupt.
    INTERRUPT_RELEASE_S = 0.010
    INTERRUPT_SPEECH_CHUNKS = 3  # 60 ms of speech after an interrupt reopens the gate
    HANGOVER_S = 0.160
    # Level mapping: jaw fully open at the tracked peak, closed this many dB below it.
    JAW_RANGE_DB = 28.0
    JAW_MAX = 0.85
    JAW_GAMMA = 1.4
    PEAK_ATTACK = 0.5
    PEAK_DECAY = 0.025
    # Speech-linked nods (step 6).
    NOD_PAUSE_S = 0.30  # a gate opening after at least this much non-speech is a phrase onset
    NOD_REFRACTORY_S = 0.60
    NOD_ACCENT_DB = 3.0  # an accent comes within this many dB of the peak ...
    NOD_RISE_DB = 6.0  # ... after rising at least this much from the syllable's valley
    NOD_DEG = (0.8, 2.0)
    NOD_PEAK_S = 0.25
    NOD_YAW_SHARE = 0.35

    def __init__(self, fps: float = 25, seed: int = 0, vad_aggressiveness: int = 2) -> None:
        if not 1 <= fps <= 120:
            raise ValueError(f"fps must be in [1, 120], got {fps!r}")
        self.fps = fps
        self.seed = seed
        self._vad = Vad(vad_aggressiveness)
        self._features = FeatureStream()
        self._a_att = _alpha(self.ATTACK_S)
        self._a_rel = _alpha(self.RELEASE_S)
        self._a_interrupt = _alpha(self.INTERRUPT_RELEASE_S)
        self._hangover_chunks = round(self.HANGOVER_S / _CHUNK_S)
        self._pending = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
        self._nod_pause_chunks = round(self.NOD_PAUSE_S / _CHUNK_S)
        self._nod_refractory_chunks = round(self.NOD_REFRACTORY_S / _CHUNK_S)
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the initial state, including the level trackers (a new speaker / session)."""
        self._peak_db: float | None = None
        self._floor_db: float | None = None
        self._state = [0.0, 0.0, 0.0, 0.0]  # smoothed jaw, close, funnel, stretch
        self._rng = np.random.default_rng(self.seed)
        self._nods: list[tuple[int, float, float]] = []  # (start chunk, pitch deg, yaw deg)
        self._head_hold = (0.0, 0.0)
        self._chunk_count = 0
        self._last_nod = -(10**9)
        self._valley_db = math.inf
        self.nod_starts: list[int] = []  # chunk index of every nod (tests, debugging)
        self.clear()
        self._interrupted = False

    def clear(self) -> None:
        """Interrupt: drop the partial chunk and frame, gate off; the mouth decays to closed.

        The smoothed mouth state is kept, so the next frames close it (with the fast
        ``INTERRUPT_RELEASE_S`` until it is shut or speech resumes) instead of snapping; the level
        trackers are kept (same speaker). The video-frame grid restarts at the next pushed sample.
        """
        self._interrupted = True
        self._speech_run = 0
        self._features.reset()
        self._pending_len = 0
        self._received = 0
        self._frame_index = 0
        self._next_frame_end = self._frame_end(0)
        self._since_speech = self._hangover_chunks + 1
        self._speaking = False
        # An interrupted speaker stops nodding: the pose of the moment fades out in ~60 ms (no snap).
        self._head_hold = self._head() if self._nods else (0.0, 0.0)
        self._nods = []

    def _frame_end(self, k: int) -> int:
        """Sample index (exclusive) where video frame ``k`` ends, counted from the last clear()."""
        return round((k + 1) * SAMPLE_RATE_HZ / self.fps)

    # -- streaming ---------------------------------------------------------------------------------

    def push(self, samples: np.ndarray) -> list[MotionFrame]:
        """Feed (n,) 16 kHz mono samples; return the frames completed by them (possibly none)."""
        x = pcm_to_float32(np.asarray(samples).reshape(-1))
        out: list[MotionFrame] = []
        pos, n = 0, x.shape[0]
        while pos < n:
            # Advance to the next event: a full 20 ms chunk or the end of a video frame.
            step = min(n - pos, CHUNK_SAMPLES - self._pending_len, self._next_frame_end - self._received)
            self._pending[self._pending_len : self._pending_len + step] = x[pos : pos + step]
            self._pending_len += step
            self._received += step
            pos += step
            if self._pending_len == CHUNK_SAMPLES:
                self._process_chunk(self._pending)
                self._pending_len = 0
            if self._received == self._next_frame_end:
                out.append(self._emit())
                self._frame_index += 1
                self._next_frame_end = self._frame_end(self._frame_index)
        return out

    def _emit(self) -> MotionFrame:
        jaw, close, funnel, stretch = self._state
        vec = rig.zeros()
        vec[_JAW] = jaw
        # ARKit's mouthClose closes the lips against an open jaw; beyond jawOpen it would push the lips
        # through each other, so it is capped by the jaw.
        vec[_CLOSE] = min(close, jaw)
        vec[_FUNNEL] = funnel
        vec[_STRETCH_L] = stretch
        vec[_STRETCH_R] = stretch
        vec[_PITCH], vec[_YAW] = self._head()
        return MotionFrame(rig=rig.clamp(vec), speaking=self._speaking)

    def _head(self) -> tuple[float, float]:
        """Sum of the live nod pulses at the current chunk: (pitch, yaw) in degrees."""
        pitch, yaw = self._head_hold
        keep = []
        for start, amp_pitch, amp_yaw in self._nods:
            u = (self._chunk_count - start) * _CHUNK_S / self.NOD_PEAK_S
            if u > 5.0:  # under 1 % of the peak: over
                continue
            keep.append((start, amp_pitch, amp_yaw))
            shape = u * u * math.exp(2.0 * (1.0 - u))  # starts with zero speed, 1 at NOD_PEAK_S, decays
            pitch += amp_pitch * shape
            yaw += amp_yaw * shape
        self._nods = keep
        return pitch, yaw

    def _maybe_nod(self, level_db: float, raw_speech: bool, was_speaking: bool, pause_chunks: int) -> None:
        if not raw_speech:
            self._valley_db = min(self._valley_db, level_db)
            return
        assert self._peak_db is not None
        onset = not was_speaking and pause_chunks >= self._nod_pause_chunks
        accent = (
            level_db >= self._peak_db - self.NOD_ACCENT_DB and level_db - self._valley_db >= self.NOD_RISE_DB
        )
        self._valley_db = min(self._valley_db, level_db)
        if not (onset or accent) or self._chunk_count - self._last_nod < self._nod_refractory_chunks:
            return
        strength = _ramp(level_db, self._peak_db - 12.0, self._peak_db)
        amp = self.NOD_DEG[0] + (self.NOD_DEG[1] - self.NOD_DEG[0]) * strength
        side = 1.0 if self._rng.uniform() < 0.5 else -1.0
        self._nods.append((self._chunk_count, amp, side * self.NOD_YAW_SHARE * amp))
        self._last_nod = self._chunk_count
        self._valley_db = level_db  # the next accent needs a new valley-to-peak rise
        self.nod_starts.append(self._chunk_count)

    def _process_chunk(self, chunk: np.ndarray) -> None:
        feats = self._features.push(chunk)  # exactly CHUNK_SAMPLES // HOP rows: chunks are hop-aligned
        raw_speech = self._vad.is_speech(chunk)
        self._chunk_count += 1
        self._head_hold = (0.7 * self._head_hold[0], 0.7 * self._head_hold[1])
        pause_chunks = self._since_speech
        was_speaking = self._speaking
        self._since_speech = 0 if raw_speech else self._since_speech + 1
        self._speaking = self._since_speech <= self._hangover_chunks

        power = np.exp(feats.astype(np.float64)).mean(axis=0)
        level_db = _DB_PER_NEPER * math.log(float(power[N_MELS]) + 1e-12)
        self._track_levels(level_db, raw_speech)
        if self._peak_db is not None and not self._interrupted:
            self._maybe_nod(level_db, raw_speech, was_speaking, pause_chunks)

        if self._speaking and self._peak_db is not None:
            target = self._targets(level_db, power[:N_MELS] @ _BAND_SUMS)
        else:
            target = (0.0, 0.0, 0.0, 0.0)
        if self._interrupted:
            # Packets already in flight when the interrupt came still carry the old speech: keep the
            # gate shut until speech has lasted INTERRUPT_SPEECH_CHUNKS in a row (then it is new).
            self._speech_run = self._speech_run + 1 if raw_speech else 0
            if self._speech_run >= self.INTERRUPT_SPEECH_CHUNKS or max(self._state) < 1e-3:
                self._interrupted = False
            else:
                target = (0.0, 0.0, 0.0, 0.0)
        release = self._a_interrupt if self._interrupted else self._a_rel
        for i, goal in enumerate(target):
            cur = self._state[i]
            self._state[i] = cur + (self._a_att if goal > cur else release) * (goal - cur)

    def _track_levels(self, level_db: float, raw_speech: bool) -> None:
        # Floor: background level, falls fast and rises ~1 dB/s, so pauses inside speech pull it down.
        if self._floor_db is None or level_db < self._floor_db:
            self._floor_db = level_db
        else:
            self._floor_db += min(level_db - self._floor_db, 1.0 * _CHUNK_S)
        # Peak: level of loud speech; only VAD-speech chunks clearly above the floor update it. Attack
        # halves the gap per chunk; decay pulls 2.5% of the gap per speech chunk (tau ~0.8 s of speech),
        # so the consonants between two vowels lower it by a dB or two while a lasting change of input
        # gain (a quiet mic after a loud TTS) is followed within a couple of seconds of speech.
        if raw_speech and level_db > self._floor_db + 10.0:
            if self._peak_db is None:
                # First speech: onsets are soft, so start a little above them; the attack brings the
                # peak up to the vowels within a few chunks.
                self._peak_db = level_db + 6.0
            elif level_db > self._peak_db:
                self._peak_db += self.PEAK_ATTACK * (level_db - self._peak_db)
            else:
                self._peak_db += self.PEAK_DECAY * (level_db - self._peak_db)

    def _targets(self, level_db: float, sums: np.ndarray) -> tuple[float, float, float, float]:
        """Targets (jaw, close, funnel, stretch) in [0, 1] for one speech chunk; ``sums``: _BAND_SUMS."""
        assert self._peak_db is not None and self._floor_db is not None
        total, below_1k, below_4k, mid_band, high_band = (float(v) for v in sums)
        total += 1e-20
        low = below_1k / total
        mid = mid_band / (below_4k + 1e-20)
        high = high_band / total

        # Relative level: 1 at the speech peak, 0 at JAW_RANGE_DB below it, but never down in the
        # noise floor (a noisy mic must not move the mouth with its hiss).
        bottom = max(self._peak_db - self.JAW_RANGE_DB, self._floor_db + 3.0)
        bottom = min(bottom, self._peak_db - 10.0)
        loud = _ramp(level_db, bottom, self._peak_db)

        sibilant = _ramp(high, 0.25, 0.6)
        rounded = _ramp(mid, 0.15, 0.03) * _ramp(low, 0.6, 0.85)
        spread = _ramp(mid, 0.25, 0.45)
        # Open vowels (/a/) keep energy away from the lowest band (high F1); /i/ /u/ pile it below 1 kHz.
        openness = 0.7 + 0.3 * _ramp(low, 0.95, 0.65)

        # The power curve keeps soft consonants nearly closed and gives vowels the wide range.
        jaw = self.JAW_MAX * loud**self.JAW_GAMMA * openness * (1.0 - 0.6 * sibilant)
        funnel = 0.7 * rounded * _ramp(level_db, self._peak_db - 16.0, self._peak_db - 6.0)
        stretch = 0.5 * max(sibilant * _ramp(level_db, bottom, bottom + 6.0), spread * loud)
        # Far below the peak inside speech: a closure (stop gap, /m/ /b/ /p/) -> lips together.
        close = 0.6 * _ramp(level_db, self._peak_db - 18.0, self._peak_db - 28.0)
        return jaw, close, funnel, stretch

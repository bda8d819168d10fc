"""Idle life: blinks, breathing and head sway, so the portrait is never frozen.

``IdleLife.next(speaking)`` returns one additive rig vector per video frame; add it to a driver's
rig with ``combine``. Everything is a function of the frame counter and a seeded generator, so two
instances with the same seed and fps produce identical streams (tests, replays, A/B renders).

- Blinks: both eyes, 100-150 ms each (fast close, slower open). Intervals follow the right-skewed
  shape of human spontaneous blinking: 0.6 s + a gamma variable (shape 3), mean 3.5 s, capped at
  10 s; about 15% of events are double blinks (a second blink right after the first). The schedule
  depends only on time, not on speech.
- Breathing: a slow sine on headPitch (period 3.5-5 s, ~0.3 deg).
- Gaze shifts: every 0.8-4 s the eyes jump (a saccade, ~60 ms) to a new point near the centre (up to
  60% of the rig's gaze range sideways, 40% up or down), and about every third jump returns to the
  centre. Drawn from their own generator, so adding them left the blink schedule unchanged.
- Head drift: the head's position wanders by about a millimetre (headX/headY, two slow sines each).
- Head sway: per axis a sum of three sines with incommensurate frequencies in 0.05-0.35 Hz and random
  phases: smooth, never repeating within a session, and bounded by construction (the amplitudes sum to
  the axis limit, ~1.5 deg yaw). The sway eases to 70% while silent and back to 100% when speaking.
"""

from __future__ import annotations

import math

import numpy as np

from stream_avatar.motion import rig

__all__ = ["IdleLife", "combine"]

_BLINK_L = rig.index("eyeBlinkLeft")
_BLINK_R = rig.index("eyeBlinkRight")
_YAW = rig.index("headYaw")
_PITCH = rig.index("headPitch")
_ROLL = rig.index("headRoll")
_SHIFT_X = rig.index("headX")
_SHIFT_Y = rig.index("headY")
_LOOK = {name: rig.index(name) for name in rig.BLENDSHAPES if name.startswith("eyeLook")}


def gaze_rig(h: float, v: float) -> np.ndarray:
    """Gaze toward the image's right (h > 0) / up (v > 0), each in [-1, 1] → the eyeLook* values."""
    out = rig.zeros()
    if h > 0:
        out[_LOOK["eyeLookOutLeft"]] = out[_LOOK["eyeLookInRight"]] = h
    else:
        out[_LOOK["eyeLookInLeft"]] = out[_LOOK["eyeLookOutRight"]] = -h
    if v > 0:
        out[_LOOK["eyeLookUpLeft"]] = out[_LOOK["eyeLookUpRight"]] = v
    else:
        out[_LOOK["eyeLookDownLeft"]] = out[_LOOK["eyeLookDownRight"]] = -v
    return out


def combine(driver_rig: np.ndarray, idle_rig: np.ndarray) -> np.ndarray:
    """Driver rig + idle rig, clamped to the rig's ranges; any matching leading shape, float32."""
    return rig.clamp(np.asarray(driver_rig, dtype=np.float32) + np.asarray(idle_rig, dtype=np.float32))


def _blink_curve(u_s: float, duration_s: float) -> float:
    """Eyelid closure in [0, 1] at ``u_s`` seconds into a blink: 40% of the time closing, 60% opening."""
    if u_s < 0.0 or u_s >= duration_s:
        return 0.0
    close_s = 0.4 * duration_s
    if u_s < close_s:
        return math.sin(0.5 * math.pi * u_s / close_s)
    return math.cos(0.5 * math.pi * (u_s - close_s) / (duration_s - close_s))


class IdleLife:
    """Additive idle motion at ``fps`` frames per second, deterministic under ``seed``.

    ``next(speaking)`` -> (RIG_SIZE,) float32: eyeBlinkLeft/Right and eyeLook* in [0, 1],
    headYaw/Pitch/Roll in degrees, headX/headY in mm; all other coefficients 0.
    ``blink_starts_s`` lists the start time (s, from the last reset) of every blink event so far (a
    double blink is one event); ``gaze_shifts_s`` the time of every gaze jump.
    """

    BLINK_MIN_INTERVAL_S = 0.6
    BLINK_MEAN_INTERVAL_S = 3.5
    BLINK_MAX_INTERVAL_S = 10.0
    BLINK_GAMMA_SHAPE = 3.0
    BLINK_DURATION_S = (0.10, 0.15)
    DOUBLE_BLINK_PROB = 0.15
    DOUBLE_BLINK_GAP_S = (0.06, 0.14)  # eyes open between the two blinks of a double blink
    GAZE_INTERVAL_S = (0.8, 4.0)
    GAZE_RANGE = (0.6, 0.4)  # |h|, |v| of an idle gaze target
    GAZE_CENTRE_PROB = 0.35
    SACCADE_S = 0.06  # time constant of the jump
    SWAY_DEG = (1.5, 1.2, 1.0)  # yaw, pitch, roll bounds of the sway
    DRIFT_MM = (1.2, 0.8)  # headX, headY bounds of the slow drift of the head's position
    BREATH_DEG = 0.3
    BREATH_PERIOD_S = (3.5, 5.0)
    SILENT_SWAY = 0.7  # sway scale while silent (1.0 while speaking)
    SWAY_EASE_S = 0.8  # time constant of the change between the two

    def __init__(self, fps: float = 25, seed: int = 0) -> None:
        if not 1 <= fps <= 120:
            raise ValueError(f"fps must be in [1, 120], got {fps!r}")
        self.fps = fps
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Restart at t = 0 with the seed's stream (the same frames as a fresh instance)."""
        rng = np.random.default_rng(self.seed)
        # Draw every fixed parameter first, in a fixed order, then the blink schedule lazily: the
        # stream is then a pure function of (seed, fps, frame index, speaking flags).
        self._sway_freq_hz = rng.uniform(0.05, 0.35, size=(3, 3))
        self._sway_phase = rng.uniform(0.0, 2.0 * math.pi, size=(3, 3))
        weights = rng.uniform(0.5, 1.0, size=(3, 3))
        self._sway_amp_deg = weights / weights.sum(axis=1, keepdims=True) * np.asarray(self.SWAY_DEG)[:, None]
        self._breath_period_s = float(rng.uniform(*self.BREATH_PERIOD_S))
        drift_rng = np.random.default_rng([self.seed, 2])  # its own stream: the others stay as they were
        self._drift_freq_hz = drift_rng.uniform(0.03, 0.15, size=(2, 2))
        self._drift_phase = drift_rng.uniform(0.0, 2.0 * math.pi, size=(2, 2))
        self._drift_amp_mm = np.asarray(self.DRIFT_MM)[:, None] / 2.0
        self._breath_phase = float(rng.uniform(0.0, 2.0 * math.pi))
        self._rng = rng
        self._frame = 0
        self._sway_scale = self.SILENT_SWAY
        self._ease = 1.0 - math.exp(-1.0 / (self.fps * self.SWAY_EASE_S))
        self.blink_starts_s: list[float] = []
        self.blink_durations_s: list[float] = []  # one per blink (a double blink has two)
        self._active: list[tuple[float, float]] = []  # (start, duration) of blinks that may be visible
        # The first blink comes sooner than a full interval so a short clip still shows one.
        self._next_blink_s = float(rng.uniform(0.5, self.BLINK_MEAN_INTERVAL_S))
        self._gaze_rng = np.random.default_rng([self.seed, 1])
        self._gaze = np.zeros(2)
        self._gaze_target = np.zeros(2)
        self._next_gaze_s = float(self._gaze_rng.uniform(*self.GAZE_INTERVAL_S))
        self._saccade = 1.0 - math.exp(-1.0 / (self.fps * self.SACCADE_S))
        self.gaze_shifts_s: list[float] = []

    def _blink_interval_s(self) -> float:
        shape = self.BLINK_GAMMA_SHAPE
        scale = (self.BLINK_MEAN_INTERVAL_S - self.BLINK_MIN_INTERVAL_S) / shape
        interval = self.BLINK_MIN_INTERVAL_S + float(self._rng.gamma(shape, scale))
        return min(interval, self.BLINK_MAX_INTERVAL_S)

    def _add_blink(self, start: float) -> float:
        duration = float(self._rng.uniform(*self.BLINK_DURATION_S))
        self._active.append((start, duration))
        self.blink_durations_s.append(duration)
        return duration

    def next(self, speaking: bool = False) -> np.ndarray:
        """Motion for the next video frame (see class docstring)."""
        # Evaluate at the frame's centre: at 25 fps a 120 ms blink spans three frames and the middle
        # one lands near full closure instead of the first landing on an open eye.
        t = (self._frame + 0.5) / self.fps
        self._frame += 1
        out = rig.zeros()

        while self._next_blink_s <= t:
            start = self._next_blink_s
            self.blink_starts_s.append(start)
            duration = self._add_blink(start)
            if self._rng.uniform() < self.DOUBLE_BLINK_PROB:
                self._add_blink(start + duration + float(self._rng.uniform(*self.DOUBLE_BLINK_GAP_S)))
            self._next_blink_s = start + self._blink_interval_s()
        self._active = [(s, d) for s, d in self._active if t - s < d]
        blink = max((_blink_curve(t - s, d) for s, d in self._active), default=0.0)
        out[_BLINK_L] = blink
        out[_BLINK_R] = blink

        while self._next_gaze_s <= t:
            self.gaze_shifts_s.append(self._next_gaze_s)
            if self._gaze_rng.uniform() < self.GAZE_CENTRE_PROB:
                self._gaze_target = np.zeros(2)
            else:
                self._gaze_target = self._gaze_rng.uniform(-1.0, 1.0, 2) * np.asarray(self.GAZE_RANGE)
            self._next_gaze_s += float(self._gaze_rng.uniform(*self.GAZE_INTERVAL_S))
        self._gaze += self._saccade * (self._gaze_target - self._gaze)
        out += gaze_rig(float(self._gaze[0]), float(self._gaze[1]))

        goal = 1.0 if speaking else self.SILENT_SWAY
        self._sway_scale += self._ease * (goal - self._sway_scale)
        sway = (self._sway_amp_deg * np.sin(2.0 * math.pi * self._sway_freq_hz * t + self._sway_phase)).sum(
            axis=1
        )
        sway *= self._sway_scale
        breath = self.BREATH_DEG * math.sin(2.0 * math.pi * t / self._breath_period_s + self._breath_phase)
        drift = (
            self._drift_amp_mm * np.sin(2.0 * math.pi * self._drift_freq_hz * t + self._drift_phase)
        ).sum(axis=1)
        out[_SHIFT_X] = drift[0] * self._sway_scale
        out[_SHIFT_Y] = drift[1] * self._sway_scale
        out[_YAW] = sway[0]
        out[_PITCH] = sway[1] + breath
        out[_ROLL] = sway[2]
        return out

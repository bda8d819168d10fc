"""Emotions as facial action: the 8 MEAD emotions → FACS action units → rig coefficients.

Two tables, both plain data so they can be read and reviewed:

- ``EMOTION_AUS``: each emotion's prototype as action-unit intensities in [0, 1], following the
  EMFACS-style prototypes of Ekman & Friesen's FACS (happiness 6+12, sadness 1+4+15, anger 4+5+7+23,
  fear 1+2+4+5+7+20+26, disgust 9+10+15, surprise 1+2+5+26, contempt unilateral 12+14). The
  intensities are this project's choice: strong enough to read at a glance, not caricatures.
- ``AU_RIG``: each action unit as rig coefficients (ARKit blendshapes). Bilateral AUs drive both sides;
  a unilateral AU names its side with a suffix (``12R``: the subject's right lip corner only).

An emotion spec is a blend of weighted emotions, parsed from ``NAME[:INTENSITY]`` terms joined by
``+`` (``happy:0.7``, ``happy:0.5+surprised:0.4``). AU activations of the terms add up and are
clamped to [0, 1] before they become rig values, so a blend never exceeds a full expression.

``EmotionLayer`` holds the operator's current emotion for a stream and eases each change in
(first-order, ~0.25 s time constant: expressions have onsets, not cuts). Its rig is combined with
the speech/idle rig by ``blend``: blendshapes as 1 - (1 - a)(1 - b), which is monotone, stays in
[0, 1] and leaves each side unchanged when the other is zero; head angles are not touched.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

import numpy as np

from stream_avatar.motion import rig

EMOTIONS: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "angry",
    "fear",
    "disgusted",
    "surprised",
    "contempt",
)

# Action unit → rig coefficients at AU intensity 1. "L"/"R" suffixes are the subject's sides.
AU_RIG: dict[str, dict[str, float]] = {
    "1": {"browInnerUp": 1.0},  # inner brow raiser
    "2": {"browOuterUpLeft": 1.0, "browOuterUpRight": 1.0},  # outer brow raiser
    "4": {"browDownLeft": 1.0, "browDownRight": 1.0},  # brow lowerer (and draws the brows together)
    "5": {"eyeWideLeft": 1.0, "eyeWideRight": 1.0},  # upper lid raiser
    "6": {"cheekSquintLeft": 1.0, "cheekSquintRight": 1.0, "eyeSquintLeft": 0.3, "eyeSquintRight": 0.3},
    "7": {"eyeSquintLeft": 1.0, "eyeSquintRight": 1.0},  # lid tightener
    "9": {"noseSneerLeft": 1.0, "noseSneerRight": 1.0},  # nose wrinkler
    # upper lip raiser: the rig has no mouthUpperUp; the sneer's upper-lip pull and a rolled-out upper
    # lip come closest
    "10": {"noseSneerLeft": 0.5, "noseSneerRight": 0.5},
    "12": {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0},  # lip corner puller
    "12R": {"mouthSmileRight": 1.0},
    "14R": {"mouthPressRight": 0.6, "mouthStretchRight": 0.3},  # dimpler, one side
    "15": {"mouthFrownLeft": 1.0, "mouthFrownRight": 1.0},  # lip corner depressor
    "17": {"mouthRollLower": 0.3, "mouthPressLeft": 0.3, "mouthPressRight": 0.3},  # chin raiser
    "20": {"mouthStretchLeft": 1.0, "mouthStretchRight": 1.0},  # lip stretcher
    "23": {"mouthPressLeft": 0.6, "mouthPressRight": 0.6, "mouthPucker": 0.15},  # lip tightener
    "24": {"mouthPressLeft": 1.0, "mouthPressRight": 1.0},  # lip pressor
    "25": {"jawOpen": 0.06},  # lips part
    "26": {"jawOpen": 0.35},  # jaw drop
}

# Emotion → action-unit intensities at emotion intensity 1. A prototype's AU must be strong enough
# to show on a 256 px face (a lid moves ~1 px per 0.5 of AU5 or AU7 there): fear's lower lid is
# "tensed and drawn up" (AU7 0.5, not a trace) while its eyes still open wider (AU5 1.0, twice the
# lower lid's travel), anger glares (AU5 0.8 against AU4's lowered brow)
# with tensed lids (AU7 1.0, more than AU5, so the eyes still narrow), and disgust's lip corners go
# down (AU15 1.0) against the lift that AU9/AU10 give them.
EMOTION_AUS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"6": 0.8, "12": 1.0, "25": 0.5},
    "sad": {"1": 0.9, "4": 0.35, "15": 0.8, "17": 0.4},
    "angry": {"4": 1.0, "5": 0.8, "7": 1.0, "23": 1.0},
    "fear": {"1": 0.8, "2": 0.8, "4": 0.35, "5": 1.0, "7": 0.5, "20": 0.7, "26": 0.5},
    "disgusted": {"9": 0.9, "10": 0.6, "15": 1.0, "4": 0.3, "7": 0.3},
    "surprised": {"1": 0.9, "2": 0.9, "5": 0.9, "26": 0.7},
    "contempt": {"12R": 0.6, "14R": 0.8},
}
# The face tracks of the data engine's training data (``data.expressive.face_targets``) keep the
# prototype intensities the shipped models were trained with: the stronger ones above make the
# expressions show on the renderer's pixels; the tracks stand for what a face does, and changing them
# would change every dataset made since (and the models trained on them) without a retraining.
TRACK_AUS: dict[str, dict[str, float]] = {
    **EMOTION_AUS,
    "angry": {"4": 1.0, "5": 0.3, "7": 0.7, "23": 0.8},
    "fear": {"1": 0.8, "2": 0.6, "4": 0.35, "5": 0.9, "7": 0.2, "20": 0.7, "26": 0.3},
    "disgusted": {"9": 0.9, "10": 0.6, "15": 0.5, "4": 0.3, "7": 0.3},
}

EASE_TIME_CONSTANT_S = 0.25

# The voice-inferred emotion as a term of a spec: ``auto`` (or ``auto:W``, W its weight in (0, 1]).
AUTO = "auto"


class EmotionError(ValueError):
    """An emotion spec that cannot be parsed (one-line message naming the problem)."""


def _check_tables() -> None:
    for au, targets in AU_RIG.items():
        for name in targets:
            rig.index(name)  # KeyError names a typo
        del au
    assert set(TRACK_AUS) == set(EMOTION_AUS)
    for emotion, aus in [*EMOTION_AUS.items(), *TRACK_AUS.items()]:
        unknown = set(aus) - set(AU_RIG)
        if unknown:
            raise KeyError(f"{emotion}: unknown action units {sorted(unknown)}")


_check_tables()


def parse(spec: str) -> dict[str, float]:
    """``"happy:0.7+surprised:0.2"`` → ``{"happy": 0.7, "surprised": 0.2}``.

    A term without an intensity means 1.0; ``neutral`` (or an empty spec) means no expression.
    ``auto`` is the emotion inferred from the voice (``"auto"``, ``"auto+happy:0.3"``; see ``split``).
    Raises EmotionError for unknown names, intensities outside [0, 1] or repeated names.
    """
    weights: dict[str, float] = {}
    text = spec.strip().lower()
    if not text:
        return weights
    for term in text.split("+"):
        name, sep, value = term.strip().partition(":")
        name = name.strip()
        if name not in EMOTIONS and name != AUTO:
            raise EmotionError(f"unknown emotion {name!r} (known: auto, {', '.join(EMOTIONS)})")
        try:
            intensity = float(value) if sep else 1.0
        except ValueError:
            raise EmotionError(
                f"intensity of {name} must be a number in [0, 1], got {value.strip()!r}"
            ) from None
        if not (0.0 <= intensity <= 1.0) or math.isnan(intensity):
            raise EmotionError(f"intensity of {name} must lie in [0, 1], got {intensity}")
        if name in weights:
            raise EmotionError(f"emotion {name} given twice")
        weights[name] = intensity
    if weights.get(AUTO, 1.0) == 0.0:
        raise EmotionError("auto needs a weight in (0, 1]; leave it out for operator-only")
    return {k: v for k, v in weights.items() if k != "neutral"}


def split(weights: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """A spec's weights → (weight of the voice-inferred emotion, operator emotions).

    ``{"happy": 0.7}`` → (0, {"happy": 0.7}): operator only, the voice is ignored.
    ``{"auto": 1}`` → (1, {}): the face shows what the voice carries.
    ``{"auto": 1, "happy": 0.3}`` → (0.7, {"happy": 0.3}): an operator term's intensity is also the
    share of the face it takes, so the inferred emotion keeps ``W · (1 - min(1, Σ intensities))``.
    """
    operator = {k: float(v) for k, v in weights.items() if k not in (AUTO, "neutral")}
    if AUTO not in weights:
        return 0.0, operator
    return float(weights[AUTO]) * (1.0 - min(1.0, sum(operator.values()))), operator


def validate(weights: Mapping[str, object]) -> dict[str, float]:
    """A weights mapping from untrusted input (e.g. a control message) → clean weights, or EmotionError."""
    out: dict[str, float] = {}
    for name, value in weights.items():
        if name not in EMOTIONS and name != AUTO:
            raise EmotionError(f"unknown emotion {name!r} (known: auto, {', '.join(EMOTIONS)})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EmotionError(f"intensity of {name} must be a number in [0, 1]")
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise EmotionError(f"intensity of {name} must lie in [0, 1], got {v}")
        if name == AUTO and v == 0.0:
            raise EmotionError("auto needs a weight in (0, 1]; leave it out for operator-only")
        if name != "neutral":
            out[name] = v
    return out


def format_spec(weights: Mapping[str, float]) -> str:
    """The inverse of ``parse``: ``{"happy": 0.7}`` → ``"happy:0.7"``; empty → ``"neutral"``."""
    terms = [
        AUTO if name == AUTO and value == 1.0 else f"{name}:{value:g}"
        for name, value in weights.items()
        if value > 0
    ]
    return "+".join(terms) or "neutral"


def action_units(
    weights: Mapping[str, float], table: Mapping[str, Mapping[str, float]] = EMOTION_AUS
) -> dict[str, float]:
    """Blend of emotions → AU intensities, summed over the terms and clamped to [0, 1]."""
    aus: dict[str, float] = {}
    for name, w in weights.items():
        if name == AUTO:
            continue  # the inferred part is given as emotions by the engine (EmotionLayer.set_inferred)
        for au, a in table[name].items():
            aus[au] = aus.get(au, 0.0) + w * a
    return {au: min(1.0, a) for au, a in aus.items()}


def expression_rig(
    weights: Mapping[str, float], table: Mapping[str, Mapping[str, float]] = EMOTION_AUS
) -> np.ndarray:
    """Blend of emotions → (RIG_SIZE,) float32 rig (blendshapes only; head angles 0), in [0, 1].
    ``table``: ``EMOTION_AUS`` (what the renderer shows) or ``TRACK_AUS`` (the training data's tracks)."""
    out = rig.zeros()
    for au, a in action_units(weights, table).items():
        for name, value in AU_RIG[au].items():
            out[rig.index(name)] += a * value
    return rig.clamp(out)


def blend(base: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """Speech/idle rig ⊕ expression rig: blendshapes 1 - (1 - a)(1 - b), head angles of ``base``."""
    out = np.asarray(base, np.float32).copy()
    k = rig.NUM_BLENDSHAPES
    a = np.clip(out[..., :k], 0.0, 1.0)
    b = np.clip(np.asarray(expression, np.float32)[..., :k], 0.0, 1.0)
    out[..., :k] = 1.0 - (1.0 - a) * (1.0 - b)
    return out


class EmotionLayer:
    """The stream's emotion (operator's and voice-inferred), eased toward each new target per frame.

    ``set(weights)`` (the spec, ``auto`` included) may be called from any thread (the event loop);
    ``set_inferred(weights)`` gives the emotion inferred from the voice (emotion → intensity, from the
    emotion model), used only while the spec has ``auto``; ``next()`` and ``apply(rig)`` run on the
    engine worker, once per frame. The target is the operator's emotions plus the inferred ones scaled
    by ``split``'s weight.
    """

    def __init__(
        self,
        fps: int,
        weights: Mapping[str, float] | None = None,
        time_constant_s: float = EASE_TIME_CONSTANT_S,
    ) -> None:
        self._lock = threading.Lock()
        self._weights = dict(weights or {})
        self._inferred: dict[str, float] = {}
        self._target = expression_rig(self._effective_locked())
        self._current = self._target.copy()  # the initial emotion is there from the first frame
        self._alpha = 1.0 - math.exp(-1.0 / (fps * time_constant_s)) if time_constant_s > 0 else 1.0

    @property
    def weights(self) -> dict[str, float]:
        with self._lock:
            return dict(self._weights)

    @property
    def auto(self) -> bool:
        """Whether the spec asks for the voice-inferred emotion."""
        with self._lock:
            return AUTO in self._weights

    def effective(self) -> dict[str, float]:
        """The emotions the face is moving toward (operator + weighted inferred), no ``auto`` key."""
        with self._lock:
            return self._effective_locked()

    def _effective_locked(self) -> dict[str, float]:
        w_auto, out = split(self._weights)
        if w_auto > 0.0:
            for name, v in self._inferred.items():
                if name != "neutral":
                    out[name] = out.get(name, 0.0) + w_auto * float(v)
        return out

    def set(self, weights: Mapping[str, float]) -> None:
        with self._lock:
            self._weights = dict(weights)
            self._target = expression_rig(self._effective_locked())

    def set_inferred(self, weights: Mapping[str, float]) -> None:
        with self._lock:
            self._inferred = {k: float(v) for k, v in weights.items() if k in EMOTIONS}
            self._target = expression_rig(self._effective_locked())

    def next(self) -> np.ndarray:
        """The expression rig of the next frame (moves a step toward the target)."""
        with self._lock:
            target = self._target
        self._current = self._current + self._alpha * (target - self._current)
        return self._current.copy()

    def apply(self, base: np.ndarray) -> np.ndarray:
        """``blend(base, next())`` for one frame's rig."""
        return blend(base, self.next())

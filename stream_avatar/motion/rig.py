"""The rig: the one motion vector shared by drivers, renderer, data channel and fitter.

A rig frame is a float32 vector of ``RIG_SIZE`` values laid out as ``RIG_NAMES``:
ARKit blendshape names (values in [0, 1]) followed by the head pose: angles in degrees
(``headYaw``, ``headPitch``, ``headRoll``; clamped to ``HEAD_LIMIT_DEG``) and a translation in
millimetres (``headX`` toward the image's right, ``headY`` down; clamped to ``HEAD_LIMIT_MM``; the
renderer converts with a 63 mm inter-ocular distance).

Sides follow ARKit: ``...Left`` is the subject's left, which is the image's right
in an unmirrored portrait. Gaze follows ARKit too: ``eyeLookIn`` turns that eye toward the
nose, ``eyeLookOut`` away from it, so looking toward the image's right is
``eyeLookOutLeft`` + ``eyeLookInRight``.

Sign conventions for head pose, in image terms: positive yaw turns the face toward the
image's right, positive pitch tilts the chin down (nod), positive roll tilts the head
clockwise as seen in the image.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

BLENDSHAPES: tuple[str, ...] = (
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthPressLeft",
    "mouthPressRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeWideLeft",
    "eyeWideRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "browInnerUp",
    "browDownLeft",
    "browDownRight",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekSquintLeft",
    "cheekSquintRight",
    "cheekPuff",
    "noseSneerLeft",
    "noseSneerRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
)
HEAD_ANGLES: tuple[str, ...] = ("headYaw", "headPitch", "headRoll")
HEAD_SHIFT: tuple[str, ...] = ("headX", "headY")
HEAD_POSE: tuple[str, ...] = HEAD_ANGLES + HEAD_SHIFT
RIG_NAMES: tuple[str, ...] = BLENDSHAPES + HEAD_POSE
RIG_SIZE: int = len(RIG_NAMES)
NUM_BLENDSHAPES: int = len(BLENDSHAPES)
HEAD_LIMIT_DEG: float = 15.0
HEAD_LIMIT_MM: float = 15.0
IOD_MM: float = 63.0  # adult mean inter-ocular distance: converts the face's own scale to mm
_LIMITS = np.array([HEAD_LIMIT_DEG] * len(HEAD_ANGLES) + [HEAD_LIMIT_MM] * len(HEAD_SHIFT), np.float32)

_INDEX: dict[str, int] = {name: i for i, name in enumerate(RIG_NAMES)}


def index(name: str) -> int:
    """Position of ``name`` in the rig vector; ``KeyError`` names the unknown coefficient."""
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown rig coefficient {name!r}") from None


def zeros(batch: int | None = None) -> np.ndarray:
    """A neutral rig: shape (RIG_SIZE,) or (batch, RIG_SIZE), float32."""
    shape = (RIG_SIZE,) if batch is None else (batch, RIG_SIZE)
    return np.zeros(shape, dtype=np.float32)


def clamp(rig: np.ndarray) -> np.ndarray:
    """Clamp blendshapes to [0, 1], head angles to +-HEAD_LIMIT_DEG and the head's shift to
    +-HEAD_LIMIT_MM (any leading shape)."""
    out = np.asarray(rig, dtype=np.float32).copy()
    out[..., :NUM_BLENDSHAPES] = np.clip(out[..., :NUM_BLENDSHAPES], 0.0, 1.0)
    out[..., NUM_BLENDSHAPES:] = np.clip(out[..., NUM_BLENDSHAPES:], -_LIMITS, _LIMITS)
    return out


def from_dict(values: Mapping[str, float]) -> np.ndarray:
    """Build a rig vector from ``{name: value}``; missing names are 0, unknown names raise."""
    rig = zeros()
    for name, value in values.items():
        rig[index(name)] = float(value)
    return clamp(rig)


def to_dict(rig: np.ndarray, digits: int = 4) -> dict[str, float]:
    """``{name: value}`` for one rig vector, rounded for transport (JSON, data channel)."""
    vec = np.asarray(rig, dtype=np.float32).reshape(RIG_SIZE)
    return {name: round(float(v), digits) for name, v in zip(RIG_NAMES, vec, strict=True)}

"""Reference-clip emotion, the emotion side: rig coefficients of a face → the emotion they show.

The rigs come from a face video through the capture stage (``stream_avatar.capture.reference``:
Face Mesh + the inverse fitter), which is where the whole clip → emotion path (``clip_emotion``) lives;
this module sees only rig coefficients, never a face's pixels or landmarks. Windows of 2 s every
200 ms go through the embedder with the audio branch absent (trained with modality dropout) and the
bank; their probabilities and intensities are averaged into operator-style weights.

A clip's head pose is taken relative to its own median first: a constant pose is the camera's framing
and the person's posture, not an expression. Fitted against a stand-in neutral face (a reference clip
rarely has its own), a clip's framing reads as a large constant head offset (measured on clips
rendered from the default portrait: headX at the fitter's -15 mm limit, roll -4°), which the
embedder, trained on head movement around a resting pose at zero, read as "surprised" for every
emotion but happy. Head movement (nods, tilts) stays.
"""

from __future__ import annotations

import numpy as np

from stream_avatar.emotion.facs import EMOTIONS
from stream_avatar.motion import rig


class ReferenceError(ValueError):
    """A reference clip that cannot be read or shows no face (one-line message)."""


def rig_emotion(model: object, rigs: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """Rigs (frames, RIG_SIZE) → (weights, probabilities): windows of 2 s every 200 ms, averaged."""
    from stream_avatar.emotion.inference import EmotionModel

    assert isinstance(model, EmotionModel)
    cfg = model.config
    rigs = np.array(rigs, np.float32).reshape(-1, rig.RIG_SIZE)
    if rigs.shape[0]:
        k = rig.NUM_BLENDSHAPES
        rigs[:, k:] -= np.median(rigs[:, k:], axis=0)
    w = min(cfg.window_frames, rigs.shape[0])
    ends = list(range(w, rigs.shape[0] + 1, cfg.update_frames)) or [rigs.shape[0]]
    windows = np.stack([rigs[e - w : e] for e in ends])
    estimates = model.estimate_windows(None, windows)
    probs = np.mean([e.probs for e in estimates], axis=0)
    intensity = float(np.mean([e.intensity for e in estimates]))
    best = int(np.argmax(probs))
    weights = {} if best == 0 else {EMOTIONS[best]: round(min(1.0, max(0.1, intensity)), 2)}
    return weights, {name: round(float(p), 4) for name, p in zip(EMOTIONS, probs, strict=True)}

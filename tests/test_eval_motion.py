"""The lip-sync metric: Pearson r, the lag of best correlation, the causal driver harness."""

from __future__ import annotations

import numpy as np
import pytest

from stream_avatar.eval.motion import best_lag, energy_envelope, pearson, predict_jaw
from stream_avatar.motion.dsp_driver import DSPMouthDriver


def test_pearson_and_lag_sign() -> None:
    rng = np.random.default_rng(0)
    target = np.convolve(rng.standard_normal(400), np.ones(5) / 5, mode="same")
    assert pearson(target, 2 * target + 1) == pytest.approx(1.0)
    assert np.isnan(pearson(np.ones(10), target[:10]))
    late = np.concatenate([np.zeros(2), target[:-2]])  # prediction two frames late
    lag, r = best_lag(late, target)
    assert lag == 2 and r > 0.99
    early = np.concatenate([target[3:], np.zeros(3)])
    assert best_lag(early, target)[0] == -3


def test_predict_jaw_gives_one_value_per_frame() -> None:
    audio = np.zeros(16000 + 100, np.float32)  # a partial last frame is padded, as the engine does
    jaw = predict_jaw(DSPMouthDriver, audio)
    assert jaw.shape == (26,) and np.all(jaw == 0)
    assert energy_envelope(audio).shape == (26,)

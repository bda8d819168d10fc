"""Voice quality of the emotional synthetic speech (``expressive.render_voice_quality``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stream_avatar.data import expressive

pytest.importorskip("scipy")

SR = 16000


def _voice(seconds: float = 1.0, f0: float = 140.0) -> np.ndarray:
    """A voiced sound: harmonics falling 12 dB per octave, as a glottal source does, 16 kHz."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k**2 for k in range(1, 60) if f0 * k < 7500)
    return (0.2 * x / np.max(np.abs(x))).astype(np.float32)


def _band_db(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / SR)
    return float(10 * np.log10(spec[(f >= lo) & (f < hi)].sum() + 1e-20))


def _tilt(x: np.ndarray) -> float:
    return _band_db(x, 2500, 7000) - _band_db(x, 80, 800)


def _vq(**kw: float) -> expressive.VoiceQuality:
    base = {"tilt_db": 0.0, "breath": 0.0, "tremor": 0.0, "tremor_hz": 5.5, "tension": 0.0}
    return expressive.VoiceQuality(**{**base, **kw})


def test_same_length_same_rms_and_deterministic() -> None:
    x = _voice()
    for emo in sorted(expressive.VOICE_QUALITY):
        vq = expressive.voice_quality_for(emo, 1.0, np.random.default_rng(0))
        y = expressive.render_voice_quality(x, vq, np.random.default_rng(1))
        z = expressive.render_voice_quality(x, vq, np.random.default_rng(1))
        assert y.shape == x.shape and y.dtype == np.float32
        assert np.array_equal(y, z)
        assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=0.02)
    silent = np.zeros(800, np.float32)
    quiet = expressive.render_voice_quality(silent, _vq(tension=1.0), np.random.default_rng(0))
    assert np.array_equal(quiet, silent)


def test_tilt_tension_and_breath_move_the_high_frequencies() -> None:
    x = _voice()
    rng = np.random.default_rng
    base = _tilt(x)
    assert _tilt(expressive.render_voice_quality(x, _vq(tilt_db=6.0), rng(0))) > base + 3.0
    assert _tilt(expressive.render_voice_quality(x, _vq(tilt_db=-6.0), rng(0))) < base - 3.0
    assert _tilt(expressive.render_voice_quality(x, _vq(tension=1.0), rng(0))) > base + 3.0
    # Aspiration noise fills the gaps between the harmonics (noise floor up), harmonics unchanged.
    spec = lambda a: np.abs(np.fft.rfft(a[:SR] * np.hanning(SR))) ** 2  # noqa: E731 — 1 Hz bins
    gap = lambda s: float(np.median(s[3000 + 70 : 6000 : 140]))  # noqa: E731 — halfway between harmonics
    assert gap(spec(expressive.render_voice_quality(x, _vq(breath=0.05), rng(0)))) > 30 * gap(spec(x))


def test_tremor_modulates_the_pitch_at_its_rate() -> None:
    t = np.arange(2 * SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
    y = expressive.render_voice_quality(tone, _vq(tremor=1.0, tremor_hz=5.0), np.random.default_rng(0))
    # Instantaneous frequency from zero crossings: ±(2^(60/1200) - 1) = ±3.5 % around 200 Hz.
    s = y[SR // 4 : -SR // 4].astype(np.float64)
    idx = np.nonzero((s[:-1] < 0) & (s[1:] >= 0))[0]
    exact = idx + s[idx] / (s[idx] - s[idx + 1])
    f = SR / np.diff(exact)
    assert 205.0 < f.max() < 210.0 and 190.0 < f.min() < 195.0
    assert np.array_equal(
        expressive.render_voice_quality(tone, _vq(), np.random.default_rng(0)).round(4), tone.round(4)
    )


def test_emotions_differ_in_the_intended_direction() -> None:
    """At intensity 1 without jitter, the voiced sound (aspiration noise aside, a cue of its own):
    angry brighter than happy, than neutral, than sad; fear trembles most; neutral is untouched."""
    x = _voice()

    def render(emo: str) -> np.ndarray:
        tilt, _breath, tremor, tension, _range = expressive.VOICE_QUALITY[emo]
        vq = _vq(tilt_db=tilt, tremor=tremor, tension=tension)
        return expressive.render_voice_quality(x, vq, np.random.default_rng(0))

    assert _tilt(render("angry")) > _tilt(render("happy")) > _tilt(render("neutral")) > _tilt(render("sad"))
    tremors = {k: v[2] for k, v in expressive.VOICE_QUALITY.items()}
    assert tremors["fear"] > max(v for k, v in tremors.items() if k != "fear")
    assert expressive.VOICE_QUALITY["neutral"] == (0.0, 0.0, 0.0, 0.0, 1.0)
    ranges = {k: v[4] for k, v in expressive.VOICE_QUALITY.items()}
    assert ranges["surprised"] > ranges["happy"] > ranges["neutral"] > ranges["contempt"] > ranges["sad"]


def test_dataset_plans_keep_their_timing_with_voice_quality() -> None:
    """The same plan with and without voice quality: same phones and length, other audio, recorded.

    Flite: its output is the same on every call (espeak-ng's length can differ by a few samples
    between calls in one process, so it cannot show that nothing moved)."""
    from stream_avatar.data import flite
    from stream_avatar.data.synth import DatasetConfig, Plan, make_example, make_speakers

    if "awb" not in flite.installed_voices():
        pytest.skip("Debian flite (voice awb) is not installed")
    cfg = DatasetConfig(hours=0.01, languages=("en",), holdout_language=None, synthesizers=("flite",))
    speaker = next(s for s in make_speakers(cfg) if s.voice == "awb")
    plan = Plan(0, 7, "The weather is lovely today.", speaker, "angry", 1.0, "train", False)
    plain = make_example(plan)
    voiced = make_example(dataclasses.replace(plan, voice_quality=True))
    assert plain.voice is None and voiced.voice is not None
    assert voiced.phonemes == plain.phonemes and voiced.audio.shape == plain.audio.shape
    assert not np.array_equal(voiced.audio, plain.audio)
    assert np.array_equal(voiced.targets, plain.targets)
    assert voiced.voice.tension > 0.5 and voiced.voice.tilt_db > 3.0


def test_pitch_range_scales_the_f0_spread_and_keeps_length() -> None:
    """The WORLD pass: a voice gliding 120-180 Hz keeps its median and timing; its log-f0 spread
    scales with the factor (read back by the emotion tokens' own pitch tracker)."""
    pytest.importorskip("pyworld")
    from stream_avatar.emotion.features import clip_tokens

    t = np.arange(2 * SR) / SR
    f0 = 150.0 * 2.0 ** (0.3 * np.sin(2 * np.pi * 1.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = (0.2 * sum(np.sin(k * phase) / k**2 for k in range(1, 30))).astype(np.float32)

    def spread(a: np.ndarray) -> tuple[float, float]:
        tok = clip_tokens(a)
        lf = tok[tok[:, -1] > 0, -2]
        return float(np.percentile(lf, 90) - np.percentile(lf, 10)), float(np.median(lf))

    base, mid = spread(x)
    for factor in (0.5, 2.0):
        y = expressive.render_pitch_range(x, factor)
        assert y.shape == x.shape
        s, m = spread(y)
        assert abs(s / base - factor) < 0.25 * factor, (factor, s, base)
        assert abs(m - mid) < 0.05
    vq = _vq(range_factor=2.0)
    assert spread(expressive.render_voice_quality(x, vq, np.random.default_rng(0)))[0] > 1.6 * base

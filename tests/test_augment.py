"""Speech augmentation (``stream_avatar/data/augment.py``): each transform does what it claims, changes
timing only where it says so, and the chain is deterministic under a seed.

Most tests use a synthetic speech-like signal (voiced syllables with a gliding pitch and formant-shaped
harmonics, fricative noise bursts, pauses of exact digital silence as espeak-ng writes them), built
here in milliseconds. The Opus test also runs on real espeak-ng speech (``speech_16k`` from
conftest.py, which skips visibly without the ``espeak-ng`` command).
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_avatar.data.augment import (
    CHAIN_ORDER,
    NOISE_KINDS,
    TELEPHONE_BAND_HZ,
    AugmentConfig,
    active_rms,
    add_noise,
    apply_gain,
    augment,
    band_limit,
    change_speed,
    convolve_rir,
    make_noise,
    opus_round_trip,
    reverberate,
    room_impulse_response,
    soft_limit,
)

SR = 16000
ONE_MS = SR // 1000


def speech_like(seed: int, seconds: float = 3.0) -> np.ndarray:
    """(n,) float32 16 kHz: voiced syllables (f0 100-220 Hz, formant-weighted harmonics up to 5 kHz),
    some fricative noise bursts, and 50-400 ms pauses of digital silence. Peak 0.5."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n)
    pos = int(0.2 * SR)
    while pos < n - int(0.3 * SR):
        dur = int(rng.uniform(0.12, 0.3) * SR)
        t = np.arange(dur) / SR
        if rng.random() < 0.25:  # fricative: high-passed noise
            burst = np.diff(rng.standard_normal(dur + 1)) * 0.3
        else:
            f0 = rng.uniform(100, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
            phase = 2 * np.pi * np.cumsum(f0) / SR
            formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
            burst = np.zeros(dur)
            for h in range(1, 40):
                fh = h * f0.mean()
                if fh > 5000:
                    break
                weight = sum(np.exp(-(((fh - fm) / 150.0) ** 2)) for fm in formants) + 0.05 / h
                burst += weight * np.sin(h * phase)
        burst *= np.hanning(dur) * rng.uniform(0.3, 1.0)
        out[pos : pos + dur] += burst
        pos += dur + int(rng.uniform(0.05, 0.4) * SR)
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def xcorr_lag(y: np.ndarray, x: np.ndarray, max_lag: int = 800) -> int:
    """Lag (samples) of the cross-correlation peak: > 0 means ``y`` is late relative to ``x``."""
    from scipy.signal import correlate

    m = min(y.size, x.size)
    cc = correlate(y[:m].astype(np.float64), x[:m].astype(np.float64), mode="full", method="fft")
    lags = np.arange(-(m - 1), m)
    keep = np.abs(lags) <= max_lag
    return int(lags[keep][np.argmax(cc[keep])])


def band_power(x: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1.0 / SR)
    return float(spec[(freqs >= lo_hz) & (freqs < hi_hz)].sum())


def schroeder_rt60(rir: np.ndarray) -> float:
    """RT60 from the T20 fit (-5 to -25 dB) of the Schroeder backward-integrated energy decay."""
    energy = np.cumsum(np.square(rir.astype(np.float64))[::-1])[::-1]
    edc_db = 10 * np.log10(energy / energy[0])
    idx = np.flatnonzero((edc_db <= -5.0) & (edc_db >= -25.0))
    slope, _ = np.polyfit(idx / SR, edc_db[idx], 1)
    return float(-60.0 / slope)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speech_like(0)


# ------------------------------------------------------------------------------------------ level


def test_active_rms_ignores_pauses() -> None:
    tone = 0.1 * np.sqrt(2) * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)
    padded = np.concatenate([tone, np.zeros(3 * SR)])
    assert active_rms(padded) == pytest.approx(0.1, rel=0.01)
    assert np.sqrt(np.mean(padded**2)) == pytest.approx(0.05, rel=0.01)  # the diluted mean it avoids
    assert active_rms(np.zeros(SR)) == 0.0


# ------------------------------------------------------------------------------------- determinism


def test_augment_is_deterministic_under_a_seed(speech: np.ndarray) -> None:
    everything = AugmentConfig(p_clean=0, p_speed=1, p_reverb=1, p_band=1, p_noise=1, p_gain=1, p_opus=1)
    a = augment(speech, np.random.default_rng(7), everything)
    b = augment(speech, np.random.default_rng(7), everything)
    assert np.array_equal(a.samples, b.samples)
    assert a.applied == b.applied and a.params == b.params and a.time_scale == b.time_scale
    c = augment(speech, np.random.default_rng(8), everything)
    assert c.params != a.params
    m = min(a.samples.size, c.samples.size)
    assert not np.allclose(a.samples[:m], c.samples[:m])
    # Transforms with internal randomness follow the generator too.
    n1 = add_noise(speech, np.random.default_rng(3), 10.0, "pink")
    n2 = add_noise(speech, np.random.default_rng(3), 10.0, "pink")
    n3 = add_noise(speech, np.random.default_rng(4), 10.0, "pink")
    assert np.array_equal(n1, n2) and not np.array_equal(n1, n3)


# ------------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("snr_db", [0.0, 12.0, 30.0])
def test_noise_hits_requested_snr_against_active_level(speech: np.ndarray, kind: str, snr_db: float) -> None:
    babble = [speech_like(s, seconds=2.0) for s in (11, 12, 13)]
    y = add_noise(speech, np.random.default_rng(1), snr_db, kind, babble_sources=babble)
    assert y.shape == speech.shape and y.dtype == np.float32
    noise = y.astype(np.float64) - speech
    measured = 10 * np.log10(active_rms(speech) ** 2 / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=1.0)


def test_noise_spectra_have_their_colour() -> None:
    n = 4 * SR
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    band = (freqs > 100) & (freqs < 4000)
    slopes = {}
    for kind in ("white", "pink", "brown"):
        psd = np.abs(np.fft.rfft(make_noise(kind, n, np.random.default_rng(0)))) ** 2
        slopes[kind] = np.polyfit(np.log10(freqs[band]), np.log10(psd[band]), 1)[0]
    assert slopes["white"] == pytest.approx(0.0, abs=0.15)
    assert slopes["pink"] == pytest.approx(-1.0, abs=0.15)
    assert slopes["brown"] == pytest.approx(-2.0, abs=0.15)
    hum = make_noise("hum", n, np.random.default_rng(0))
    psd = np.abs(np.fft.rfft(hum * np.hanning(n))) ** 2  # Hann: off-bin tones leak little
    near_mains = np.zeros_like(band)
    for mains in (50.0, 60.0):
        for h in range(1, 13):
            near_mains |= np.abs(freqs - h * mains) < h * 0.2 + 1.0
    assert psd[near_mains].sum() > 0.99 * psd.sum()
    with pytest.raises(ValueError, match="babble"):
        make_noise("babble", n, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ reverb


@pytest.mark.parametrize(("rt60_s", "drr_db"), [(0.15, 12.0), (0.4, 3.0), (0.8, 0.0)])
def test_reverb_decay_delay_and_level(speech: np.ndarray, rt60_s: float, drr_db: float) -> None:
    rir = room_impulse_response(np.random.default_rng(5), rt60_s, drr_db)
    assert rir[0] == 1.0 and np.argmax(np.abs(rir)) == 0  # direct path first and strongest
    assert schroeder_rt60(rir) == pytest.approx(rt60_s, rel=0.25)
    direct, rest = rir[0] ** 2, np.sum(rir[1:].astype(np.float64) ** 2)
    assert 10 * np.log10(direct / rest) == pytest.approx(drr_db, abs=0.01)
    y = reverberate(speech, np.random.default_rng(5), rt60_s, drr_db)
    assert np.array_equal(y, convolve_rir(speech, rir))
    assert y.shape == speech.shape
    assert xcorr_lag(y, speech) == 0
    level_change_db = 20 * np.log10(active_rms(y) / active_rms(speech))
    assert abs(level_change_db) < 1.0
    assert np.corrcoef(y, speech)[0, 1] < 0.99  # it did something


# -------------------------------------------------------------------------------------- band-limit


@pytest.mark.parametrize(
    ("low_hz", "high_hz"), [(None, 3400.0), (None, 5000.0), (800.0, None), TELEPHONE_BAND_HZ]
)
def test_band_limit_attenuates_outside_band_without_shift(
    speech: np.ndarray, low_hz: float | None, high_hz: float | None
) -> None:
    white = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.1
    y = band_limit(white, low_hz, high_hz)
    assert y.shape == white.shape
    # Beyond a 20 % transition band past each corner (where the zero-phase response is -6 dB at
    # the corner itself), the stop band is at least 20 dB down.
    if high_hz is not None:
        stop = (1.2 * high_hz, SR / 2)
        assert 10 * np.log10(band_power(white, *stop) / band_power(y, *stop)) > 20.0
    if low_hz is not None:
        stop = (0.0, low_hz / 1.2)
        assert 10 * np.log10(band_power(white, *stop) / band_power(y, *stop)) > 20.0
    mid = (1.3 * (low_hz or 100.0), 0.75 * (high_hz or 7000.0))
    assert abs(10 * np.log10(band_power(y, *mid) / band_power(white, *mid))) < 1.0
    assert xcorr_lag(band_limit(speech, low_hz, high_hz), speech) == 0
    with pytest.raises(ValueError):
        band_limit(white, 3000.0, 1000.0)


# ------------------------------------------------------------------------------------------- speed


@pytest.mark.parametrize("factor", [0.9, 0.95, 1.07, 1.1])
def test_speed_scales_length_timeline_and_pitch(factor: float) -> None:
    n = 3 * SR
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / SR)).astype(np.float32)
    y, time_scale = change_speed(tone, factor)
    assert abs(y.size - n / factor) <= 1.0
    assert time_scale == pytest.approx(1.0 / factor, rel=1.0 / SR)
    assert y.size == round(n * time_scale)
    body = y[ONE_MS * 100 : -ONE_MS * 100].astype(np.float64)
    spec = np.abs(np.fft.rfft(body * np.hanning(body.size), 16 * body.size))
    peak_hz = np.argmax(spec) * SR / (16 * body.size)
    assert peak_hz == pytest.approx(440.0 * factor, rel=2e-3)
    same, one = change_speed(tone, 1.0)
    assert one == 1.0 and np.array_equal(same, tone)


# -------------------------------------------------------------------------------------------- gain


def test_gain_clips_or_limits_to_full_scale(speech: np.ndarray) -> None:
    hot = apply_gain(speech, 12.0, "clip")
    assert np.max(np.abs(hot)) == 1.0 and np.mean(np.abs(hot) == 1.0) > 0.001
    soft = apply_gain(speech, 12.0, "soft")
    assert np.max(np.abs(soft)) < 1.0
    quiet = apply_gain(speech, -6.0, "soft")
    assert np.allclose(quiet, speech * 10 ** (-6 / 20), atol=1e-6)  # below the knee: untouched
    ramp = soft_limit(np.linspace(-5, 5, 1001))
    assert np.all(np.diff(ramp) >= 0) and np.max(np.abs(ramp)) <= 1.0
    assert np.all(np.diff(soft_limit(np.linspace(-1.5, 1.5, 301))) > 0)  # no flat top where it matters


# -------------------------------------------------------------------------------------------- opus


def _check_opus(x: np.ndarray, bitrate_bps: int, min_corr: float | None) -> None:
    y = opus_round_trip(x, bitrate_bps)
    assert y.shape == x.shape and y.dtype == np.float32
    assert abs(xcorr_lag(y, x)) <= ONE_MS
    if min_corr is not None:
        assert np.corrcoef(y, x)[0, 1] > min_corr


def test_opus_round_trip_is_aligned_and_faithful(speech: np.ndarray) -> None:
    _check_opus(speech, 32000, 0.9)
    _check_opus(speech, 8000, None)  # narrowband SILK: not waveform-faithful, still aligned
    _check_opus(speech, 64000, 0.9)
    # Under 20 ms the stream is one packet and FFmpeg's decoder keeps the 6.5 ms pre-skip: cut by us.
    _check_opus(speech[4000:4150], 32000, 0.8)


def test_opus_round_trip_on_espeak_speech(speech_16k: np.ndarray) -> None:
    _check_opus(speech_16k, 32000, 0.9)
    _check_opus(speech_16k, 12000, None)


# ------------------------------------------------------------------------------------------- chain


def test_augment_chain_output_is_valid(speech: np.ndarray) -> None:
    babble = [speech_like(21, seconds=2.0)]
    configs = [
        AugmentConfig(),
        AugmentConfig(p_clean=0, p_speed=1, p_reverb=1, p_band=1, p_noise=1, p_gain=1, p_opus=1),
    ]
    seen: set[str] = set()
    for cfg in configs:
        for seed in range(6):
            out = augment(speech, np.random.default_rng(seed), cfg, babble_sources=babble)
            y = out.samples
            assert y.dtype == np.float32 and np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
            steps = [s for s in out.applied if s != "peak_normalize"]
            assert steps == [s for s in CHAIN_ORDER if s in steps]  # in chain order
            expected_scale = out.params["speed_time_scale"] if "speed" in out.applied else 1.0
            assert out.time_scale == expected_scale
            assert abs(y.size - speech.size * out.time_scale) <= 1.0
            keys = {"speed": "speed_factor", "reverb": "rt60_s", "band": "band_kind", "noise": "snr_db"}
            keys |= {"gain": "gain_db", "opus": "opus_bitrate_bps"}
            assert all(keys[s] in out.params for s in steps)
            seen.update(out.applied)
    assert set(CHAIN_ORDER) <= seen
    for nothing in (
        AugmentConfig(p_clean=1),
        AugmentConfig(p_clean=0, p_speed=0, p_reverb=0, p_band=0, p_noise=0, p_gain=0, p_opus=0),
    ):
        clean = augment(speech, np.random.default_rng(0), nothing)
        assert clean.applied == () and clean.time_scale == 1.0 and np.array_equal(clean.samples, speech)


def test_augment_hot_microphone_clips(speech: np.ndarray) -> None:
    cfg = AugmentConfig(p_clean=0, p_speed=0, p_reverb=0, p_band=0, p_noise=0, p_gain=1, p_clip=1, p_opus=0)
    out = augment(speech, np.random.default_rng(2), cfg)
    assert out.params["gain_mode"] == "clip" and np.max(np.abs(out.samples)) == 1.0


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(p_noise=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(snr_range_db=(30.0, 0.0))
    with pytest.raises(ValueError):
        AugmentConfig(noise_kinds=("traffic",))


def test_short_and_odd_lengths_survive_the_chain(speech: np.ndarray) -> None:
    everything = AugmentConfig(p_clean=0, p_speed=1, p_reverb=1, p_band=1, p_noise=1, p_gain=1, p_opus=1)
    for n in (0, 37, 333, 4801):
        x = speech[SR // 2 : SR // 2 + n]
        out = augment(x, np.random.default_rng(n), everything)
        assert abs(out.samples.size - n * out.time_scale) <= 1.0 and np.all(np.isfinite(out.samples))
        assert opus_round_trip(x, 24000).shape == x.shape

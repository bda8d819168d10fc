"""Audio front end: file decoding, streaming resampling, features (streaming == offline), VAD."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stream_avatar.audio.features import (
    HOP,
    N_FEATURES,
    N_MELS,
    WIN,
    FeatureStream,
    extract_features,
    mel_filterbank,
)
from stream_avatar.audio.io import AudioFormatError, load_audio, pcm_to_float32
from stream_avatar.audio.resample import StreamResampler, resample
from stream_avatar.audio.vad import Vad
from tests.conftest import SpeechBursts


def _write_audio(path: Path, samples: np.ndarray, rate: int, codec: str = "pcm_s16le") -> Path:
    """(channels, n) float32 -> an audio file written by FFmpeg (wav by default)."""
    samples = np.atleast_2d(samples).astype(np.float32)
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _sine(freq_hz: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * rate / x.size)


# ------------------------------------------------------------------------------------------- files


def test_load_wav_round_trip(tmp_path: Path) -> None:
    x = _sine(440, 22050, 1.0)
    samples, rate = load_audio(_write_audio(tmp_path / "a.wav", x, 22050))
    assert rate == 22050 and samples.dtype == np.float32 and samples.shape == x.shape
    np.testing.assert_allclose(samples, x, atol=1e-4)


def test_load_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = _sine(300, 16000, 0.5), _sine(700, 16000, 0.5, amp=0.2)
    samples, _ = load_audio(_write_audio(tmp_path / "s.wav", np.stack([left, right]), 16000))
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-4)


def test_load_compressed_audio(tmp_path: Path) -> None:
    path = _write_audio(tmp_path / "a.ogg", _sine(500, 48000, 1.0), 48000, codec="libopus")
    samples, rate = load_audio(path)
    assert rate == 48000 and abs(samples.size - 48000) < 2000
    assert abs(_dominant_hz(samples, rate) - 500) < 3


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such audio file"),
        (b"", "empty file"),
        (b"hello, this is plain text and not audio at all\n" * 20, "not a readable audio file"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a readable"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioFormatError, match=reason) as err:
        load_audio(path)
    assert "\n" not in str(err.value) and "bad.wav" in str(err.value)


def test_truncated_wav_header(tmp_path: Path) -> None:
    good = _write_audio(tmp_path / "g.wav", _sine(440, 16000, 0.5), 16000).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(good[:30])  # the RIFF header cut mid-way
    with pytest.raises(AudioFormatError):
        load_audio(path)


def test_video_without_audio_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(AudioFormatError, match="no audio stream"):
        load_audio(path)


def test_too_long_audio_is_refused(tmp_path: Path) -> None:
    path = _write_audio(tmp_path / "long.wav", np.zeros(16000 * 3, np.float32), 16000)
    with pytest.raises(AudioFormatError, match="longer than"):
        load_audio(path, max_duration_s=2.0)


def test_pcm_to_float32_scales_and_sanitises() -> None:
    np.testing.assert_allclose(pcm_to_float32(np.array([-32768, 0, 16384], np.int16)), [-1, 0, 0.5])
    out = pcm_to_float32(np.array([np.nan, np.inf, -3.0, 0.25]))
    np.testing.assert_array_equal(out, np.array([0, 0, -1, 0.25], np.float32))
    with pytest.raises(TypeError):
        pcm_to_float32(np.array(["a"]))


# --------------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("in_rate", [8000, 22050, 44100, 48000])
def test_resampler_keeps_frequency_and_length(in_rate: int) -> None:
    y = resample(_sine(1000, in_rate, 1.0), in_rate, 16000)
    assert abs(y.size - 16000) <= 2
    assert abs(_dominant_hz(y, 16000) - 1000) < 2
    amplitude = np.sqrt(2.0 * np.mean(y[800:-800] ** 2))  # of a sine: sqrt(2) * RMS
    assert amplitude == pytest.approx(0.5, abs=0.02)


def test_streaming_resampler_equals_whole_signal() -> None:
    x = np.random.default_rng(1).standard_normal(48000).astype(np.float32) * 0.1
    whole = resample(x, 48000)
    rs = StreamResampler(48000)
    rng = np.random.default_rng(2)
    parts, pos = [], 0
    while pos < x.size:
        n = int(rng.integers(1, 2000))
        parts.append(rs.process(x[pos : pos + n]))
        pos += n
    parts.append(rs.flush())
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_resampler_passthrough_and_bad_rates() -> None:
    x = _sine(300, 16000, 0.1)
    np.testing.assert_array_equal(StreamResampler(16000).process(x), x)
    for bad in (0, -16000, 44100.5, 10**7):
        with pytest.raises(ValueError, match="in_rate_hz"):
            StreamResampler(bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- features


def test_streaming_features_equal_offline(speech_bursts: SpeechBursts) -> None:
    x = speech_bursts.samples
    offline = extract_features(x)
    assert offline.shape == (x.size // HOP, N_FEATURES) and offline.dtype == np.float32
    assert np.isfinite(offline).all()
    stream = FeatureStream()
    rng = np.random.default_rng(0)
    rows, pos = [], 0
    while pos < x.size:
        n = int(rng.choice([1, 7, 160, 320, 333, 640, 1024, 4000]))
        rows.append(stream.push(x[pos : pos + n]))
        pos += n
    streamed = np.concatenate(rows)
    assert stream.frames_emitted == streamed.shape[0] == offline.shape[0]
    np.testing.assert_array_equal(streamed, offline)


def test_features_are_causal() -> None:
    x = np.random.default_rng(3).standard_normal(8000).astype(np.float32) * 0.1
    full = extract_features(x)
    y = x.copy()
    y[4000:] = 0.0  # change the future after sample 4000
    changed = extract_features(y)
    last_unaffected = 4000 // HOP  # row i ends at sample (i + 1) * HOP
    np.testing.assert_array_equal(full[:last_unaffected], changed[:last_unaffected])
    assert not np.array_equal(full[last_unaffected], changed[last_unaffected])


def test_features_measure_level_and_pitch() -> None:
    quiet, loud = (
        extract_features(_sine(440, 16000, 0.5, 0.01)),
        extract_features(_sine(440, 16000, 0.5, 0.5)),
    )
    # Log energy: 20*log10(50) dB = 2 * ln(50) nepers of power.
    assert np.median(loud[5:, N_MELS] - quiet[5:, N_MELS]) == pytest.approx(2 * np.log(50), abs=0.01)
    low, high = extract_features(_sine(300, 16000, 0.5)), extract_features(_sine(3000, 16000, 0.5))
    assert np.argmax(low[10:, :N_MELS].mean(0)) < np.argmax(high[10:, :N_MELS].mean(0))
    silence = extract_features(np.zeros(1600, np.float32))
    assert np.all(silence == np.float32(np.log(1e-10)))


def test_mel_filterbank_has_no_empty_band() -> None:
    fb = mel_filterbank()
    assert fb.shape == (N_MELS, 257)
    assert np.all(fb.sum(axis=1) > 0)
    assert WIN == 400 and HOP == 160


# ---------------------------------------------------------------------------------------------- VAD


def test_vad_on_speech_and_silence(speech_16k: np.ndarray) -> None:
    vad = Vad()
    frames = speech_16k[: speech_16k.size // 320 * 320].reshape(-1, 320)
    decisions = np.array([vad.is_speech(f) for f in frames])
    assert decisions.mean() > 0.5
    quiet = (np.random.default_rng(0).standard_normal((50, 320)) * 1e-3).astype(np.float32)
    assert not any(vad.is_speech(f) for f in quiet)


def test_vad_rejects_wrong_frame_length_and_settings() -> None:
    with pytest.raises(ValueError, match="10/20/30 ms"):
        Vad().is_speech(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="aggressiveness"):
        Vad(aggressiveness=4)
    with pytest.raises(ValueError, match="webrtcvad supports"):
        Vad(sample_rate_hz=44100)

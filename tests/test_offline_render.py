"""Offline render to MP4: duration, codecs, A/V alignment, rig JSONL, atomic output."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stream_avatar.audio.io import AudioFormatError, load_audio
from stream_avatar.motion import rig as rig_mod
from stream_avatar.offline import render_engine_to_file, render_file
from stream_avatar.session.engine import AvatarEngine
from tests.fakes import FakeDriver, FakeIdle, FakeRenderer, tone

FPS = 25


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short English sentence as espeak-ng writes it (22050 Hz mono WAV): what `run` feeds too."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(
        [exe, "-w", str(path), "Open the window, please."], check=True, capture_output=True, timeout=30
    )
    return path


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avatars")


def probe(path: Path) -> dict[str, object]:
    """Read an MP4 back: stream codecs, frame rate, video frame count, durations, decoded audio."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        info: dict[str, object] = {
            "video_codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "rate": video.average_rate,
            "size": (video.codec_context.width, video.codec_context.height),
            "audio_codec": audio.codec_context.name,
            "audio_rate": audio.rate,
            # The decoded audio also holds the last AAC frame's padding (1024-sample frames); the
            # stream duration is the written length.
            "audio_duration_s": float(audio.duration * audio.time_base),
        }
        frames = list(container.decode(video))
        info["frames"] = len(frames)
        info["video_pts_s"] = [float(f.pts * f.time_base) for f in frames]
        info["first_frame"] = frames[0].to_ndarray(format="rgb24")
        container.seek(0)
        pcm = [f.to_ndarray().reshape(-1) for f in container.decode(audio)]
        info["audio"] = np.concatenate(pcm)
    return info


def _expected_frames(path: Path) -> int:
    samples, rate = load_audio(path)
    return math.ceil(samples.size * FPS / rate)


def test_render_file_with_real_pieces(speech_wav: Path, store_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "video" / "speech.mp4"  # the parent folder is created
    rig_out = tmp_path / "speech.rig.jsonl"
    result = render_file(
        speech_wav, out, None, "dsp", size=256, rig_out=rig_out, progress=False, store_dir=store_dir
    )
    expected = _expected_frames(speech_wav)
    assert abs(result.frames - expected) <= 1
    assert result.path == out and out.is_file()
    info = probe(out)
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["rate"] == FPS and info["size"] == (256, 256)
    assert info["audio_codec"] == "aac" and info["audio_rate"] == 16000
    assert abs(int(info["frames"]) - expected) <= 1  # type: ignore[call-overload]
    audio = info["audio"]
    assert isinstance(audio, np.ndarray)
    assert info["audio_duration_s"] == pytest.approx(result.frames / FPS, abs=1e-3)
    assert float(np.sqrt(np.mean(audio**2))) > 0.01  # the speech is there, not silence
    lines = [json.loads(line) for line in rig_out.read_text().splitlines()]
    assert len(lines) == result.frames
    assert [line["pts"] for line in lines] == pytest.approx([i / FPS for i in range(result.frames)])
    assert set(lines[0]["rig"]) == set(rig_mod.RIG_NAMES)
    # The mouth moves with the speech: jawOpen varies and opens well at some point.
    jaw = np.array([line["rig"]["jawOpen"] for line in lines])
    assert jaw.max() > 0.3 and jaw.std() > 0.05
    assert not list(tmp_path.glob("**/.*part*"))  # no temporary files left


async def test_engine_render_is_aligned_and_complete(tmp_path: Path) -> None:
    # Fakes make every frame's content checkable: red = jawOpen, which follows the audio level.
    rate = 22050
    audio = np.concatenate([tone(0.5, rate, amp=0.6), np.zeros(int(0.52 * rate), np.float32)])
    engine = AvatarEngine(FakeRenderer(64), FakeDriver(FPS), FakeIdle(), fps=FPS, max_buffer_s=0.2)
    out, rig_out = tmp_path / "fake.mp4", tmp_path / "fake.jsonl"
    result = await render_engine_to_file(engine, audio, rate, out, rig_out=rig_out, progress=False)
    expected = math.ceil(audio.size * FPS / rate)
    assert result.frames == expected
    assert result.frames_per_s > 0
    info = probe(out)
    assert info["frames"] == expected and info["rate"] == FPS
    assert info["video_pts_s"] == pytest.approx([i / FPS for i in range(expected)])
    decoded = info["audio"]
    assert isinstance(decoded, np.ndarray)
    assert info["audio_duration_s"] == pytest.approx(expected / FPS, abs=1e-3)
    # A/V alignment: the tone stops at 0.5 s in the audio track ...
    rms = np.sqrt(np.mean(decoded[: expected * 640].reshape(-1, 640) ** 2, axis=1))
    assert rms[: int(0.5 * FPS) - 1].min() > 0.2 and rms[int(0.5 * FPS) + 2 :].max() < 0.02
    # ... and the rigs say the mouth closes right after it.
    jaw = np.array([json.loads(line)["rig"]["jawOpen"] for line in rig_out.read_text().splitlines()])
    assert len(jaw) == expected
    assert jaw[2 : int(0.5 * FPS)].min() > 0.9 and jaw[int(0.5 * FPS) + 4 :].max() < 0.05
    assert engine.stats()["audio_dropped_s"] == 0.0  # feed() waited instead of dropping


@pytest.mark.parametrize(
    "content", [b"", b"this is not audio at all\n" * 20, b"RIFF\x00\x00\x00\x00WAVEfmt "]
)
def test_bad_audio_raises_before_writing_anything(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    out_dir = tmp_path / "out"
    with pytest.raises(AudioFormatError) as err:
        render_file(bad, out_dir / "x.mp4", None, progress=False, store_dir=tmp_path / "store")
    assert "\n" not in str(err.value) and "bad.wav" in str(err.value)
    assert not out_dir.exists() or not any(out_dir.iterdir())


async def test_failure_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    class FailingRenderer(FakeRenderer):
        calls = 0

        def render(self, rig: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls > 3:
                raise RuntimeError("GPU fell off the bus")
            return super().render(rig)

    old = tmp_path / "keep.mp4"
    old.write_bytes(b"previous render")
    engine = AvatarEngine(FailingRenderer(32), FakeDriver(FPS), FakeIdle(), fps=FPS, max_batch=1)
    with pytest.raises(RuntimeError, match="fell off"):
        await render_engine_to_file(engine, tone(1.0, 16000), 16000, old, rig_out=tmp_path / "r.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]
    assert old.read_bytes() == b"previous render"  # the old file is untouched


async def test_too_short_audio_is_an_error(tmp_path: Path) -> None:
    engine = AvatarEngine(FakeRenderer(32), FakeDriver(FPS), FakeIdle(), fps=FPS)
    with pytest.raises(ValueError, match="too short"):
        await render_engine_to_file(
            engine, np.zeros(0, np.float32), 16000, tmp_path / "x.mp4", progress=False
        )
    assert not list(tmp_path.iterdir())


def test_time_base_is_one_over_fps() -> None:
    engine = AvatarEngine(FakeRenderer(32), FakeDriver(FPS), FakeIdle(), fps=FPS)
    assert engine.time_base == Fraction(1, FPS)

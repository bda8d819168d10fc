"""The Python API (``import stream_avatar``) and the examples in examples/, run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stream_avatar.avatar.store import Avatar
from tests.test_server import SIZE, _running, make_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def speech_wav(espeak_synth: Callable[..., np.ndarray], tmp_path: Path) -> Path:
    gap = np.zeros(8000, np.float32)
    x = np.concatenate([gap, espeak_synth("Hello there, this is the avatar speaking to you."), gap])
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.clip(x * 32767, -32768, 32767).astype("<i2").tobytes())
    return path


def test_import_is_light_and_names_the_api() -> None:
    code = (
        "import sys, stream_avatar as sa; "
        "print(json.dumps([sorted(sa.__all__), 'torch' in sys.modules, 'aiortc' in sys.modules, "
        "callable(sa.open_engine), sa.PcmPublisher.__name__]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], cwd=REPO, capture_output=True, text=True, check=True
    )
    names, torch_loaded, aiortc_loaded, has_open, publisher = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"open_engine", "AvatarEngine", "PcmPublisher", "AvatarClient"} <= set(names)
    assert not torch_loaded and not aiortc_loaded  # before open_engine: import stream_avatar stays light
    assert has_open and publisher == "PcmPublisher"
    import stream_avatar

    with pytest.raises(AttributeError, match="no attribute"):
        stream_avatar.no_such_name  # noqa: B018


def test_the_embedding_example_runs(speech_wav: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "examples/embed_engine.py",
            str(speech_wav),
            "--size",
            "128",
            "--realtime",
            "--store",
            str(tmp_path / "store"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["frames"] > 50 and summary["audio_out_s"] > 2.0, summary
    assert summary["jaw_when_loud"] > summary["jaw_when_quiet"] + 0.1, summary
    assert summary["cleared_s"] >= 0.0


async def test_the_tts_example_drives_a_stream_a_viewer_watches(
    default_avatar: Callable[[int], Avatar], speech_wav: Path
) -> None:
    async for server in _running(make_server(default_avatar(SIZE), emotion="neutral")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "examples/tts_to_viewer.py",
            server.url,
            str(speech_wav),
            "--barge-in",
            "1.0",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        lines = stdout.decode().strip().splitlines()
        summary = json.loads(lines[-1])
        assert any('"playback_started"' in line for line in lines) and any(
            '"cleared"' in line for line in lines
        )
        assert summary["interrupted"] and 700 < summary["played_ms"] < 1400, summary
        assert summary["viewer_frames"] > 25 and summary["viewer_audio_s"] > 1.0, summary
        assert summary["viewer_rig_messages"] > 25, summary

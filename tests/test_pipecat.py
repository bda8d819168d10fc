"""The pipecat processor (stream_avatar/integrations/pipecat.py) in a real pipecat pipeline.

Fake TTS frames (a tone as ``TTSAudioRawFrame`` between ``TTSStartedFrame`` / ``TTSStoppedFrame``) go
through ``AvatarVideoService`` with the fake engine parts (tests/fakes.py: the red channel of a frame
is the jaw opening), a recording sink collects what comes out with its arrival time. No external
service, no network.

pipecat-ai cannot share an environment with mediapipe (protobuf), so these tests run in
.venv-pipecat (``make install-pipecat``; ``make test`` runs them there) and skip in the main one.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "pipecat",
    reason="pipecat-ai is not in this environment (it conflicts with mediapipe over protobuf); "
    "`make test` runs these tests in .venv-pipecat",
)

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from stream_avatar.integrations.pipecat import AvatarVideoService, ClearReport, tts_to_mono
from stream_avatar.session.engine import AvatarEngine
from tests.fakes import FakeDriver, FakeIdle, FakeRenderer, jaw_from_frame, to_int16, tone

ROOT = Path(__file__).resolve().parents[1]
TTS_RATE = 24000
FPS = 25
SPF_16K = 16000 // FPS
CHUNK_S = 0.02  # TTS services send audio in pieces of this order


class Sink(FrameProcessor):
    """Records every downstream frame with its arrival time (loop clock) and passes it on."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[float, Frame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append((asyncio.get_running_loop().time(), frame))
        await self.push_frame(frame, direction)

    def of(self, kind: type[Frame]) -> list[tuple[float, Any]]:
        return [(t, f) for t, f in self.frames if isinstance(f, kind)]


def fake_engine() -> tuple[AvatarEngine, FakeDriver]:
    driver = FakeDriver(FPS)
    return AvatarEngine(FakeRenderer(32), driver, FakeIdle(blink_every=0), fps=FPS), driver


def tts_frames(samples: np.ndarray, rate: int = TTS_RATE, channels: int = 1) -> list[Frame]:
    """One utterance as a TTS service sends it: started, s16le pieces of CHUNK_S, stopped."""
    pcm = to_int16(samples)
    if channels > 1:
        pcm = np.repeat(pcm, channels)
    step = round(rate * CHUNK_S) * channels
    chunks = [
        TTSAudioRawFrame(
            audio=pcm[i : i + step].astype("<i2").tobytes(), sample_rate=rate, num_channels=channels
        )
        for i in range(0, pcm.size, step)
    ]
    return [TTSStartedFrame(), *chunks, TTSStoppedFrame()]


async def run_pipeline(
    avatar: FrameProcessor, drive: Callable[[PipelineWorker, Sink], Awaitable[None]], timeout_s: float = 30.0
) -> Sink:
    """Run [avatar, sink] in a real PipelineWorker until ``drive`` has queued its frames and the
    pipeline has ended (``drive`` ends it with an EndFrame or a CancelFrame)."""
    sink = Sink()
    worker = PipelineWorker(Pipeline([avatar, sink]), cancel_on_idle_timeout=False, idle_timeout_secs=None)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: Any, _frame: Any) -> None:
        started.set()

    async def feed() -> None:
        await asyncio.wait_for(started.wait(), 10.0)
        await drive(worker, sink)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), feed()), timeout_s)
    return sink


def speech_flags(sink: Sink) -> np.ndarray:
    """Per output audio frame: does it carry the tone (RMS well above the silence between)?"""
    out = []
    for _, f in sink.of(OutputAudioRawFrame):
        x = np.frombuffer(f.audio, "<i2").astype(np.float32) / 32768.0
        out.append(float(np.sqrt(np.mean(x**2))) > 0.05)
    return np.array(out, bool)


def test_tts_to_mono_averages_channels() -> None:
    stereo = np.array([[100, 300], [-200, -400]], "<i2").tobytes()
    assert tts_to_mono(stereo, 2).tolist() == [200, -300]
    assert tts_to_mono(np.array([1, 2, 3], "<i2").tobytes() + b"\x00", 1).tolist() == [1, 2, 3]


async def test_tts_audio_becomes_video_and_retimed_audio_at_25_fps() -> None:
    """1 s of TTS audio → images at 25 fps with the same audio, one image + 40 ms of audio per frame,
    pts on one clock, paced in real time; the mouth opens on the speech; other frames pass through."""
    engine, driver = fake_engine()
    avatar = AvatarVideoService(engine=engine)
    speech = tone(1.0, TTS_RATE, amp=0.5)
    text = TextFrame(text="hello")

    async def drive(worker: PipelineWorker, sink: Sink) -> None:
        await worker.queue_frames([text, *tts_frames(speech), EndFrame()])

    sink = await run_pipeline(avatar, drive)

    assert not sink.of(TTSAudioRawFrame), "TTS audio must be replaced by the avatar's audio"
    assert [f for _, f in sink.of(TextFrame)] == [text]  # passed through, the same object
    assert len(sink.of(TTSStartedFrame)) == 1 and len(sink.of(TTSStoppedFrame)) == 1
    images, audio = sink.of(OutputImageRawFrame), sink.of(OutputAudioRawFrame)
    assert len(images) == len(audio) == avatar.frames_out
    # Image k then its audio, both stamped k / fps.
    media = [f for _, f in sink.frames if isinstance(f, (OutputImageRawFrame, OutputAudioRawFrame))]
    for k in range(len(images)):
        image, sound = media[2 * k], media[2 * k + 1]
        assert isinstance(image, OutputImageRawFrame) and type(sound) is OutputAudioRawFrame
        assert image.pts == sound.pts == k * 1_000_000_000 // FPS
        assert image.size == (32, 32) and image.format == "RGB" and len(image.image) == 32 * 32 * 3
        assert sound.sample_rate == 16000 and sound.num_channels == 1 and sound.num_frames == SPF_16K
    # The speech: 1 s → 25 frames of it (± one frame for the resampler's edges), contiguous.
    flags = speech_flags(sink)
    idx = np.flatnonzero(flags)
    assert 24 <= idx.size <= 26, f"{idx.size} frames carry the speech"
    assert np.all(np.diff(idx) == 1)
    # Same total duration: the output's loud samples span the input's length.
    pcm = np.concatenate([np.frombuffer(f.audio, "<i2") for _, f in audio]).astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(pcm) > 0.05)
    assert abs((loud[-1] - loud[0]) / 16000 - 1.0) < 0.01
    # Real time: the speech frames arrive spread over ~1 s, one per 40 ms, not in a burst.
    t = np.array([images[i][0] for i in idx])
    assert 0.85 < t[-1] - t[0] < 1.25, f"24 frame periods took {t[-1] - t[0]:.2f} s"
    assert 0.03 < float(np.median(np.diff(t))) < 0.05
    # The mouth follows the audio it was computed from (the fake renderer: red = jaw).
    jaw = np.array([jaw_from_frame(np.frombuffer(f.image, np.uint8).reshape(32, 32, 3)) for _, f in images])
    assert jaw[idx[2:]].mean() > 0.5 and jaw[~flags].max(initial=0.0) < jaw[idx[2:]].min()
    assert driver.samples_seen >= 16000
    assert engine._closed, "EndFrame closes the engine"


async def test_stereo_and_another_rate_are_resampled() -> None:
    """A 44.1 kHz stereo TTS: same speech length at 16 kHz out."""
    engine, _ = fake_engine()
    avatar = AvatarVideoService(engine=engine)

    async def drive(worker: PipelineWorker, sink: Sink) -> None:
        await worker.queue_frames([*tts_frames(tone(0.6, 44100), rate=44100, channels=2), EndFrame()])

    sink = await run_pipeline(avatar, drive)
    assert 14 <= int(speech_flags(sink).sum()) <= 16


async def test_interruption_stops_the_speech_promptly_and_reports() -> None:
    """InterruptionFrame mid-utterance: the speech stops within two frames, the engine is cleared (the
    driver reset), the report says what was played and dropped, the face keeps its idle video."""
    engine, driver = fake_engine()
    avatar = AvatarVideoService(engine=engine)
    reports: list[ClearReport] = []

    @avatar.event_handler("on_avatar_cleared")
    async def _cleared(_processor: Any, report: ClearReport) -> None:
        reports.append(report)

    sent_at: list[float] = []

    async def drive(worker: PipelineWorker, sink: Sink) -> None:
        await worker.queue_frames(tts_frames(tone(3.0, TTS_RATE)))
        for _ in range(400):  # until half a second of speech has come out
            if speech_flags(sink).sum() >= 12:
                break
            await asyncio.sleep(0.01)
        sent_at.append(asyncio.get_running_loop().time())
        await worker.queue_frame(InterruptionFrame())
        await asyncio.sleep(0.6)
        await worker.queue_frame(EndFrame())

    sink = await run_pipeline(avatar, drive)
    t_int = sent_at[0]
    audio = sink.of(OutputAudioRawFrame)
    flags = speech_flags(sink)
    after = [i for i, (t, _) in enumerate(audio) if t > t_int]
    speech_after = [i for i in after if flags[i]]
    assert len(speech_after) <= 2, f"{len(speech_after)} frames of speech after the interruption"
    assert len(sink.of(InterruptionFrame)) == 1  # passed downstream for the transport
    # The video goes on (idle) after the cut: about 0.6 s of it.
    assert 10 <= len(after) <= 20
    assert len(reports) == 1 and driver.clears >= 1
    played = int(flags.sum())
    assert abs(reports[0].played_s - played / FPS) <= 0.12, (reports[0], played)
    assert abs(reports[0].played_s + reports[0].dropped_s - 3.0) < 0.1, reports[0]


async def test_cancel_stops_the_playout_and_closes_the_engine() -> None:
    engine, _ = fake_engine()
    avatar = AvatarVideoService(engine=engine)

    async def drive(worker: PipelineWorker, sink: Sink) -> None:
        await worker.queue_frames(tts_frames(tone(5.0, TTS_RATE)))
        await asyncio.sleep(0.3)
        await worker.cancel()

    sink = await run_pipeline(avatar, drive, timeout_s=10.0)
    assert engine._closed and engine._thread is not None and not engine._thread.is_alive()
    n = len(sink.of(OutputImageRawFrame))
    assert 3 <= n <= 15, n
    assert not [t for t in asyncio.all_tasks() if "avatar_playout" in t.get_name()]


def test_example_pipeline_writes_a_video(tmp_path: Path) -> None:
    """examples/pipecat_avatar.py with the fake engine: a fake TTS → the avatar → an MP4."""
    out = tmp_path / "avatar.mp4"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pipecat_avatar.py"), "--fake", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    import av

    with av.open(str(out)) as container:
        video = sum(1 for _ in container.decode(video=0))
    with av.open(str(out)) as container:
        heard = sum(f.samples for f in container.decode(audio=0)) / container.streams.audio[0].rate
    assert video == summary["frames"] >= 25
    assert abs(heard - summary["frames"] / FPS) < 0.1
    assert summary["speech_s"] > 1.5


async def test_remote_service_drives_a_server_stream_and_forwards_its_media() -> None:
    """RemoteAvatarVideoService against a server started here (fake engine parts): the TTS audio goes
    over /pcm, the avatar comes back through a watch-only viewer as image and audio frames, and an
    interruption is answered by the server's ``cleared`` with what was played."""
    from types import SimpleNamespace

    from stream_avatar.integrations.pipecat import RemoteAvatarVideoService
    from stream_avatar.server.app import AvatarServer, ServerSettings
    from stream_avatar.server.session import SessionSettings

    size = 64
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        max_sessions=4,
        measured_admission=False,
        allow_unconsented_avatars=True,
        session=SessionSettings(fps=FPS, size=size, emotion="neutral"),
    )
    fake_avatar = SimpleNamespace(id="default", size=size, meta={})
    server = AvatarServer(
        settings,
        lambda spec: fake_avatar,
        lambda a: AvatarEngine(FakeRenderer(size), FakeDriver(FPS), FakeIdle(0), fps=FPS, packet_lead=True),
        lambda a: FakeRenderer(size),
    )
    await server.start()
    try:
        avatar = RemoteAvatarVideoService(server.url)
        reports: list[ClearReport] = []

        @avatar.event_handler("on_avatar_cleared")
        async def _cleared(_processor: Any, report: ClearReport) -> None:
            reports.append(report)

        async def drive(worker: PipelineWorker, sink: Sink) -> None:
            await worker.queue_frames(tts_frames(tone(3.0, TTS_RATE)))
            for _ in range(600):
                if sum(1 for _, f in sink.of(OutputImageRawFrame)) >= 40:
                    break
                await asyncio.sleep(0.01)
            await worker.queue_frame(InterruptionFrame())
            await asyncio.sleep(0.5)
            await worker.queue_frame(EndFrame())

        sink = await run_pipeline(avatar, drive, timeout_s=40.0)
    finally:
        await server.aclose()
    images = sink.of(OutputImageRawFrame)
    audio = sink.of(OutputAudioRawFrame)
    assert len(images) >= 40 and images[0][1].size == (size, size) and images[0][1].format == "RGB"
    assert audio and all(f.sample_rate == 48000 and f.num_channels == 1 for _, f in audio)
    assert not sink.of(TTSAudioRawFrame)
    assert len(reports) == 1 and 0.2 < reports[0].played_s < 3.0 and reports[0].dropped_s > 0.1, reports

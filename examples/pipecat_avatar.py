"""A pipecat pipeline with the avatar: a stand-in TTS → AvatarVideoService → a sink that writes an MP4.

    make install-pipecat                        # .venv-pipecat: pipecat-ai without mediapipe (README)
    .venv-pipecat/bin/python examples/pipecat_avatar.py --out avatar.mp4 [--size 256] [--barge-in 1.0]

The stand-in TTS sends what a real one (Cartesia, ElevenLabs, Piper...) would: ``TTSStartedFrame``, s16le
``TTSAudioRawFrame`` pieces at 24 kHz, faster than real time, ``TTSStoppedFrame``. Here the audio is a
WAV (``--wav``) or a synthetic voice-like signal (a buzz at a speaking pitch, shaped into syllables).
The avatar turns it into video frames with the audio re-timed to them; the sink writes both into
``--out``. ``--barge-in S`` sends an ``InterruptionFrame`` S seconds in, as a user talking over the bot
would. In a real bot the sink is ``transport.output()``. Prints one JSON line: frames written, seconds
of speech in them, the interruption's report.

``--fake`` uses the test doubles of tests/fakes.py instead of the real engine (the tests run that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from stream_avatar.integrations.pipecat import AvatarVideoService, ClearReport
from stream_avatar.offline import Mp4Writer
from stream_avatar.session.engine import OutputItem

TTS_RATE = 24000


def voice_like(duration_s: float, rate: int = TTS_RATE, seed: int = 0) -> np.ndarray:
    """(n,) float32: a 140 Hz buzz with a few harmonics, cut into syllables of 120-250 ms with short
    pauses, and a longer pause every few syllables; enough to move a mouth, no TTS needed."""
    rng = np.random.default_rng(seed)
    n = round(duration_s * rate)
    t = np.arange(n) / rate
    buzz = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 6))
    envelope = np.zeros(n)
    pos, count = 0, 0
    while pos < n:
        length = int(rng.uniform(0.12, 0.25) * rate)
        seg = np.sin(np.linspace(0, np.pi, max(2, min(length, n - pos))))
        envelope[pos : pos + seg.size] = seg
        count += 1
        pos += seg.size + int((0.35 if count % 4 == 0 else rng.uniform(0.03, 0.08)) * rate)
    return (0.25 * buzz * envelope).astype(np.float32)


def tts_frames(samples: np.ndarray, rate: int, chunk_s: float = 0.02) -> list[Frame]:
    pcm = np.clip(np.rint(samples * 32767), -32768, 32767).astype("<i2")
    step = round(rate * chunk_s)
    chunks = [
        TTSAudioRawFrame(audio=pcm[i : i + step].tobytes(), sample_rate=rate, num_channels=1)
        for i in range(0, pcm.size, step)
    ]
    return [TTSStartedFrame(), *chunks, TTSStoppedFrame()]


class Mp4Sink(FrameProcessor):
    """Writes each image with the audio frame that follows it (the avatar pushes them in pairs)."""

    def __init__(self, path: Path, fps: int = 25) -> None:
        super().__init__()
        self.writer = Mp4Writer(path, fps)
        self.fps = fps
        self.speech_frames = 0
        self._image: np.ndarray | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            w, h = frame.size
            self._image = np.frombuffer(frame.image, np.uint8).reshape(h, w, 3)
        elif isinstance(frame, OutputAudioRawFrame) and self._image is not None:
            audio = np.frombuffer(frame.audio, "<i2").astype(np.float32) / 32768.0
            self.speech_frames += int(np.sqrt(np.mean(audio**2)) > 0.02)
            item = OutputItem(
                index=self.writer.frames,
                pts=self.writer.frames,
                time_base=Fraction(1, self.fps),
                frame=self._image,
                audio=audio,
                rig=np.zeros(0, np.float32),
                speaking=False,
            )
            self.writer.write(item)
            self._image = None
        elif isinstance(frame, EndFrame):
            self.writer.close()
        await self.push_frame(frame, direction)


def make_engine(args: argparse.Namespace) -> Any:
    if args.fake:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from stream_avatar.session.engine import AvatarEngine
        from tests.fakes import FakeDriver, FakeIdle, FakeRenderer

        return AvatarEngine(FakeRenderer(64), FakeDriver(), FakeIdle())
    import stream_avatar

    return stream_avatar.open_engine("default", size=args.size, driver=args.driver, emotion="auto")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.wav:
        from stream_avatar.audio.io import load_audio
        from stream_avatar.audio.resample import resample

        pcm, rate = load_audio(args.wav)
        speech = resample(pcm, rate, TTS_RATE)
    else:
        speech = voice_like(args.seconds)
    avatar = AvatarVideoService(engine=lambda: make_engine(args))
    sink = Mp4Sink(Path(args.out))
    reports: list[ClearReport] = []

    @avatar.event_handler("on_avatar_cleared")
    async def on_cleared(_processor: Any, report: ClearReport) -> None:
        reports.append(report)

    worker = PipelineWorker(Pipeline([avatar, sink]), cancel_on_idle_timeout=False, idle_timeout_secs=None)

    @worker.event_handler("on_pipeline_started")
    async def on_started(_worker: Any, _frame: Any) -> None:
        await worker.queue_frames(tts_frames(speech, TTS_RATE))  # a TTS runs ahead of real time
        if args.barge_in is not None:
            await asyncio.sleep(args.barge_in)
            await worker.queue_frame(InterruptionFrame())
        await worker.queue_frame(EndFrame())  # ends once the avatar has played what it was given

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    return {
        "out": args.out,
        "frames": sink.writer.frames,
        "speech_s": round(sink.speech_frames / sink.fps, 2),
        "cleared": [vars(r) for r in reports],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="avatar.mp4")
    p.add_argument("--wav", default=None, help="speech to send as the TTS audio (default: synthetic)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of the synthetic speech")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--driver", default="learned", choices=("learned", "dsp"))
    p.add_argument("--barge-in", type=float, default=None, metavar="S", help="interrupt S s in")
    p.add_argument("--fake", action="store_true", help="the test doubles instead of the real engine")
    print(json.dumps(asyncio.run(main(p.parse_args()))))

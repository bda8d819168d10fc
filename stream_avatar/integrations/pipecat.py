"""A pipecat processor that turns a voice agent's TTS audio into the avatar's video and re-timed audio.

Place it after the TTS service and before the output transport::

    pipeline = Pipeline([..., tts, AvatarVideoService(), transport.output()])

It consumes every ``TTSAudioRawFrame`` (s16le, any rate and channel count) and pushes, at the engine's
frame rate (25 fps) and in real time, one ``OutputImageRawFrame`` (RGB, ``size=(w, h)``) followed by
one ``OutputAudioRawFrame`` (the 40 ms of audio that frame's mouth was computed from, 16 kHz mono
s16le). Both carry ``pts`` in nanoseconds on one clock: frame k has ``pts = k / fps`` s, so image and
audio are in sync by construction. Between utterances the face keeps its idle life (silent audio, the
video never stops), as a live avatar does. Every other frame passes through unchanged.

Two engines:

- ``AvatarVideoService``: the engine runs in this process (``stream_avatar.open_engine``, or an
  ``AvatarEngine`` you build, e.g. with fakes in tests).
- ``RemoteAvatarVideoService``: a running ``stream-avatar serve`` renders; TTS audio goes to it over the
  PCM ingest WebSocket (``/pcm``, ``PcmPublisher``) and the avatar comes back over WebRTC as a watch-only
  viewer (``AvatarClient(watch=...)``), at 48 kHz.

Interruptions (pipecat's ``InterruptionFrame``, out of band) drop everything not yet shown: the TTS
audio waiting here, the engine's input and frames (``AvatarEngine.clear``) or, remotely, the server's
(``clear``); the face decays to rest. The event ``on_avatar_cleared(processor, report)`` receives a
``ClearReport`` (seconds of speech played in the interrupted turn and seconds dropped).

Queues are bounded: TTS audio waits in a buffer of at most ``max_buffered_s`` seconds (a TTS that
runs further ahead is slowed down: its frames wait in pipecat's own queue until there is room, nothing
is dropped); the engine keeps at most a few frames of audio ahead of the clock.

Needs the ``pipecat`` extra, in an environment without the ``face`` extra: pipecat-ai needs
protobuf >= 5.29 and mediapipe 0.10.21 (enrollment) needs protobuf < 5 (README, "pipecat").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        InterruptionFrame,
        OutputAudioRawFrame,
        OutputImageRawFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "stream_avatar.integrations.pipecat needs the 'pipecat' extra: pip install 'stream_avatar[pipecat]' "
        "in an environment without the 'face' extra (pipecat-ai needs protobuf >= 5.29, mediapipe 0.10.21 "
        "needs protobuf < 5); `make install-pipecat` makes one in .venv-pipecat"
    ) from exc

from stream_avatar.audio.resample import StreamResampler
from stream_avatar.session.engine import SAMPLE_RATE_HZ, AvatarEngine, OutputItem

logger = logging.getLogger(__name__)

__all__ = ["AvatarVideoService", "ClearReport", "RemoteAvatarVideoService", "tts_to_mono"]

NS_PER_S = 1_000_000_000
REANCHOR_S = 0.25  # a frame later than this re-anchors the clock instead of bursting to catch up
SPEECH_LEAD_FRAMES = 3  # TTS audio is handed to the engine this many frames ahead of the clock
IDLE_LEAD_FRAMES = 2  # silence only this far: covers the learned driver's 40 ms lookahead + compute
DRAIN_MARGIN_S = 5.0  # EndFrame waits for the buffered speech to play, plus this much


@dataclass(frozen=True)
class ClearReport:
    """What an interruption cut. played_s: speech handed downstream in the interrupted turn (from its
    first sample to the cut, pauses included); dropped_s: speech that was never shown."""

    played_s: float
    dropped_s: float


def tts_to_mono(audio: bytes, num_channels: int) -> np.ndarray:
    """pipecat audio bytes (s16le, interleaved) -> (n,) int16 mono (channels averaged)."""
    if num_channels < 1:
        raise ValueError(f"num_channels must be >= 1, got {num_channels}")
    usable = len(audio) - len(audio) % (2 * num_channels)
    pcm = np.frombuffer(audio[:usable], dtype="<i2")
    if num_channels == 1:
        return pcm.astype(np.int16)
    frames = pcm.reshape(-1, num_channels).astype(np.int32)
    return np.round(frames.mean(axis=1)).astype(np.int16)


def _to_s16le(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] -> s16le bytes."""
    return np.clip(np.rint(np.asarray(samples, np.float32) * 32767), -32768, 32767).astype("<i2").tobytes()


EngineFactory = Callable[[], AvatarEngine]


class AvatarVideoService(FrameProcessor):
    """TTS audio in, the avatar's video and re-timed audio out, with the engine in this process.

    engine: an ``AvatarEngine`` (not started; this processor starts and closes it), a zero-argument
      factory returning one (called off the event loop in ``setup``), or None: ``open_engine(avatar,
      size=size, driver=driver, emotion=emotion)`` (the shipped default avatar unless told otherwise).
    max_buffered_s: TTS audio waiting to be played, at most (seconds); beyond it the TTS is slowed down.
    sync_with_audio: mark the images so an output transport shows each one once the audio before it
      has been sent (pipecat's ``OutputImageRawFrame.sync_with_audio``): lips and sound together.
    Events: ``on_avatar_cleared(processor, ClearReport)`` after each interruption.
    """

    def __init__(
        self,
        *,
        engine: AvatarEngine | EngineFactory | None = None,
        avatar: str = "default",
        size: int = 512,
        driver: str = "learned",
        emotion: str = "auto",
        max_buffered_s: float = 60.0,
        sync_with_audio: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not max_buffered_s > 0:
            raise ValueError(f"max_buffered_s must be positive, got {max_buffered_s}")
        self._engine_arg = engine
        self._open_args = {"avatar": avatar, "size": size, "driver": driver, "emotion": emotion}
        self._engine: AvatarEngine | None = engine if isinstance(engine, AvatarEngine) else None
        self._max_buffered = round(max_buffered_s * SAMPLE_RATE_HZ)
        self._sync_with_audio = sync_with_audio

        # TTS audio at 16 kHz, waiting to be fed: bounded by _max_buffered samples.
        self._speech: deque[np.ndarray] = deque()
        self._speech_samples = 0
        self._room = asyncio.Event()
        self._rs: StreamResampler | None = None
        self._rs_rate: int | None = None

        # One timeline of 16 kHz samples handed to the engine (speech and silence). Frame k of the
        # output carries samples [k * spf, (k + 1) * spf): the engine is a FIFO of whole frames.
        self._fed = 0
        self._emitted = 0  # samples of frames pushed downstream
        self._speech_end = 0  # timeline position just after the last speech sample fed
        self._turn_start: int | None = None  # first speech sample of the turn now playing
        self._epoch = 0  # bumped by an interruption: a frame held across it is never shown
        self._drained = asyncio.Event()
        self._drained.set()
        self._frames = 0
        self._playout: asyncio.Task[None] | None = None
        self._closed = False

        self._register_event_handler("on_avatar_cleared")

    # -------------------------------------------------------------------------------- lifecycle

    @property
    def engine(self) -> AvatarEngine | None:
        """The engine (None until ``setup`` built it)."""
        return self._engine

    @property
    def frames_out(self) -> int:
        """Video frames pushed downstream so far."""
        return self._frames

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        if self._engine is None:
            factory = self._engine_arg if callable(self._engine_arg) else self._open_engine
            self._engine = await asyncio.to_thread(factory)

    def _open_engine(self) -> AvatarEngine:
        from stream_avatar.api import open_engine

        engine: AvatarEngine = open_engine(**self._open_args)  # type: ignore[arg-type]
        return engine

    async def _start(self) -> None:
        if self._playout is not None or self._closed:
            return
        if self._engine is None:  # StartFrame without setup (direct use): build it now
            factory = self._engine_arg if callable(self._engine_arg) else self._open_engine
            self._engine = await asyncio.to_thread(factory)
        self._engine.start()
        self._playout = self.create_task(self._run_playout(), "avatar_playout")

    async def _stop(self) -> None:
        """Cancel the playout and close the engine; idempotent."""
        self._closed = True
        task, self._playout = self._playout, None
        if task is not None:
            await self.cancel_task(task)
        if self._engine is not None:
            await self._engine.aclose()
        self._room.set()  # a TTS frame waiting for room gives up
        self._drained.set()

    async def cleanup(self) -> None:
        await self._stop()
        await super().cleanup()

    # ---------------------------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self._start()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            self._flush_resampler()
            await self._wait_drained()
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._queue_tts(frame)
        elif isinstance(frame, TTSStoppedFrame):
            self._flush_resampler()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStartedFrame):
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _queue_tts(self, frame: TTSAudioRawFrame) -> None:
        """Resample to 16 kHz and queue, waiting while the buffer is full (the TTS is ahead)."""
        if self._closed:
            return
        pcm = tts_to_mono(frame.audio, frame.num_channels)
        if frame.sample_rate != self._rs_rate:
            self._flush_resampler()
            self._rs = StreamResampler(frame.sample_rate, SAMPLE_RATE_HZ)
            self._rs_rate = frame.sample_rate
        assert self._rs is not None
        await self._append_speech(self._rs.process(pcm))

    def _flush_resampler(self) -> None:
        """End the resampled stream: its held-back tail (about 1 ms) joins the buffer."""
        if self._rs is not None:
            tail = self._rs.flush()
            self._rs, self._rs_rate = None, None
            if tail.size:
                self._speech.append(tail)  # a few samples: may pass the bound by that much
                self._speech_samples += tail.size
                self._drained.clear()

    async def _append_speech(self, samples16k: np.ndarray) -> None:
        step = max(1, self._max_buffered // 2)
        for start in range(0, samples16k.size, step):
            chunk = samples16k[start : start + step]
            while self._speech_samples + chunk.size > self._max_buffered and not self._closed:
                self._room.clear()
                await self._room.wait()
            if self._closed:
                return
            self._speech.append(chunk)
            self._speech_samples += chunk.size
            self._drained.clear()

    async def _wait_drained(self) -> None:
        if self._playout is None:
            return
        timeout = self._speech_samples / SAMPLE_RATE_HZ + DRAIN_MARGIN_S
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            logger.warning("avatar did not finish playing before the end", extra={"timeout_s": timeout})

    async def _interrupt(self) -> None:
        """Barge-in: drop the waiting TTS audio, the engine's input and frames; report what was cut."""
        buffered = self._speech_samples
        self._speech.clear()
        self._speech_samples = 0
        self._rs, self._rs_rate = None, None  # its held-back samples belong to the dropped speech
        in_flight_speech = max(0, self._speech_end - self._emitted)
        if self._engine is not None:
            self._engine.clear()
        played = (
            0 if self._turn_start is None else max(0, min(self._emitted, self._speech_end) - self._turn_start)
        )
        self._fed = self._emitted
        self._speech_end = min(self._speech_end, self._emitted)
        self._turn_start = None
        self._epoch += 1
        self._room.set()
        self._drained.set()
        report = ClearReport(
            played_s=round(played / SAMPLE_RATE_HZ, 4),
            dropped_s=round((buffered + in_flight_speech) / SAMPLE_RATE_HZ, 4),
        )
        logger.info("avatar cleared", extra={"played_s": report.played_s, "dropped_s": report.dropped_s})
        await self._call_event_handler("on_avatar_cleared", report)

    # --------------------------------------------------------------------------------- playout

    def _top_up(self, engine: AvatarEngine) -> None:
        """Hand the engine speech up to SPEECH_LEAD_FRAMES ahead of the clock; when there is none, silence
        up to IDLE_LEAD_FRAMES (whole frames), so the face keeps its idle life and the clock never starves."""
        spf = engine.samples_per_frame
        target = self._emitted + SPEECH_LEAD_FRAMES * spf
        while self._fed < target and self._speech:
            chunk = self._speech[0]
            n = min(chunk.size, target - self._fed)
            if n == chunk.size:
                self._speech.popleft()
            else:
                self._speech[0] = chunk[n:]
            if self._turn_start is None or self._speech_end <= self._emitted:
                self._turn_start = self._fed  # the first speech after silence opens a turn
            engine.push_audio(np.ascontiguousarray(chunk[:n]), SAMPLE_RATE_HZ)
            self._speech_samples -= n
            self._fed += n
            self._speech_end = self._fed
        if not self._speech:
            pad = -self._fed % spf  # complete the last frame of speech
            idle_target = self._emitted + IDLE_LEAD_FRAMES * spf
            if self._fed + pad < idle_target:
                pad = idle_target - self._fed
            if pad:
                engine.push_audio(np.zeros(pad, np.float32), SAMPLE_RATE_HZ)
                self._fed += pad
        if self._speech_samples <= self._max_buffered // 2:
            self._room.set()

    async def _run_playout(self) -> None:
        engine = self._engine
        assert engine is not None
        loop = asyncio.get_running_loop()
        period_s = 1.0 / engine.fps
        anchor: float | None = None  # loop time of frame 0 on the output clock
        k = 0
        try:
            while True:
                self._top_up(engine)
                try:
                    item = await engine.__anext__()
                except StopAsyncIteration:
                    return
                epoch = self._epoch
                now = loop.time()
                if anchor is None:
                    anchor = now - k * period_s
                due = anchor + k * period_s
                if now - due > REANCHOR_S:
                    logger.warning(
                        "avatar playout behind; re-anchoring", extra={"late_s": round(now - due, 3)}
                    )
                    anchor = now - k * period_s
                    due = now
                if due > now:
                    await asyncio.sleep(due - now)
                if epoch != self._epoch:
                    continue  # interrupted while this frame waited for its tick: it is never shown
                await self._emit(item, k, engine.fps)
                k += 1
                self._emitted += engine.samples_per_frame
                if not self._speech and self._emitted >= self._speech_end:
                    self._drained.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("avatar playout failed")
            await self.push_error(error_msg=f"avatar playout failed: {exc}", exception=exc)

    async def _emit(self, item: OutputItem, k: int, fps: int) -> None:
        pts_ns = k * NS_PER_S // fps
        h, w = item.frame.shape[:2]
        image = OutputImageRawFrame(
            image=np.ascontiguousarray(item.frame).tobytes(), size=(w, h), format="RGB"
        )
        image.pts = pts_ns
        image.sync_with_audio = self._sync_with_audio
        audio = OutputAudioRawFrame(audio=_to_s16le(item.audio), sample_rate=SAMPLE_RATE_HZ, num_channels=1)
        audio.pts = pts_ns
        await self.push_frame(image)
        await self.push_frame(audio)
        self._frames += 1


class RemoteAvatarVideoService(FrameProcessor):
    """The same processor against a running server: a ``/pcm`` stream in, a watch-only viewer out.

    url: the server (``http://HOST:PORT``). avatar: an enrolled avatar id or None (the server's default).
    The server paces everything (its media clock); this processor forwards what its viewer receives:
    ``OutputImageRawFrame`` (RGB, decoded) and ``OutputAudioRawFrame`` (48 kHz mono), dropping the oldest
    when the pipeline falls behind (``max_queued_frames``). ``stream`` is the stream id once started
    (others may watch it at ``URL/?watch=ID``). Events: ``on_avatar_cleared(processor, ClearReport)``.
    """

    def __init__(
        self,
        url: str,
        *,
        avatar: str | None = None,
        max_queued_frames: int = 50,
        connect_timeout_s: float = 20.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_queued_frames < 1:
            raise ValueError("max_queued_frames must be >= 1")
        self._url = url
        self._avatar = avatar
        self._timeout_s = connect_timeout_s
        self._publisher: Any = None
        self._viewer: Any = None
        self._out: deque[Frame] = deque(maxlen=max_queued_frames)
        self._out_ready = asyncio.Event()
        self.dropped_frames = 0
        self._forward: asyncio.Task[None] | None = None
        self._utterance: int | None = None  # sample rate of the open utterance
        self._utterances = 0
        self._closed = False
        self._register_event_handler("on_avatar_cleared")

    @property
    def stream(self) -> str | None:
        return None if self._publisher is None or self._publisher.hello is None else self._publisher.stream

    async def _start(self) -> None:
        if self._publisher is not None or self._closed:
            return
        from stream_avatar.server.client import AvatarClient, PcmPublisher

        self._publisher = PcmPublisher(self._url, avatar=self._avatar)
        await self._publisher.connect(self._timeout_s)
        self._viewer = AvatarClient(
            self._url, None, watch=self._publisher.stream, on_video=self._on_video, on_audio=self._on_audio
        )
        await self._viewer.connect(self._timeout_s)
        self._forward = self.create_task(self._run_forward(), "avatar_forward")

    async def _stop(self) -> None:
        self._closed = True
        task, self._forward = self._forward, None
        if task is not None:
            await self.cancel_task(task)
        viewer, self._viewer = self._viewer, None
        if viewer is not None:
            await viewer.close()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()

    async def cleanup(self) -> None:
        await self._stop()
        await super().cleanup()

    def _put(self, frame: Frame) -> None:
        if len(self._out) == self._out.maxlen:
            self.dropped_frames += 1  # deque drops the oldest
        self._out.append(frame)
        self._out_ready.set()

    def _on_video(self, frame: Any) -> None:
        rgb = frame.to_ndarray(format="rgb24")
        h, w = rgb.shape[:2]
        self._put(OutputImageRawFrame(image=rgb.tobytes(), size=(w, h), format="RGB"))

    def _on_audio(self, frame: Any) -> None:
        pcm = frame.to_ndarray()
        channels = len(frame.layout.channels)
        if pcm.dtype != np.int16:
            pcm = np.clip(np.rint(pcm.astype(np.float32) * 32767), -32768, 32767).astype(np.int16)
        mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm.reshape(-1)
        self._put(
            OutputAudioRawFrame(
                audio=np.asarray(np.rint(mono), "<i2").tobytes(),
                sample_rate=frame.sample_rate,
                num_channels=1,
            )
        )

    async def _run_forward(self) -> None:
        while True:
            while self._out:
                await self.push_frame(self._out.popleft())
            self._out_ready.clear()
            await self._out_ready.wait()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._end_utterance()
            await self._wait_played()
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._send_tts(frame)
        elif isinstance(frame, TTSStoppedFrame):
            await self._end_utterance()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _send_tts(self, frame: TTSAudioRawFrame) -> None:
        from stream_avatar.server.protocol import PCM_RATES_HZ

        if self._publisher is None or self._closed:
            return
        pcm = tts_to_mono(frame.audio, frame.num_channels)
        rate = frame.sample_rate
        if rate not in PCM_RATES_HZ:
            from stream_avatar.audio.resample import resample

            pcm = np.clip(np.rint(resample(pcm, rate, 24000) * 32767), -32768, 32767).astype(np.int16)
            rate = 24000
        if self._utterance != rate:
            await self._end_utterance()
            self._utterances += 1
            await self._publisher.send(
                {"type": "utterance", "sample_rate": rate, "id": f"u{self._utterances}"}
            )
            self._utterance = rate
        await self._publisher.send_pcm(pcm)

    async def _end_utterance(self) -> None:
        if self._utterance is not None and self._publisher is not None:
            self._utterance = None
            await self._publisher.send({"type": "end"})

    async def _wait_played(self) -> None:
        """EndFrame: wait for the last utterance's ``playback_finished`` (bounded by its length)."""
        if self._publisher is None or not self._utterances:
            return
        uid = f"u{self._utterances}"
        for _, msg in list(self._publisher.events):
            if msg.get("type") == "playback_finished" and msg.get("id") == uid:
                return
        timeout = float(self._publisher.hello.get("max_buffered_s", 60)) + DRAIN_MARGIN_S
        with contextlib.suppress(TimeoutError):
            await self._publisher.next_event("playback_finished", timeout_s=timeout, id=uid)

    async def _interrupt(self) -> None:
        self._out.clear()
        self._utterance = None
        if self._publisher is None:
            return
        sent = await self._publisher.clear()
        report = ClearReport(played_s=0.0, dropped_s=0.0)
        try:
            _, cleared = await self._publisher.next_event("cleared", after=sent, timeout_s=5.0)
            played = [
                m["played_ms"]
                for t, m in list(self._publisher.events)
                if t >= sent and m.get("type") == "playback_finished" and m.get("interrupted")
            ]
            report = ClearReport(
                played_s=round(sum(played) / 1000.0, 4), dropped_s=round(cleared["dropped_ms"] / 1000.0, 4)
            )
        except TimeoutError:
            logger.warning("server did not answer clear")
        self._out.clear()  # frames that arrived while the server was clearing
        await self._call_event_handler("on_avatar_cleared", report)

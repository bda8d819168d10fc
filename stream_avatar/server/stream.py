"""Streams and viewers: one avatar stream (one engine, one input, one media clock) watched by any number
of viewers; and the stream driven by raw PCM over a WebSocket (TTS, voice agents).

- ``Broadcast``: what viewers subscribe to. A stream's playout puts every frame into two ``FanOut``s
  (video, audio); each viewer gets its own bounded tracks from them and its own peer connection, and
  the per-frame ``rig`` message goes to every viewer's data channel. A stream that ends tells its
  viewers (they get ``stream_ended`` and close).
- ``PcmStream``: the stream of one ``/pcm`` WebSocket (docs/protocol.md, "PCM ingest"). The client
  opens an utterance (``{"type": "utterance", "sample_rate": 24000, "id": "u1"}``), sends its samples
  as binary s16le mono messages, and ends it (``end``, or the next ``utterance``). Audio may come paced
  (real time) or in bursts (a sentence at once): it waits in a bounded buffer (``MAX_BUFFERED_S``) and
  is fed to the engine at real time (``LEAD_S`` ahead of the clock: the driver's lookahead), so the
  playout never receives frames faster than it ticks. Between utterances, or when paced audio runs
  late by more than ``media.MIC_GAP_S``, silence is fed as time passes (``IDLE_LEAD_S`` ahead) so the
  face keeps its idle life and every frame is ready at its tick.

Underruns: when an open utterance's audio runs out (the sender or the network stalled), the time
nothing was fed and the silence fed after ``MIC_GAP_S`` push all of its later audio back, and a paced
sender that then catches up would keep that extra latency to the end (measured: +22 ms p50 over 90
bursts at 512², where a few stalls had added 70 ms). So the stream owes that time (``_debt``): while
it does, quiet 10 ms blocks at the head of the buffer (``QUIET_DB`` below the utterance's loudest
block so far) are skipped once a pause has already played ``KEEP_PAUSE_S``. Pauses get shorter until
the latency is back to the sender's pace; no speech is dropped, and short gaps inside speech are
never touched. The played duration counts the utterance's own audio (skipped blocks as played,
underrun silence not).

Playback accounting: every sample fed to the engine (speech and silence) has a position on one
timeline (16 kHz samples since the last reset); every frame the playout hands out (or drops unseen)
advances the played position by one frame of samples. An utterance has started playing when the
played position passes its first sample and has finished when it passes its last: then
``playback_started`` / ``playback_finished`` are sent. ``clear`` (barge-in) drops everything queued
(buffer, engine, playout), answers ``playback_finished`` with ``interrupted: true`` and the
milliseconds actually handed out for every utterance not finished yet, then ``cleared``.
``speaking`` is sent when an utterance starts playing while none was, ``idle`` when the last one
finishes (or is cleared).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_avatar.audio.resample import StreamResampler
from stream_avatar.emotion import facs as emotion_mod
from stream_avatar.motion import rig as rig_mod
from stream_avatar.server import protocol
from stream_avatar.server.admission import SessionLoad
from stream_avatar.server.endpoint import Endpoint, Send
from stream_avatar.server.media import MIC_GAP_S, FanOut, Playout, QueueTrack, playout_depth
from stream_avatar.session.engine import SAMPLE_RATE_HZ, AvatarEngine, OutputItem

logger = logging.getLogger(__name__)

MAX_BUFFERED_S = 60.0  # PCM waiting to be played; more is refused (``too_much_audio``), never dropped
LEAD_S = 0.04  # audio is fed this far ahead of real time (the learned driver's lookahead)
FEED_INTERVAL_S = 0.01
# Silence between utterances runs this far ahead of real time: one feed round, so it flows without
# gaps, and no more: the next utterance waits behind whatever silence is queued (at LEAD_S, 40 ms,
# PCM → viewer p50 was 13 ms above the microphone path's; at one round, level with it).
IDLE_LEAD_S = FEED_INTERVAL_S
# Underrun recovery (module docstring): a block this far below the utterance's loudest is quiet, and a
# pause keeps at least this much of itself.
QUIET_DB = 40.0
KEEP_PAUSE_S = 0.08
BLOCK = SAMPLE_RATE_HZ // 100  # 10 ms
MAX_EDITS = 4096  # underrun edits remembered per utterance (for its played duration), bounded
STATS_INTERVAL_S = 1.0
VIDEO_QUEUE = 2
AUDIO_QUEUE = 8

EngineFactory = Callable[[str], Awaitable[tuple[AvatarEngine, str]]]


# ------------------------------------------------------------------------------------ viewers


@dataclass(eq=False)
class Viewer:
    """One viewer's tracks of a stream, its rig channel (once open) and what to call when it ends."""

    audio: QueueTrack
    video: QueueTrack
    on_end: Callable[[], None]
    rig_channel: Any = None


class Broadcast:
    """The outputs of one stream, for its viewers. ``join`` / ``leave``; ``end`` when the stream ends."""

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.video = FanOut("video", VIDEO_QUEUE)
        self.audio = FanOut("audio", AUDIO_QUEUE)
        self.viewers: list[Viewer] = []
        self.ended = False

    def join(self, on_end: Callable[[], None]) -> Viewer:
        if self.ended:
            raise RuntimeError(f"stream {self.id} has ended")
        viewer = Viewer(self.audio.subscribe(), self.video.subscribe(), on_end)
        self.viewers.append(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        with contextlib.suppress(ValueError):
            self.viewers.remove(viewer)
        self.audio.unsubscribe(viewer.audio)
        self.video.unsubscribe(viewer.video)

    def send_rig(self, text: str) -> None:
        for viewer in self.viewers:
            channel = viewer.rig_channel
            if channel is not None and channel.readyState == "open":
                with contextlib.suppress(Exception):  # it may close between the check and the send
                    channel.send(text)

    def end(self) -> None:
        """The stream is gone: stop every track and tell every viewer. Idempotent."""
        if self.ended:
            return
        self.ended = True
        viewers, self.viewers = self.viewers, []
        for viewer in viewers:
            try:
                viewer.on_end()
            except Exception:  # one viewer's callback must not keep the others from hearing it
                logger.exception("viewer end callback failed", extra={"stream": self.id})
        self.video.stop()
        self.audio.stop()


def rig_message(k: int, pts_s: float, shown: OutputItem, late: bool) -> str:
    """The ``rig`` data channel message of one tick (docs/protocol.md)."""
    message: dict[str, Any] = {
        "pts": round(pts_s, 4),
        "frame": k,
        "speaking": bool(shown.speaking),
        "late": late,
        "rig": rig_mod.to_dict(shown.rig),
    }
    if shown.emotion is not None:
        message["emotion"] = {name: round(float(p), 3) for name, p in shown.emotion.items()}
    return json.dumps(message, separators=(",", ":"))


# ----------------------------------------------------------------------------------- PCM ingest


def _block_rms(samples: np.ndarray) -> np.ndarray:
    """RMS of each whole 10 ms block of ``samples`` (a partial last block is left out)."""
    n = samples.size // BLOCK
    return np.sqrt(np.mean(np.square(samples[: n * BLOCK].reshape(n, BLOCK), dtype=np.float64), axis=1))


@dataclass(eq=False)
class Utterance:
    """One utterance of PCM: where it lies on the fed timeline, and what was reported of it."""

    id: str
    rate: int
    resampler: StreamResampler
    samples: int = 0  # 16 kHz samples received (after resampling)
    ended: bool = False  # no more audio will come for it
    flushed: bool = False  # the resampler's tail has been queued
    start: int | None = None  # timeline position of its first sample, once fed
    end: int | None = None  # timeline position after its last sample, once all fed
    started: bool = False  # playback_started sent
    queued: int = 0  # its samples still waiting in the buffer
    peak_rms: float = 0.0  # loudest 10 ms block fed so far (what "quiet" is measured against)
    quiet_run: int = 0  # quiet samples fed since its last loud block (the pause playing now)
    skipped: int = 0  # quiet samples skipped to make up for underruns
    # Underrun edits of its stretch of the timeline, (timeline position, samples): silence fed inside
    # it (positive) and its quiet blocks skipped (negative), so the played duration counts its own audio.
    edits: list[tuple[int, int]] = field(default_factory=list)

    @property
    def quiet_level(self) -> float:
        """RMS under which a 10 ms block of it is quiet (``QUIET_DB`` below its loudest so far)."""
        return self.peak_rms * 10.0 ** (-QUIET_DB / 20.0)

    def played_ms(self, position: int) -> float:
        if self.start is None:
            return 0.0
        own = position - self.start
        for at, n in self.edits:
            own -= min(n, max(0, position - at)) if n > 0 else (n if position >= at else 0)
        return max(0.0, min(own, self.samples)) * 1000.0 / SAMPLE_RATE_HZ


@dataclass
class _Chunk:
    utterance: Utterance
    samples: np.ndarray  # 16 kHz float32
    last: bool = False  # the utterance's final chunk (its end is known when this is fed)


class PcmStream(Endpoint):
    """A stream driven by PCM from one WebSocket; ``handle(raw)`` per message, ``close()`` at the end."""

    kind = "stream"

    def __init__(
        self,
        send: Send,
        make_engine: EngineFactory,
        *,
        fps: int,
        size: int,
        latency_budget_ms: int,
        emotion: str,
        avatar_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(send)
        self._make_engine = make_engine
        self.fps, self.size, self.latency_budget_ms = fps, size, latency_budget_ms
        self.avatar_id = avatar_id
        self._emotion = emotion_mod.parse(emotion)
        self._clock = clock
        self.broadcast = Broadcast(self.id)
        self.engine: AvatarEngine | None = None
        self.playout: Playout | None = None
        self.spf = SAMPLE_RATE_HZ // fps
        # Timeline (16 kHz samples since the last reset): fed to the engine / handed out as frames.
        self._fed = 0
        self._played = 0
        self._dropped_base = 0.0  # engine.audio_dropped_s at the last reset
        self._due = 0.0  # monotonic time the next fed sample is due (real-time pacing)
        self._last_speech_fed = -1e9
        self._buffer: deque[_Chunk] = deque()
        self._buffered = 0  # samples in _buffer
        self._debt = 0  # underrun time (starved, then silence), not yet made up by skipping quiet blocks
        self._skipped_total = 0  # quiet samples skipped to make up underruns, over the stream's life
        self._open: Utterance | None = None  # the utterance binary messages belong to
        self._utterances: deque[Utterance] = deque()  # not finished yet, in order
        self._speaking = False
        self._count = 0

    # ---------------------------------------------------------------------------- plumbing

    def _emit(self, message: dict[str, Any]) -> None:
        """Send from a synchronous callback (the playout's tick)."""
        if not self._closing:
            self._spawn(self.send(message), "event")

    # ------------------------------------------------------------------------------- start

    async def start(self) -> None:
        """Build and start the engine and the media clock, then say ``hello``."""
        engine, self.avatar_id = await self._make_engine(self.avatar_id)
        self.engine = engine
        engine.set_emotion(self._emotion)
        engine.start()
        depth = playout_depth(self.latency_budget_ms, self.fps)
        self.playout = Playout(
            engine,
            self.broadcast.video,
            self.broadcast.audio,
            depth=depth,
            on_frame=self._on_frame,
            idle_feed=self._idle_feed,
            on_drop=self._on_drop,
        )
        self._due = self._clock()
        self._spawn(self.playout.consume(), "consume")
        self._spawn(self.playout.run(), "playout")
        self._spawn(self._feed_loop(), "feed")
        self._spawn(self._stats_loop(), "stats")
        await self.send(
            {
                "type": "hello",
                "stream": self.id,
                "protocol": protocol.PROTOCOL_VERSION,
                "fps": self.fps,
                "size": self.size,
                "avatar": self.avatar_id,
                "emotion": emotion_mod.format_spec(self._emotion),
                "watch": f"/?watch={self.id}",
                "sample_rates": list(protocol.PCM_RATES_HZ),
                "max_buffered_s": MAX_BUFFERED_S,
            }
        )

    # ---------------------------------------------------------------------------- messages

    async def handle(self, raw: str | bytes) -> None:
        """Act on one message; every problem becomes an ``error`` message, never an exception."""
        try:
            if isinstance(raw, bytes):
                self._on_pcm(protocol.pcm_samples(raw))
                return
            msg = protocol.parse_pcm(raw)
            kind = msg["type"]
            if kind == "utterance":
                self._on_utterance(msg["sample_rate"], msg.get("id"))
            elif kind == "end":
                self._end_open()
            elif kind == "clear":
                await self._on_clear()
            elif kind == "emotion":
                self._emotion = msg["weights"]
                if self.engine is not None:
                    self.engine.set_emotion(self._emotion)
                await self.send(
                    {
                        "type": "emotion",
                        "emotion": emotion_mod.format_spec(self._emotion),
                        "weights": self._emotion,
                    }
                )
            elif kind == "ping":
                await self.send({"type": "pong", "t": msg["t"]})
        except protocol.ProtocolError as exc:
            await self.send(protocol.error_message(exc.code, str(exc)))

    def _on_utterance(self, rate: int, uid: str | None) -> None:
        self._end_open()
        self._count += 1
        utt = Utterance(uid or f"u{self._count}", rate, StreamResampler(rate, SAMPLE_RATE_HZ))
        self._open = utt
        self._utterances.append(utt)

    def _end_open(self) -> None:
        utt, self._open = self._open, None
        if utt is None:
            return
        utt.ended = True
        tail = utt.resampler.flush()
        self._queue(utt, tail.astype(np.float32), last=True)

    def _on_pcm(self, samples: np.ndarray) -> None:
        utt = self._open
        if utt is None:
            raise protocol.ProtocolError(
                "no_utterance", 'PCM before an "utterance" message (or after "end" / "clear"): dropped'
            )
        seconds = samples.size / utt.rate
        if self._buffered / SAMPLE_RATE_HZ + seconds > MAX_BUFFERED_S:
            raise protocol.ProtocolError(
                "too_much_audio",
                f"{seconds:.2f} s refused: {self._buffered / SAMPLE_RATE_HZ:.1f} s are waiting to be played"
                f" (at most {MAX_BUFFERED_S:.0f} s); send it again later",
            )
        out = utt.resampler.process(samples.astype(np.float32) / 32768.0)
        self._queue(utt, out.astype(np.float32))
        self._feed()  # paced input plays without waiting for the next feeder round

    def _queue(self, utt: Utterance, samples: np.ndarray, last: bool = False) -> None:
        if samples.size == 0 and not last:
            return
        utt.samples += samples.size
        utt.queued += samples.size
        self._buffer.append(_Chunk(utt, samples, last))
        self._buffered += samples.size

    # ------------------------------------------------------------------------------ feeding

    def _push(self, samples: np.ndarray) -> None:
        assert self.engine is not None
        now = self._clock()
        utt = self._open
        if now > self._due and utt is not None and utt.start is not None and utt.start < self._fed:
            # Nothing was fed for a while inside an utterance: what follows plays that much later.
            self._debt += round((now - self._due) * SAMPLE_RATE_HZ)
        self._due = max(self._due, now)  # after a gap, pace from now: never a burst
        with contextlib.suppress(RuntimeError):  # closing
            self.engine.push_audio(samples, SAMPLE_RATE_HZ)
        self._fed += samples.size
        self._due += samples.size / SAMPLE_RATE_HZ

    def _feed(self) -> None:
        """Move buffered PCM to the engine, no further than ``LEAD_S`` ahead of real time."""
        if self.engine is None:
            return
        now = self._clock()
        budget = int((now + LEAD_S - max(self._due, now)) * SAMPLE_RATE_HZ)
        while self._buffer:
            chunk = self._buffer[0]
            utt = chunk.utterance
            if self._debt > 0:
                self._skip_quiet(chunk)  # whatever the budget: skipping is how a backlog catches up
            if budget <= 0 and chunk.samples.size:
                break
            take = chunk.samples[: max(budget, 0)]
            if take.size:
                if utt.start is None:
                    utt.start = self._fed
                self._track_level(utt, take)
                self._push(take)
                self._last_speech_fed = now
                budget -= take.size
                utt.queued -= take.size
                self._buffered -= take.size
            if take.size < chunk.samples.size:
                chunk.samples = chunk.samples[take.size :]
                break
            self._buffer.popleft()
            if chunk.last:
                if utt.start is None:  # an utterance without audio
                    utt.start = self._fed
                utt.end = self._fed
        idle = int((now + IDLE_LEAD_S - max(self._due, now)) * SAMPLE_RATE_HZ)
        if not self._buffer and idle > 0 and now - self._last_speech_fed >= MIC_GAP_S:
            # Idle (between utterances, or paced audio late): silence as time passes, so the engine
            # makes idle frames at a steady rate, each before its tick. (Fed only when a tick had
            # starved, each idle frame came after its tick: every other idle tick was a late one.)
            self._push_silence(idle)

    def _push_silence(self, n: int) -> None:
        """Silence on the timeline; inside an open utterance that has begun it is an underrun, owed."""
        utt = self._open
        if utt is not None and utt.start is not None:
            self._debt += n
            if len(utt.edits) < MAX_EDITS:
                utt.edits.append((self._fed, n))
        elif utt is None:
            self._debt = 0  # nothing is waiting behind it: no latency to make up
        self._push(np.zeros(n, np.float32))

    def _track_level(self, utt: Utterance, samples: np.ndarray) -> None:
        """Update the utterance's loudest block and its current quiet run with samples about to be fed."""
        rms = _block_rms(samples)
        if rms.size == 0:
            return
        utt.peak_rms = max(utt.peak_rms, float(rms.max()))
        loud = np.flatnonzero(rms >= utt.quiet_level)
        n = rms.size
        utt.quiet_run = (n - 1 - int(loud[-1])) * BLOCK if loud.size else utt.quiet_run + n * BLOCK

    def _skip_quiet(self, chunk: _Chunk) -> None:
        """Make up underrun debt: drop quiet 10 ms blocks at the head of ``chunk`` while the pause
        they belong to has already played ``KEEP_PAUSE_S`` (module docstring)."""
        utt = chunk.utterance
        # Nothing loud yet: quiet cannot be told from the utterance's own level.
        if utt.peak_rms <= 0.0 or utt.quiet_run < round(KEEP_PAUSE_S * SAMPLE_RATE_HZ):
            return
        n = min(self._debt, chunk.samples.size) // BLOCK
        loud = np.flatnonzero(_block_rms(chunk.samples[: n * BLOCK]) >= utt.quiet_level)
        drop = (int(loud[0]) if loud.size else n) * BLOCK
        if drop:
            chunk.samples = chunk.samples[drop:]
            utt.queued -= drop
            utt.skipped += drop
            if len(utt.edits) < MAX_EDITS:
                utt.edits.append((self._fed, -drop))
            self._buffered -= drop
            self._debt -= drop
            self._skipped_total += drop

    async def _feed_loop(self) -> None:
        while True:
            await asyncio.sleep(FEED_INTERVAL_S)
            self._feed()

    def _idle_feed(self, seconds: float) -> None:
        """Starved tick: between utterances (or paced audio late by more than MIC_GAP_S) feed
        silence so frames keep coming and the idle life keeps the face moving."""
        if self.engine is None or self._buffer or self._clock() - self._last_speech_fed < MIC_GAP_S:
            return
        self._push_silence(round(seconds * SAMPLE_RATE_HZ))

    # ------------------------------------------------------------------------------ playback

    def _position(self) -> int:
        dropped = self.engine.audio_dropped_s - self._dropped_base if self.engine is not None else 0.0
        return self._played + round(dropped * SAMPLE_RATE_HZ)

    def _on_drop(self) -> None:
        self._played += self.spf

    def _on_frame(self, k: int, pts_s: float, item: OutputItem | None, handed_out: float) -> None:
        if item is not None:
            self._played += self.spf
        self._report()
        shown = item if item is not None else (self.playout._last_item if self.playout else None)
        if shown is not None and self.broadcast.viewers:
            self.broadcast.send_rig(rig_message(k, pts_s, shown, item is None))

    def _report(self) -> None:
        position = self._position()
        while self._utterances:
            utt = self._utterances[0]
            if not utt.started and utt.start is not None and (position > utt.start or utt.end == utt.start):
                utt.started = True
                if not self._speaking:
                    self._speaking = True
                    self._emit({"type": "speaking"})
                self._emit({"type": "playback_started", "id": utt.id})
            if utt.started and utt.end is not None and position >= utt.end:
                self._utterances.popleft()
                self._emit(
                    self._finished(utt, interrupted=False, played_ms=utt.samples * 1000.0 / SAMPLE_RATE_HZ)
                )
                continue
            break
        if self._speaking and not self._utterances:
            self._speaking = False
            self._emit({"type": "idle"})

    def _finished(self, utt: Utterance, *, interrupted: bool, played_ms: float) -> dict[str, Any]:
        """The ``playback_finished`` message of ``utt``."""
        return {
            "type": "playback_finished",
            "id": utt.id,
            "played_ms": round(played_ms, 1),
            "duration_ms": round(utt.samples * 1000.0 / SAMPLE_RATE_HZ, 1),
            "interrupted": interrupted,
        }

    async def _on_clear(self) -> None:
        """Barge-in: drop the buffer, the engine's input and frames, and the playout's queue."""
        dropped_s = self._buffered / SAMPLE_RATE_HZ
        if self.engine is not None and self.playout is not None:
            dropped_s += self.engine.clear()
            self.playout.clear()
        position = self._position()
        self._open = None
        self._buffer.clear()
        self._buffered = 0
        self._debt = 0
        finished = []
        while self._utterances:
            utt = self._utterances.popleft()
            finished.append(self._finished(utt, interrupted=True, played_ms=utt.played_ms(position)))
        self._fed = self._played = 0
        self._dropped_base = self.engine.audio_dropped_s if self.engine is not None else 0.0
        self._due = self._clock()
        self._last_speech_fed = -1e9
        if self._speaking:
            self._speaking = False
            finished.append({"type": "idle"})
        for message in finished:  # in order, before the reply (as the protocol says)
            await self.send(message)
        await self.send({"type": "cleared", "dropped_ms": round(dropped_s * 1000.0, 1)})

    # -------------------------------------------------------------------------------- stats

    async def _stats_loop(self) -> None:
        last_ticks, last_t = 0, self._clock()
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            playout = self.playout
            now = self._clock()
            ticks = playout.ticks if playout is not None else 0
            await self.send(
                {
                    "type": "stats",
                    "fps": round((ticks - last_ticks) / max(1e-6, now - last_t), 2),
                    "frames_sent": ticks,
                    "late_frames": playout.late_frames if playout is not None else 0,
                    "buffered_ms": round(self._buffered * 1000.0 / SAMPLE_RATE_HZ, 1),
                    "owed_ms": round(self._debt * 1000.0 / SAMPLE_RATE_HZ, 1),
                    "skipped_ms": round(self._skipped_total * 1000.0 / SAMPLE_RATE_HZ, 1),
                    "viewers": len(self.broadcast.viewers),
                }
            )
            last_ticks, last_t = ticks, now

    # ----------------------------------------------------------------------------- shutdown

    async def _release(self) -> None:
        """After the tasks: viewers are told and every track stops, then the engine."""
        self.broadcast.end()
        if self.engine is not None:
            await self.engine.aclose()

    def load(self) -> SessionLoad:
        playout = self.playout
        if playout is None or playout.first_frame_at is None or self._closing:
            return SessionLoad(self.id, False, 0, 0)
        return SessionLoad(self.id, True, playout.ticks, playout.late_frames)

"""Media path of one WebRTC session: mic in, one media clock out.

Outgoing media is paced by ONE clock per session (``Playout``): tick k is due at ``t0 + k / fps``, and
at each tick the playout hands the video track frame k (pts k * 90000 / fps) and the audio track the
40 ms of audio that belongs to that frame (as two 20 ms packets at 48 kHz, pts k * 48000 / fps, 2 ms
of resampler lead included). Lips and sound therefore leave together by construction: the audio sent is the
engine's per-frame audio, i.e. the input audio delayed exactly as much as the picture.

A frame not ready at its tick is replaced by the previous frame (with silence) and counted as late,
never waited for. After a long stall (the loop blocked, the machine suspended) the clock re-anchors to
now instead of bursting out the missed ticks. The tracks aiortc reads are small bounded queues that
the playout fills at tick time; aiortc's sender pulls from them as soon as a frame is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from stream_avatar.audio.resample import StreamResampler
from stream_avatar.session.engine import SAMPLE_RATE_HZ, AvatarEngine, OutputItem

logger = logging.getLogger(__name__)

VIDEO_CLOCK_HZ = 90000
AUDIO_PACKET_S = 0.020  # one Opus packet
OUT_AUDIO_RATE_HZ = 48000
OUT_PACKET_SAMPLES = 960  # 20 ms at 48 kHz
OUT_LEAD_SAMPLES_16K = 32  # 2 ms of silence ahead of the outgoing audio (see Playout._send_audio)
STALL_S = 0.25  # a tick this late re-anchors the clock instead of catching up
TICK_MARGIN_S = 0.006  # a frame should be ready this long before its tick (absorbs compute jitter)
JITTER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"  # aiortc's private receiver attribute
MIC_GAP_S = 0.100  # no mic audio for this long: feed silence so the face keeps living (idle motion)


class LowDelayAudioJitterBuffer(JitterBuffer):
    """Audio jitter buffer that hands each in-order packet (one Opus packet = one frame) to the decoder
    the moment it arrives.

    aiortc's audio buffer holds 4 packets (80 ms), and at any prefetch it releases a packet only when
    the NEXT one arrives (+20 ms). Neither is needed here: the engine buffers audio until a video
    frame's worth is in, and the playout's latency budget absorbs arrival jitter. aiortc has no
    option for it, so this subclass replaces the buffer's release rule (``_remove_frame``).

    Loss and reordering: a missing packet is waited for until ``gap_wait`` later packets are in, then
    skipped. aiortc decodes at most one packet per arriving packet, so packets that queued up behind a
    hole would stay a permanent delay; instead the older ones are dropped (``dropped`` counts them,
    with the skipped holes) and the newest goes to the decoder: the stream is back at zero delay at
    the cost of a little audio.
    """

    def __init__(self, capacity: int = 16, gap_wait: int = 2) -> None:
        super().__init__(capacity=capacity)
        self.gap_wait = gap_wait
        self.dropped = 0

    def _slot(self, count: int) -> RtpPacket | None:
        assert self._origin is not None
        return self._packets[uint16_add(self._origin, count) % self.capacity]

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        present = [count for count in range(self.capacity) if self._slot(count) is not None]
        if not present:
            return None
        if present[0] > 0 and len(present) < self.gap_wait:
            return None  # a hole at the front: wait a little for the missing packet
        last = present[0]
        while last + 1 in present:  # the contiguous run from the first packet present
            last += 1
        packet = self._slot(last)
        assert packet is not None
        self.dropped += last  # holes skipped and older packets of the run dropped
        self.remove(last + 1)
        return JitterFrame(packet._data, packet.timestamp)  # type: ignore[attr-defined]


def set_audio_jitter_buffer(pc: RTCPeerConnection, prefetch: int) -> int:
    """Replace the jitter buffer of every audio receiver of ``pc``; returns how many were replaced.

    ``prefetch`` 0: ``LowDelayAudioJitterBuffer`` (the server's default); N >= 1: aiortc's own buffer
    holding N packets (aiortc's default is 4, i.e. 80 ms). aiortc exposes no setting for it, so this
    reaches into the receiver's private attribute; a test checks the attribute still exists, so an
    aiortc upgrade that renames it fails loudly in CI instead of silently restoring the 80 ms. Must
    run before the first packet arrives (after setRemoteDescription, before the answer is sent).
    """
    changed = 0
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        if not hasattr(receiver, JITTER_BUFFER_ATTR):
            raise RuntimeError("aiortc's RTCRtpReceiver no longer has the jitter buffer attribute")
        buffer = (
            LowDelayAudioJitterBuffer() if prefetch == 0 else JitterBuffer(capacity=16, prefetch=prefetch)
        )
        setattr(receiver, JITTER_BUFFER_ATTR, buffer)
        changed += 1
    return changed


class QueueTrack(MediaStreamTrack):
    """An outgoing track fed by the playout: ``recv()`` returns frames in the order they were put.

    Bounded: when the sender falls behind, the oldest queued frame is dropped (and counted), so a
    stalled encoder can never make the session lag further and further behind.
    """

    def __init__(self, kind: str, maxsize: int) -> None:
        super().__init__()
        self.kind = kind
        self._queue: deque[av.AudioFrame | av.VideoFrame] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(frame)
        self._ready.set()

    def clear(self) -> None:
        self._queue.clear()

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a pending recv() so it raises


class FanOut:
    """One playout's frames to several outgoing tracks: a stream's own peer connection and its viewers.

    ``subscribe()`` adds a bounded ``QueueTrack`` (drop-oldest, see there); ``put`` hands every
    subscribed track the same frame object (aiortc encodes per peer connection; the frame is only
    read; shared video is converted to yuv420p once). Written here rather than using aiortc's
    ``MediaRelay``: its buffered mode queues without a bound and its unbuffered mode keeps only the
    newest frame, which drops audio packets whenever two arrive between reads; a QueueTrack per
    viewer is bounded and keeps every packet it can.
    """

    def __init__(self, kind: str, maxsize: int) -> None:
        self.kind = kind
        self.maxsize = maxsize
        self.tracks: list[QueueTrack] = []

    def subscribe(self) -> QueueTrack:
        track = QueueTrack(self.kind, self.maxsize)
        self.tracks.append(track)
        return track

    def unsubscribe(self, track: QueueTrack) -> None:
        with contextlib.suppress(ValueError):
            self.tracks.remove(track)
        track.stop()

    def put(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if len(self.tracks) > 1 and isinstance(frame, av.VideoFrame) and frame.format.name != "yuv420p":
            # Shared by several encoders, each in its own thread: converted to their yuv420p once
            # here. PyAV's reformat of one frame from two threads at once shares one scaler context
            # (it hung a test); read-only sharing is safe. One track: its encoder converts, off the loop.
            frame = frame.reformat(format="yuv420p")
        for track in self.tracks:
            track.put(frame)

    def clear(self) -> None:
        for track in self.tracks:
            track.clear()

    def stop(self) -> None:
        for track in self.tracks:
            track.stop()
        self.tracks = []

    @property
    def dropped(self) -> int:
        return sum(t.dropped for t in self.tracks)


def audio_frame_s16(samples: np.ndarray, pts: int, sample_rate_hz: int = SAMPLE_RATE_HZ) -> av.AudioFrame:
    """(n,) float32 [-1, 1] mono -> an s16 mono AudioFrame stamped ``pts`` in 1/sample_rate_hz."""
    pcm = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype(np.int16)[None, :]
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = sample_rate_hz
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate_hz)
    return frame


def mic_frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded mic frame (s16 or float, packed or planar, any channel count) -> (n,) float32 mono."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    x = arr.astype(np.float32) / 32768.0 if arr.dtype == np.int16 else arr.astype(np.float32)
    if frame.format.is_planar:
        x = x.reshape(channels, -1).mean(axis=0) if channels > 1 else x.reshape(-1)
    else:
        x = x.reshape(-1, channels).mean(axis=1) if channels > 1 else x.reshape(-1)
    return np.ascontiguousarray(x, dtype=np.float32)


class MicLatency:
    """Server-side audio→frame latency: mic packet arrival → the frame made from it is handed out.

    The mic reader ``mark``s each pushed packet (its end in seconds of input audio, its arrival time);
    the playout asks ``frame_latency_s(n)`` for the n-th frame since the last ``restart`` (whose audio
    ends at input position ``base + skipped + (n + 1) / fps``, where ``skipped`` is the input the
    engine dropped on overload since the restart: without it every drop would shift the mapping to
    older packets for good and the latency would seem to grow without bound). Bounded deques;
    approximate by up to 1 ms of resampler delay.
    """

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self._marks: deque[tuple[float, float]] = deque(maxlen=400)  # (input end s, arrival monotonic)
        self._input_s = 0.0
        self._base_s = 0.0
        self.samples_ms: deque[float] = deque(maxlen=250)

    def mark(self, seconds: float, arrival: float) -> None:
        self._input_s += seconds
        self._marks.append((self._input_s, arrival))

    def restart(self) -> None:
        """After an interrupt the engine's frame grid restarts at the next input sample."""
        self._base_s = self._input_s
        self._marks.clear()

    def frame_latency_s(
        self, n_since_restart: int, handed_out: float, skipped_s: float = 0.0
    ) -> float | None:
        end_s = self._base_s + skipped_s + (n_since_restart + 1) / self.fps
        while self._marks and self._marks[0][0] < end_s - 1e-6:
            self._marks.popleft()
        if not self._marks:
            return None
        latency = handed_out - self._marks[0][1]
        self.samples_ms.append(latency * 1000.0)
        return latency


def playout_depth(latency_budget_ms: float, fps: int) -> int:
    """The latency budget in frames (``Playout``'s ``depth``): frames that may wait for their tick."""
    return max(1, round(latency_budget_ms * fps / 1000))


class Playout:
    """The session media clock: engine output -> video + audio tracks (+ a per-frame callback).

    ``depth``: frames that may wait for their tick (the latency budget in frames, >= 1). Beyond it the
    oldest waiting frame is dropped. The tick phase follows the producer (see ``_adapt_phase``), so
    in steady state a frame waits only a few ms for its tick.
    ``on_frame(k, pts_s, item_or_None, handed_out_monotonic)`` runs at every tick (the rig channel);
    ``on_drop()`` for every engine frame dropped unseen (not for those dropped by ``clear``).
    ``start``: the clock waits for this event (see ``run``).
    """

    def __init__(
        self,
        engine: AvatarEngine,
        video: QueueTrack | FanOut,
        audio: QueueTrack | FanOut,
        *,
        depth: int,
        on_frame: Callable[[int, float, OutputItem | None, float], None],
        idle_feed: Callable[[float], None] | None = None,
        on_drop: Callable[[], None] | None = None,
        start: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.fps = engine.fps
        self.spf = engine.samples_per_frame
        self.video, self.audio = video, audio
        self.depth = max(1, depth)
        self._on_frame = on_frame
        self._idle_feed = idle_feed
        self._on_drop = on_drop
        self._start = start
        self._clock = clock
        self._ready: deque[tuple[OutputItem, float]] = deque()  # (item, monotonic time it arrived)
        self.period = 1.0 / self.fps
        self._t0 = 0.0
        self._slacks: list[float] = []
        self.phase_shifts = 0
        self._have_item = asyncio.Event()
        self._last_frame: av.VideoFrame | None = None
        self._last_item: OutputItem | None = None
        self._silence = np.zeros(self.spf, np.float32)
        self.ticks = 0
        self.late_frames = 0
        self.dropped_frames = 0
        self.reanchors = 0
        self.first_frame_at: float | None = None
        self._rs = StreamResampler(SAMPLE_RATE_HZ, OUT_AUDIO_RATE_HZ)
        self._pending48 = self._rs.process(np.zeros(OUT_LEAD_SAMPLES_16K, np.float32))
        self._audio_pts = 0

    # -------------------------------------------------------------------------- producers

    async def consume(self) -> None:
        """Move engine output into the bounded ready queue (runs until the engine ends)."""
        async for item in self.engine:
            self._ready.append((item, self._clock()))
            while len(self._ready) > self.depth:
                self._drop_oldest()
            self._have_item.set()

    def _drop_oldest(self) -> None:
        self._ready.popleft()
        if self._start is None or self._start.is_set():  # before it, every frame is discarded (run)
            self.dropped_frames += 1
        if self._on_drop is not None:
            self._on_drop()

    def _discard_ready(self) -> None:
        while self._ready:
            self._ready.popleft()
            if self._on_drop is not None:
                self._on_drop()

    def clear(self) -> None:
        """Interrupt: frames waiting for their tick and audio queued for the encoder are dropped."""
        self.dropped_frames += len(self._ready)
        self._ready.clear()
        self.audio.clear()

    @property
    def queued(self) -> int:
        return len(self._ready)

    # ------------------------------------------------------------------------------ clock

    async def run(self) -> None:
        """Wait for ``start`` (the peer connection is up), then for the first frame; anchor the clock
        there and tick at fps until cancelled.

        Nothing is handed to the tracks before ``start``: frames queued while DTLS is still
        handshaking would reach the receiver (or not) depending on each track's queue bound, and
        tick 0 would no longer be the first frame of BOTH streams. Frames made meanwhile (idle motion
        only: no microphone audio can arrive yet) are discarded.
        """
        if self._start is not None:
            while not self._start.is_set():
                self._discard_ready()
                if self._idle_feed is not None:
                    self._idle_feed(1.0 / self.fps)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._start.wait(), timeout=1.0 / self.fps)
            self._discard_ready()
        while not self._ready:
            if self._idle_feed is not None:
                self._idle_feed(1.0 / self.fps)
            self._have_item.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._have_item.wait(), timeout=1.0 / self.fps)
        self._t0 = self._clock() + TICK_MARGIN_S
        self.first_frame_at = self._clock()
        k = 0
        while True:
            due = self._t0 + k * self.period
            now = self._clock()
            if now < due:
                await asyncio.sleep(due - now)
                now = self._clock()
            elif now - due > STALL_S:
                logger.warning("playout stalled; re-anchoring", extra={"late_s": round(now - due, 3)})
                self._t0 = now - k * self.period
                self.reanchors += 1
            self._tick(k, now)
            k += 1
            if k % self.fps == 0:
                self._adapt_phase()

    def _adapt_phase(self) -> None:
        """Keep frames from waiting for their tick longer than needed (latency), once a second.

        ``slack`` is how long a frame waited between arriving and its tick. If even the shortest wait
        of the last second exceeds a frame period, a frame is always queued: drop one. If it exceeds
        the margin, move the ticks earlier by the excess (one slightly shorter frame interval, which
        the receiver's jitter buffer absorbs). Late frames (slack < 0) show as ticks without a frame;
        then the margin is what protects the next ones.
        """
        slacks, self._slacks = self._slacks, []
        if len(slacks) < self.fps // 2:
            return
        least = min(slacks)
        if least > self.period and self._ready:
            self._drop_oldest()
            least -= self.period
        if least > TICK_MARGIN_S:
            shift = min(least - TICK_MARGIN_S, self.period)
            self._t0 -= shift
            self.phase_shifts += 1

    def _send_audio(self, samples16k: np.ndarray) -> None:
        """Frame audio (16 kHz) -> 20 ms packets at 48 kHz, Opus's own rate.

        Handing aiortc exactly 960-sample 48 kHz frames keeps its encoder from re-buffering (its
        resampler would otherwise hold each packet back until the next one came: +20 ms). Our
        resampler holds back ~1 ms; the 2 ms lead given at construction covers it, so every tick
        completes its two packets.
        """
        pending = np.concatenate([self._pending48, self._rs.process(samples16k)])
        n = pending.size // OUT_PACKET_SAMPLES
        for j in range(n):
            part = pending[j * OUT_PACKET_SAMPLES : (j + 1) * OUT_PACKET_SAMPLES]
            self.audio.put(audio_frame_s16(part, self._audio_pts, OUT_AUDIO_RATE_HZ))
            self._audio_pts += OUT_PACKET_SAMPLES
        self._pending48 = pending[n * OUT_PACKET_SAMPLES :]

    def _tick(self, k: int, now: float) -> None:
        item: OutputItem | None = None
        if self._ready:
            item, ready_at = self._ready.popleft()
            self._slacks.append(now - ready_at)
        if item is not None:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(item.frame), format="rgb24")
            self._last_frame, self._last_item = frame, item
            samples = item.audio
        else:
            self.late_frames += 1
            if self._last_frame is None:
                return
            frame = self._last_frame
            samples = self._silence
        # A frame object may be re-sent (a late tick): give it this tick's timestamp.
        frame.pts = k * (VIDEO_CLOCK_HZ // self.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK_HZ)
        self.video.put(frame)
        self._send_audio(samples)
        self.ticks += 1
        self._on_frame(k, k / self.fps, item, now)
        if item is None and self._idle_feed is not None:
            # Starved: no input is arriving. Feed silence so the idle life keeps the face moving.
            self._idle_feed(1.0 / self.fps)

"""Python clients of the server: the loopback tests and the end-to-end benchmark use them, and a voice
agent can use them to drive an avatar with its TTS audio and to watch it.

- ``AvatarClient``: a real WebRTC peer (aiortc), signaling through the real WebSocket protocol
  (docs/protocol.md). It sends a microphone (``PcmSource``) and receives the avatar, or, with
  ``watch=STREAM_ID``, only receives a running stream (a viewer). Everything received is recorded
  with its arrival time on this process's monotonic clock, in bounded buffers.
- ``PcmPublisher``: the PCM endpoint (``/pcm``): opens a stream, sends utterances of raw PCM (paced
  or in bursts), ``clear`` for barge-in, and records the stream's events (``playback_started``,
  ``playback_finished``, ``speaking``, ``idle``...) with their arrival times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from stream_avatar.server.media import JITTER_BUFFER_ATTR, set_audio_jitter_buffer

SOURCE_RATE_HZ = 48000
PACKET_S = 0.020
VIDEO_CLOCK_HZ = 90000
AUDIO_CLOCK_HZ = 48000


class MarkerJitterBuffer(JitterBuffer):
    """Video jitter buffer that releases a frame as soon as its last packet (RTP marker bit) is in.

    aiortc's own video buffer releases a frame only when the first packet of the NEXT frame arrives,
    one frame period (40 ms at 25 fps) later than a browser would show it. A latency benchmark that
    used it would charge the server for the client's wait; this receiver behaves like a browser's.
    """

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        packets: list[RtpPacket] = []
        timestamp: int | None = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:  # the marker packet was lost: the frame ended anyway
                self.remove(count)
                return JitterFrame(b"".join(p._data for p in packets), timestamp)  # type: ignore[attr-defined]
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(b"".join(p._data for p in packets), timestamp)  # type: ignore[attr-defined]
        return None


def receive_like_a_browser(pc: RTCPeerConnection) -> None:
    """Give ``pc``'s receivers a browser's release points: a video frame when its last packet is in,
    an audio packet when it arrives (``MarkerJitterBuffer``, ``LowDelayAudioJitterBuffer``).

    A measuring client wants arrival times, not a playout policy: a browser adds its own adaptive
    playout delay and applies it to audio and video alike (lip sync from RTCP sender reports), so it
    does not change the A/V offset measured here."""
    set_audio_jitter_buffer(pc, prefetch=0)
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":  # the same private attribute set_audio_jitter_buffer replaces
            setattr(transceiver.receiver, JITTER_BUFFER_ATTR, MarkerJitterBuffer(capacity=512))


class PcmSource(MediaStreamTrack):
    """A microphone stand-in: plays ``samples`` (float32 mono at 48 kHz) in real time, 20 ms per frame,
    then silence. ``sent`` logs (first sample index, monotonic time) of every frame handed to aiortc,
    so a test knows when each sample left this process."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, noise_rms: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        self.samples = np.asarray(samples, np.float32)
        self._n = round(SOURCE_RATE_HZ * PACKET_S)
        self._pos = 0
        self._t0: float | None = None
        self._index = 0
        self._muted = False
        self._rng = np.random.default_rng(seed)
        self._noise_rms = noise_rms
        self.sent: deque[tuple[int, float]] = deque(maxlen=100_000)

    def mute(self) -> None:
        """From the next frame on, send only (noise-floor) silence."""
        self._muted = True

    @property
    def finished(self) -> bool:
        return self._pos >= self.samples.size

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self._index * PACKET_S
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = np.zeros(self._n, np.float32)
        start = self._pos
        if not self._muted and self._pos < self.samples.size:
            part = self.samples[self._pos : self._pos + self._n]
            chunk[: part.size] = part
        self._pos += self._n
        if self._noise_rms:
            chunk += self._rng.standard_normal(self._n).astype(np.float32) * self._noise_rms
        pcm = np.clip(np.rint(chunk * 32767), -32768, 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SOURCE_RATE_HZ
        frame.pts = self._index * self._n
        frame.time_base = Fraction(1, SOURCE_RATE_HZ)
        self._index += 1
        self.sent.append((start, time.monotonic()))
        return frame

    def sent_time_of(self, sample_index: int) -> float | None:
        """Monotonic time at which the frame holding ``sample_index`` was handed to aiortc."""
        for start, t in self.sent:
            if start <= sample_index < start + self._n:
                return t
        return None


@dataclass
class Received:
    """What the client got, each with its arrival time (monotonic seconds). Bounded."""

    video: deque[tuple[float, int, np.ndarray | None]] = field(default_factory=lambda: deque(maxlen=20_000))
    audio: deque[tuple[float, int, np.ndarray]] = field(default_factory=lambda: deque(maxlen=200_000))
    rig: deque[tuple[float, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=50_000))
    stats: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))


class AvatarClient:
    """Connect to a server, send ``source`` as the microphone, record video, audio and rig.

    keep_frames: store every ``keep_frames``-th decoded video frame (RGB); 0 keeps none (timing only).
    browser_like: receive with ``receive_like_a_browser`` (default); False keeps aiortc's own buffers.
    Received ``pts`` start at 0 with the first packet of each stream (aiortc maps RTP timestamps), and
    the server sends video and audio of tick 0 together, so video pts / 3600 and audio pts / 1920 both
    count frames of the session media clock.
    on_video / on_audio: called on the event loop with every decoded ``av.VideoFrame`` /
    ``av.AudioFrame`` as it arrives (to hand the avatar to another pipeline); they must not block.
    """

    def __init__(
        self,
        url: str,
        source: PcmSource | None,
        keep_frames: int = 0,
        browser_like: bool = True,
        watch: str | None = None,
        on_video: Callable[[av.VideoFrame], None] | None = None,
        on_audio: Callable[[av.AudioFrame], None] | None = None,
    ) -> None:
        if (source is None) == (watch is None):
            raise ValueError(
                "give a source (a presenter's microphone) or watch=STREAM_ID (a viewer), not both"
            )
        self.url = url.rstrip("/")
        self.source = source
        self.watch = watch
        self.keep_frames = keep_frames
        self.browser_like = browser_like
        self.on_video = on_video
        self.on_audio = on_audio
        self.received = Received()
        self.hello: dict[str, Any] | None = None
        self.answered_at: float | None = None
        self.pc: RTCPeerConnection | None = None
        self._ws: Any = None
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def ws_url(self) -> str:
        base = self.url.replace("http://", "ws://").replace("https://", "wss://") + "/ws"
        return base + (f"?watch={self.watch}" if self.watch is not None else "")

    async def connect(self, timeout_s: float = 20.0) -> None:
        self._ws = await websockets.connect(self.ws_url, max_size=1 << 20)
        self.hello = json.loads(await asyncio.wait_for(self._ws.recv(), timeout_s))
        self._tasks.append(asyncio.ensure_future(self._read_ws()))
        pc = RTCPeerConnection()
        self.pc = pc
        if self.source is not None:
            pc.addTransceiver(self.source, direction="sendrecv")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        if self.browser_like:
            receive_like_a_browser(pc)
        channel = pc.createDataChannel("rig", ordered=False, maxRetransmits=0)

        @channel.on("message")
        def on_rig(message: str) -> None:
            self.received.rig.append((time.monotonic(), json.loads(message)))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            reader = self._read_video(track) if track.kind == "video" else self._read_audio(track)
            self._tasks.append(asyncio.ensure_future(reader))

        await pc.setLocalDescription(await pc.createOffer())
        offer: dict[str, Any] = {"type": "offer", "sdp": pc.localDescription.sdp}
        if self.watch is not None:
            offer["watch"] = self.watch
        await self.send(offer)
        answer = await self.reply("answer", timeout_s)
        if answer.get("type") == "error":
            raise RuntimeError(f"the server refused the offer: {answer.get('code')}: {answer.get('message')}")
        self.answered_at = time.monotonic()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def send(self, message: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(message))

    async def reply(self, kind: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The next reply of type ``kind`` (or ``error``), skipping others."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = await asyncio.wait_for(self._replies.get(), max(0.01, deadline - time.monotonic()))
            if msg.get("type") in (kind, "error"):
                return msg

    async def clear(self) -> float:
        """Send ``clear``; returns the monotonic time it was sent."""
        t = time.monotonic()
        await self.send({"type": "clear"})
        return t

    async def _read_ws(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                msg = json.loads(raw)
                if msg.get("type") == "stats":
                    self.received.stats.append(msg)
                    continue
                if msg.get("type") == "error":
                    self.received.errors.append(msg)
                if self._replies.full():
                    self._replies.get_nowait()
                self._replies.put_nowait(msg)

    async def _read_video(self, track: MediaStreamTrack) -> None:
        n = 0
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                arrival = time.monotonic()
                assert isinstance(frame, av.VideoFrame)
                keep = self.keep_frames and n % self.keep_frames == 0
                image = frame.to_ndarray(format="rgb24") if keep else None
                self.received.video.append((arrival, int(frame.pts or 0), image))
                n += 1
                if self.on_video is not None:
                    self.on_video(frame)

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                arrival = time.monotonic()
                assert isinstance(frame, av.AudioFrame)
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                channels = len(frame.layout.channels)
                mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm.reshape(-1)
                self.received.audio.append((arrival, int(frame.pts or 0), mono))
                if self.on_audio is not None:
                    self.on_audio(frame)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pc is not None:
            await self.pc.close()
        if self._ws is not None:
            await self._ws.close()


class PcmPublisher:
    """Drive a stream with raw PCM over ``/pcm`` (docs/protocol.md, "PCM ingest").

    ``await connect()`` → the ``hello`` (its ``stream`` is what viewers watch); ``await say(samples,
    rate)`` sends one utterance (int16 or float32 mono; ``paced``: in ``chunk_ms`` pieces at real time,
    like a streaming TTS; else in one burst, like a TTS that returns a sentence at once); ``await
    clear()`` interrupts. Every message from the server is kept in ``events`` as (monotonic arrival,
    message), bounded.
    """

    def __init__(self, url: str, avatar: str | None = None) -> None:
        base = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        self.ws_url = base + "/pcm" + (f"?avatar={avatar}" if avatar else "")
        self.hello: dict[str, Any] | None = None
        self.events: deque[tuple[float, dict[str, Any]]] = deque(maxlen=10_000)
        # (utterance id, first sample index in it, monotonic time sent) of every binary message.
        self.sent: deque[tuple[str | None, int, float]] = deque(maxlen=100_000)
        self._ws: Any = None
        self._reader: asyncio.Task[Any] | None = None
        self._arrived = asyncio.Event()

    @property
    def stream(self) -> str:
        assert self.hello is not None, "connect() first"
        return str(self.hello["stream"])

    async def connect(self, timeout_s: float = 20.0) -> dict[str, Any]:
        self._ws = await websockets.connect(self.ws_url, max_size=1 << 20)
        hello = json.loads(await asyncio.wait_for(self._ws.recv(), timeout_s))
        if hello.get("type") != "hello":
            raise RuntimeError(f"the server refused the stream: {hello}")
        self.hello = hello
        self._reader = asyncio.ensure_future(self._read())
        return hello

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                self.events.append((time.monotonic(), json.loads(raw)))
                self._arrived.set()

    async def send(self, message: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(message))

    async def say(
        self,
        samples: np.ndarray,
        sample_rate_hz: int,
        utterance_id: str | None = None,
        *,
        paced: bool = False,
        chunk_ms: int = 20,
    ) -> float:
        """Send one utterance; returns the monotonic time its first samples were sent."""
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            pcm = np.clip(np.rint(np.asarray(pcm, np.float32) * 32767), -32768, 32767).astype(np.int16)
        header: dict[str, Any] = {"type": "utterance", "sample_rate": int(sample_rate_hz)}
        if utterance_id is not None:
            header["id"] = utterance_id
        await self.send(header)
        t0 = time.monotonic()
        if paced:
            n = max(1, sample_rate_hz * chunk_ms // 1000)
            for i, start in enumerate(range(0, pcm.size, n)):
                delay = t0 + i * n / sample_rate_hz - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._ws.send(pcm[start : start + n].astype("<i2").tobytes())
                self.sent.append((utterance_id, start, time.monotonic()))
        else:  # a burst, in messages of at most ~10 s at 48 kHz
            step = (1 << 20) // 2
            for start in range(0, pcm.size, step):
                await self._ws.send(pcm[start : start + step].astype("<i2").tobytes())
                self.sent.append((utterance_id, start, time.monotonic()))
        await self.send({"type": "end"})
        return t0

    async def send_pcm(self, samples: np.ndarray) -> None:
        """Send samples of the open utterance as they come (a streaming TTS): int16 or float32 mono,
        in messages of at most 1 MiB. The caller opens the utterance (``send({"type": "utterance",
        ...})``) and ends it (``send({"type": "end"})``); ``say`` does all three for a whole one."""
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            pcm = np.clip(np.rint(np.asarray(pcm, np.float32) * 32767), -32768, 32767).astype(np.int16)
        step = (1 << 20) // 2
        for start in range(0, pcm.size, step):
            await self._ws.send(pcm[start : start + step].astype("<i2").tobytes())

    def sent_time_of(self, utterance_id: str | None, sample_index: int) -> float | None:
        """When the message holding ``sample_index`` of that utterance was sent (paced sends)."""
        best = None
        for uid, start, t in self.sent:
            if uid == utterance_id and start <= sample_index:
                best = t
            elif uid == utterance_id and start > sample_index:
                break
        return best

    async def clear(self) -> float:
        """Barge-in; returns the monotonic time ``clear`` was sent."""
        t = time.monotonic()
        await self.send({"type": "clear"})
        return t

    async def next_event(
        self, kind: str, after: float = 0.0, timeout_s: float = 10.0, **match: Any
    ) -> tuple[float, dict[str, Any]]:
        """The first event of type ``kind`` (with the given field values) that arrived after ``after``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for t, msg in list(self.events):
                if t >= after and msg.get("type") == kind and all(msg.get(k) == v for k, v in match.items()):
                    return t, msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no {kind} {match or ''} within {timeout_s} s; got {list(self.events)[-5:]}"
                )
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

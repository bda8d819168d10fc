"""One client session: a WebSocket for signaling and control, one aiortc peer connection, one engine.

Lifecycle: created when the WebSocket opens (``hello`` sent), negotiated by one ``offer``, closed when
the WebSocket closes, the peer connection fails, or the server shuts down. ``close()`` is idempotent
and leaves no task, thread or track running (tested).

A reference clip (``emotion_ref``) is analysed by a background task, one at a time per session, so
the WebSocket loop keeps handling ``clear`` and the rest meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from stream_avatar.emotion import facs as emotion_mod
from stream_avatar.server import protocol
from stream_avatar.server.admission import SessionLoad
from stream_avatar.server.endpoint import Endpoint, Send
from stream_avatar.server.media import (
    MIC_GAP_S,
    MicLatency,
    Playout,
    mic_frame_to_mono,
    playout_depth,
    set_audio_jitter_buffer,
)
from stream_avatar.server.stream import Broadcast, Viewer, rig_message
from stream_avatar.session.engine import SAMPLE_RATE_HZ, AvatarEngine, OutputItem

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class SessionSettings:
    """What a session needs from the server's configuration (see stream_avatar.config.ServerConfig).

    latency_budget_ms: frames may wait this long for their tick before the oldest is dropped.
    audio_jitter_prefetch: 0 = release each mic packet on arrival (``LowDelayAudioJitterBuffer``);
    N >= 1 = aiortc's buffer holding N 20 ms packets (aiortc's own default: 4).
    emotion: the engines' starting emotion spec (what the engine factory builds them with); ``auto``:
      the emotion inferred from the voice.
    """

    fps: int = 25
    size: int = 512
    latency_budget_ms: int = 80
    audio_jitter_prefetch: int = 0
    emotion: str = "auto"


EngineFactory = Callable[[str], Awaitable[tuple[AvatarEngine, str]]]
RendererFactory = Callable[[str], Awaitable[tuple[Any, str]]]
StreamFinder = Callable[[str], Broadcast | None]


class Session(Endpoint):
    """Signaling + media for one client. ``handle(raw)`` for each WebSocket message; ``close()``."""

    kind = "session"

    def __init__(
        self,
        send: Send,
        make_engine: EngineFactory,
        make_renderer: RendererFactory,
        settings: SessionSettings,
        avatar_id: str,
        find_stream: StreamFinder | None = None,
    ) -> None:
        super().__init__(send)
        self._make_engine = make_engine
        self._make_renderer = make_renderer
        self.settings = settings
        self.avatar_id = avatar_id
        self.pc: RTCPeerConnection | None = None
        self.engine: AvatarEngine | None = None
        self.playout: Playout | None = None
        # This session's own outputs; viewers of it (``watch``) subscribe to the same broadcast.
        self.broadcast = Broadcast(self.id)
        self._video = self.broadcast.video.subscribe()
        self._audio = self.broadcast.audio.subscribe()
        self._find_stream = find_stream
        self._watching: tuple[Broadcast, Viewer] | None = None  # a watch-only session's stream
        self._rig_channel: Any = None
        self._negotiated = False
        self._latency = MicLatency(settings.fps)
        self._frames_since_clear = 0
        self._dropped_at_clear = 0.0  # the engine's audio_dropped_s at the last clear
        self._last_mic = -math.inf
        self._mic_frames = 0
        self._started = time.monotonic()
        self._answered_at: float | None = None
        self._connected = asyncio.Event()  # the peer connection reached "connected": media may flow
        self._emotion = emotion_mod.parse(settings.emotion)
        self._reference: asyncio.Task[Any] | None = None  # the clip being analysed (at most one)
        self.watch_hint = False  # admitted as a viewer (``/ws?watch=ID``): counted as one
        self.watched: str | None = None  # the stream this session watched (for the audit log)

    # ---------------------------------------------------------------------------- plumbing

    async def hello(self) -> None:
        await self.send(
            {
                "type": "hello",
                "session": self.id,
                "protocol": protocol.PROTOCOL_VERSION,
                "fps": self.settings.fps,
                "size": self.settings.size,
                "avatar": self.avatar_id,
                "latency_budget_ms": self.settings.latency_budget_ms,
                "emotion": emotion_mod.format_spec(self._emotion),
                "reference_max_bytes": protocol.MAX_REFERENCE_BYTES,
                "neutral_max_bytes": protocol.MAX_NEUTRAL_BYTES,
            }
        )

    # ---------------------------------------------------------------------------- messages

    async def handle(self, raw: str | bytes) -> None:
        """Act on one client message; every problem becomes an ``error`` message, never an exception."""
        try:
            if len(raw) > protocol.MAX_MESSAGE_BYTES:  # an emotion_ref clip: ~10 ms of JSON, off the loop
                msg = await asyncio.to_thread(protocol.parse, raw)
            else:
                msg = protocol.parse(raw)
            kind = msg["type"]
            if kind == "offer" and msg.get("watch") is not None:
                await self._on_watch(msg["sdp"], msg["watch"])
            elif kind == "offer" and self.watch_hint:
                raise protocol.ProtocolError(
                    "bad_offer",
                    "this connection was admitted as a viewer (/ws?watch=): its offer needs watch",
                )
            elif kind == "offer":
                await self._on_offer(msg["sdp"])
            elif kind == "clear":
                await self._on_clear()
            elif kind == "avatar":
                await self._on_avatar(msg["avatar"])
            elif kind == "emotion":
                await self._on_emotion(msg["weights"])
            elif kind == "emotion_ref":
                self._on_emotion_ref(msg["data"], msg.get("neutral"))
            elif kind == "ping":
                await self.send({"type": "pong", "t": msg["t"]})
        except protocol.ProtocolError as exc:
            await self.send(protocol.error_message(exc.code, str(exc)))

    async def _on_offer(self, sdp: str) -> None:
        if self._negotiated:
            raise protocol.ProtocolError("already_negotiated", "this session already has a peer connection")
        self._negotiated = True
        try:
            engine, self.avatar_id = await self._make_engine(self.avatar_id)
        except ValueError as exc:  # an unknown id, or one without a consent record (``no_consent``)
            self._negotiated = False
            raise protocol.ProtocolError(getattr(exc, "code", "unknown_avatar"), str(exc)) from None
        self.engine = engine
        engine.set_emotion(self._emotion)  # one sent before the offer, else the configured one
        pc = RTCPeerConnection()
        self.pc = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self._read_mic(track), "mic")
            else:  # the client should not send video; read it anyway so nothing piles up
                self._spawn(_drain(track), "drain")

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label == "rig":
                self._rig_channel = channel

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            logger.info("peer state", extra={"session": self.id, "state": pc.connectionState})
            if pc is not self.pc:  # a refused offer's peer connection, already dropped
                return
            if pc.connectionState == "connected":
                self._connected.set()
            if pc.connectionState in ("failed", "closed"):
                await self.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError and others for unusable SDP
            await self._refuse_offer(f"cannot use this offer: {exc}")
        kinds = {t.kind for t in pc.getTransceivers()}
        if "audio" not in kinds or "video" not in kinds:
            await self._refuse_offer("the offer needs an audio (microphone) and a video m-line")
        set_audio_jitter_buffer(pc, self.settings.audio_jitter_prefetch)
        pc.addTrack(self._audio)
        pc.addTrack(self._video)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # aiortc gathers all candidates here (non-trickle)
        engine.start()
        depth = playout_depth(self.settings.latency_budget_ms, self.settings.fps)
        self.playout = Playout(
            engine,
            self.broadcast.video,
            self.broadcast.audio,
            depth=depth,
            on_frame=self._on_frame,
            idle_feed=self._idle_feed,
            on_drop=self._on_drop,
            start=self._connected,
        )
        self._spawn(self.playout.consume(), "consume")
        self._spawn(self.playout.run(), "playout")
        self._spawn(self._stats_loop(), "stats")
        self._answered_at = time.monotonic()
        await self.send({"type": "answer", "sdp": pc.localDescription.sdp})

    async def _on_watch(self, sdp: str, stream_id: str) -> None:
        """A watch-only session: receive another stream's video, audio and rig; send nothing."""
        if self._negotiated:
            raise protocol.ProtocolError("already_negotiated", "this session already has a peer connection")
        broadcast = self._find_stream(stream_id) if self._find_stream is not None else None
        if broadcast is None or broadcast.ended or stream_id == self.id:
            raise protocol.ProtocolError("unknown_stream", f"no stream {stream_id} is running on this server")
        self._negotiated = True
        self.watched = stream_id
        pc = RTCPeerConnection()
        self.pc = pc
        rig_channel: list[Any] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:  # a viewer's mic is not used: read it away
            self._spawn(_drain(track), "drain")

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label == "rig":
                rig_channel.append(channel)
                if self._watching is not None:
                    self._watching[1].rig_channel = channel

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return
            if pc.connectionState in ("failed", "closed"):
                await self.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError and others for unusable SDP
            await self._refuse_offer(f"cannot use this offer: {exc}")
        kinds = {t.kind for t in pc.getTransceivers()}
        if "video" not in kinds:
            await self._refuse_offer("a watch offer needs a video m-line (recvonly), and audio to hear it")
        viewer = broadcast.join(self._stream_ended)
        self._watching = (broadcast, viewer)
        if rig_channel:
            viewer.rig_channel = rig_channel[0]
        if "audio" in kinds:
            pc.addTrack(viewer.audio)
        pc.addTrack(viewer.video)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        self._answered_at = time.monotonic()
        logger.info("viewer joined", extra={"session": self.id, "stream": stream_id})
        await self.send({"type": "answer", "sdp": pc.localDescription.sdp, "watch": stream_id})

    def _stream_ended(self) -> None:
        """The watched stream ended: say so, then close this session (its socket closes with it)."""

        async def end() -> None:
            stream_id = self._watching[0].id if self._watching is not None else ""
            self._watching = None
            await self.send({"type": "stream_ended", "stream": stream_id})
            await self.close()

        if not self._closing:
            self._spawn(end(), "ended")

    async def _on_clear(self) -> None:
        dropped = 0.0
        if self.engine is not None and self.playout is not None:
            dropped = self.engine.clear()
            self.playout.clear()
            self._latency.restart()
            self._dropped_at_clear = self.engine.audio_dropped_s
            self._frames_since_clear = 0
        await self.send({"type": "cleared", "dropped_s": round(dropped, 3)})

    async def _on_emotion(self, weights: dict[str, float], source: str | None = None) -> None:
        self._emotion = weights
        if self.engine is not None:
            self.engine.set_emotion(weights)
        reply: dict[str, Any] = {
            "type": "emotion",
            "emotion": emotion_mod.format_spec(weights),
            "weights": weights,
        }
        if source is not None:
            reply["source"] = source
        await self.send(reply)

    def _on_emotion_ref(self, data: str, neutral: str | None = None) -> None:
        if self._reference is not None and not self._reference.done():
            raise protocol.ProtocolError(
                "reference_busy", "a reference clip is still being analysed; send the next after its reply"
            )
        self._reference = self._spawn(self._apply_reference(data, neutral), "reference")

    async def _apply_reference(self, data: str, neutral: str | None = None) -> None:
        """Decode and analyse the clip (and the optional photo of the person at rest) in a worker thread,
        then make its emotion the session's. Every failure becomes an ``error`` reply; the session and
        its emotion stay as they were."""
        try:
            weights = await asyncio.to_thread(reference_emotion, data, neutral)
        except protocol.ProtocolError as exc:
            await self.send(protocol.error_message(exc.code, str(exc)))
            return
        except Exception:  # a bug in the clip analysis must not end the session
            logger.exception("reference clip analysis failed", extra={"session": self.id})
            await self.send(
                protocol.error_message("reference_failed", "the server could not analyse the reference clip")
            )
            return
        logger.info(
            "reference emotion", extra={"session": self.id, "emotion": emotion_mod.format_spec(weights)}
        )
        await self._on_emotion(weights, source="reference")

    async def _on_avatar(self, avatar: str) -> None:
        try:
            renderer, avatar_id = await self._make_renderer(avatar)
        except ValueError as exc:  # an unknown id, or one without a consent record (``no_consent``)
            raise protocol.ProtocolError(getattr(exc, "code", "unknown_avatar"), str(exc)) from None
        if self.engine is not None:
            self.engine.set_renderer(renderer, avatar_id)
        self.avatar_id = avatar_id
        await self.send({"type": "avatar", "avatar": avatar_id})

    # --------------------------------------------------------------------------------- media

    async def _read_mic(self, track: MediaStreamTrack) -> None:
        """Always read the remote mic (so aiortc never piles frames up) and push it to the engine."""
        assert self.engine is not None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            arrival = time.monotonic()
            samples = mic_frame_to_mono(frame)
            if samples.size == 0:
                continue
            self._last_mic = arrival
            self._mic_frames += 1
            try:
                self.engine.push_audio(samples, int(frame.sample_rate))
            except ValueError as exc:
                logger.warning("bad mic frame dropped", extra={"session": self.id, "reason": str(exc)})
                continue
            except RuntimeError:  # engine closed: the session is closing
                return
            self._latency.mark(samples.size / frame.sample_rate, arrival)

    def _idle_feed(self, seconds: float) -> None:
        """No mic audio for a while (not connected yet, muted, a TTS pause): feed silence so frames
        keep coming and the idle life keeps the face moving."""
        if self.engine is None or time.monotonic() - self._last_mic < MIC_GAP_S:
            return
        n = round(seconds * SAMPLE_RATE_HZ)
        with contextlib.suppress(RuntimeError):
            self.engine.push_audio(np.zeros(n, np.float32), SAMPLE_RATE_HZ)
            self._latency.mark(n / SAMPLE_RATE_HZ, time.monotonic())

    def _on_drop(self) -> None:
        self._frames_since_clear += 1  # keeps the frame -> mic packet mapping of MicLatency aligned

    def _on_frame(self, k: int, pts_s: float, item: OutputItem | None, handed_out: float) -> None:
        if item is not None:
            skipped = self.engine.audio_dropped_s - self._dropped_at_clear if self.engine is not None else 0.0
            self._latency.frame_latency_s(self._frames_since_clear, handed_out, skipped)
            self._frames_since_clear += 1
        channel = self._rig_channel
        own = channel is not None and channel.readyState == "open"
        if not own and not self.broadcast.viewers:
            return
        shown = item if item is not None else (self.playout._last_item if self.playout else None)
        if shown is None:
            return
        text = rig_message(k, pts_s, shown, item is None)
        if own:
            with contextlib.suppress(Exception):  # the channel may close between the check and the send
                channel.send(text)
        self.broadcast.send_rig(text)

    async def _stats_loop(self) -> None:
        last_ticks, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            await self.send(self.stats(last_ticks, last_t))
            if self.playout is not None:
                last_ticks = self.playout.ticks
            last_t = time.monotonic()

    def stats(self, last_ticks: int = 0, last_t: float | None = None) -> dict[str, Any]:
        now = time.monotonic()
        engine = self.engine.stats() if self.engine is not None else {}
        playout = self.playout
        ticks = playout.ticks if playout is not None else 0
        span = now - (last_t if last_t is not None else self._started)
        lat = np.asarray(self._latency.samples_ms, np.float64)
        first_ms = None
        if playout is not None and playout.first_frame_at is not None and self._answered_at is not None:
            first_ms = round((playout.first_frame_at - self._answered_at) * 1000.0, 1)
        return {
            "type": "stats",
            "t_s": round(now - self._started, 3),
            "fps": round((ticks - last_ticks) / span, 2) if span > 0 else 0.0,
            "frames_sent": ticks,
            "late_frames": playout.late_frames if playout is not None else 0,
            "dropped_frames": playout.dropped_frames if playout is not None else 0,
            "queue_frames": playout.queued if playout is not None else 0,
            "reanchors": playout.reanchors if playout is not None else 0,
            "first_frame_ms": first_ms,
            "render_ms_p50": _finite(engine.get("render_ms_p50")),
            "render_ms_p95": _finite(engine.get("render_ms_p95")),
            "rtf": _finite(engine.get("rtf")),
            "audio_in_s": engine.get("audio_in_s", 0.0),
            "audio_dropped_s": engine.get("audio_dropped_s", 0.0),
            "mic_frames": self._mic_frames,
            "mouth_latency_ms": round(float(np.median(lat)), 1) if lat.size else None,
            "mouth_latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
        }

    # ------------------------------------------------------------------------------ shutdown

    async def _drop_peer(self) -> None:
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()

    async def _refuse_offer(self, message: str) -> NoReturn:
        """Undo a half-made negotiation (its tasks, peer connection and unstarted engine)."""
        self._negotiated = False
        for task in [t for t in self._tasks if t.get_name().endswith(("-mic", "-drain"))]:
            task.cancel()
        await self._drop_peer()
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.aclose()
        raise protocol.ProtocolError("bad_offer", message)

    async def _release(self) -> None:
        """After the tasks: leave the watched stream, end this one's broadcast (its viewers are
        told; every track stops), close the peer connection and the engine."""
        if self._watching is not None:
            broadcast, viewer = self._watching
            self._watching = None
            broadcast.leave(viewer)
        self.broadcast.end()
        self._video.stop()
        self._audio.stop()
        await self._drop_peer()
        if self.engine is not None:
            await self.engine.aclose()

    @property
    def watching(self) -> bool:
        """A watch-only session: it said so at the upgrade (``/ws?watch=``) or by its offer."""
        return self._watching is not None or self.watch_hint

    def load(self) -> SessionLoad:
        """What admission control samples: media flowing (the clock has started), ticks, late ticks."""
        playout = self.playout
        if playout is None or playout.first_frame_at is None or self._closing:
            return SessionLoad(self.id, False, 0, 0)
        return SessionLoad(self.id, True, playout.ticks, playout.late_frames)


def reference_emotion(data: str, neutral: str | None = None) -> dict[str, float]:
    """``emotion_ref``'s base64 clip (and optional base64 photo of the person at rest) -> the emotion
    weights read from it (blocking: a worker thread).

    The clip goes to a private temp file (``mkstemp``: mode 0600, a name of our making; nothing of the
    client's reaches a path), removed before returning; the photo stays in memory. ProtocolError for a
    bad clip or photo.
    """
    clip, suffix = protocol.decode_reference(data)
    photo = None if neutral is None else protocol.decode_neutral(neutral)
    # Looked up at call time, through sys.modules: the analysis loads its models on first use only.
    reference = importlib.import_module("stream_avatar.capture.reference")
    fd, path = tempfile.mkstemp(prefix="stream_avatar-ref-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(clip)
        del clip
        try:
            weights = reference.clip_emotion(path, neutral_image=photo)
        except reference.ReferenceError as exc:
            # The message names the temp file; the client knows it as "the clip" (and needs no paths).
            text = str(exc).replace(path, "clip").replace(os.path.basename(path), "clip")
            text = text if text.startswith(("clip", "neutral image")) else f"clip: {text}"
            raise protocol.ProtocolError("bad_reference", f"reference {text}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    try:
        return emotion_mod.validate(weights)
    except emotion_mod.EmotionError as exc:  # clip_emotion returns validated weights; say so if not
        raise RuntimeError(f"clip_emotion returned invalid weights: {exc}") from None


def _finite(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()

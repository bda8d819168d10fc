"""WHIP ingest and WHEP playback (docs/protocol.md, "WHIP and WHEP"): streams and viewers over plain HTTP.

- ``WhipStream``: a stream whose input is the audio of a WHIP publisher (OBS Studio, GStreamer's
  whipsink, any RFC 9725 client). One engine and one media clock, like a presenter's session, but
  nothing goes back to the publisher: its outputs go to the stream's ``Broadcast`` for viewers. A
  publisher's video m-line is answered ``inactive`` (the avatar replaces the picture; decoding it
  would only cost CPU).
- ``WhepViewer``: one standard WebRTC player watching a running stream (a WHIP stream, a PCM stream
  or a presenter's session): a peer connection fed by the stream's ``Broadcast``, like a ``/ws``
  viewer without the WebSocket.

Both are ``Endpoint``s (tasks named ``whip-ID-...`` / ``whep-ID-...``; one idempotent ``close()``).
Their id is the HTTP resource's (32 hex digits: the capability to PATCH or DELETE it). Candidates:
aiortc gathers all of its own before answering, so the answer is complete; candidates a client
trickles with PATCH (``application/trickle-ice-sdpfrag``) are added to the ICE agent
(``parse_sdpfrag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp

from stream_avatar.emotion import facs as emotion_mod
from stream_avatar.server import protocol
from stream_avatar.server.admission import SessionLoad
from stream_avatar.server.endpoint import Endpoint
from stream_avatar.server.media import (
    MIC_GAP_S,
    Playout,
    mic_frame_to_mono,
    playout_depth,
    set_audio_jitter_buffer,
)
from stream_avatar.server.session import EngineFactory, SessionSettings
from stream_avatar.server.stream import Broadcast, Viewer, rig_message
from stream_avatar.session.engine import SAMPLE_RATE_HZ, AvatarEngine, OutputItem

logger = logging.getLogger(__name__)

# A WHIP stream's name, from its URL (``/whip/NAME``): what viewers ask for (``protocol.STREAM_NAME``);
# never used to build a path.
STREAM_NAME = protocol.STREAM_NAME
RESOURCE_ID = re.compile(r"^[0-9a-f]{32}$")
SDP_CONTENT_TYPE = "application/sdp"
SDPFRAG_CONTENT_TYPE = "application/trickle-ice-sdpfrag"
MAX_SDPFRAG_CANDIDATES = 64  # per PATCH: a client has a handful (host, srflx, relay per interface)


class OfferError(ValueError):
    """An offer the server cannot use; the message is one line, for the HTTP 400 body."""


class IceRestartError(ValueError):
    """A PATCH asked for an ICE restart (new ufrag/pwd): not supported (HTTP 422)."""


async def _discard(message: dict[str, Any]) -> None:
    """WHIP and WHEP have no control channel: the events a stream would send go nowhere."""


def _new_resource_id() -> str:
    return secrets.token_hex(16)


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


async def _apply_offer(pc: RTCPeerConnection, sdp: str) -> None:
    """``setRemoteDescription`` of a client's offer; OfferError for anything aiortc cannot use."""
    if not sdp.startswith("v=0"):
        raise OfferError('an SDP offer starts with "v=0"')
    if len(sdp) > protocol.MAX_SDP_CHARS:
        raise OfferError(f"SDP offer of {len(sdp)} characters exceeds {protocol.MAX_SDP_CHARS}")
    try:
        described = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises ValueError and others for malformed SDP
        raise OfferError(" ".join(f"cannot use this offer: {exc}".split())) from None
    for media in described.media:
        # aiortc takes an offer without a fingerprint and only its DTLS handshake fails, seconds
        # later: a client is told now, with the reason.
        if media.port and not (media.dtls and media.dtls.fingerprints):
            raise OfferError(f"the {media.kind} m-line has no DTLS fingerprint (a=fingerprint)")
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:  # aiortc raises ValueError and others for unusable SDP
        raise OfferError(" ".join(f"cannot use this offer: {exc}".split())) from None
    if all(m.dtls is not None and m.dtls.role == "auto" for m in described.media if m.port):
        answer_as_dtls_server(pc)


def answer_as_dtls_server(pc: RTCPeerConnection) -> None:
    """Make the answer say ``a=setup:passive`` where the offer left the DTLS role open (actpass).

    aiortc answers ``active`` and then, as the DTLS client, offers only ECDHE-ECDSA cipher suites: a
    client whose certificate is RSA (GStreamer's webrtcbin, and with it whipsink / whepsrc) has no
    suite in common and the handshake fails ("no shared cipher"). As the DTLS server aiortc uses its
    own ECDSA certificate, which every WebRTC stack can verify. RFC 5763 lets the answerer take either
    role; aiortc has no public setting for it, so this sets its transports' private role the way its
    own ``setRemoteDescription`` does for an offer that says ``active`` (a test checks it still
    works). Call after ``setRemoteDescription`` of an offer whose m-lines all say ``actpass``, before
    ``createAnswer``; an offer that says ``active`` or ``passive`` keeps aiortc's own answer.
    """
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is not None and getattr(transport, "_role", None) == "auto":
            transport._set_role("server")


# ------------------------------------------------------------------------------------- trickle ICE


@dataclass(frozen=True)
class SdpFrag:
    """What a trickle-ICE PATCH body says: the ICE credentials it is for and its candidates, each with
    the media id (``a=mid``) of the m-line it follows."""

    ufrag: str | None
    pwd: str | None
    candidates: tuple[tuple[str | None, int, str], ...]  # (mid, m-line index, candidate attribute)
    end: bool  # a=end-of-candidates


def parse_sdpfrag(text: str) -> SdpFrag:
    """An ``application/trickle-ice-sdpfrag`` body (RFC 8840) -> SdpFrag; ValueError when malformed."""
    ufrag = pwd = None
    mid: str | None = None
    index = -1
    candidates: list[tuple[str | None, int, str]] = []
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:") :]
        elif line.startswith("a=candidate:"):
            candidates.append((mid, max(index, 0), line[len("a=") :]))
            if len(candidates) > MAX_SDPFRAG_CANDIDATES:
                raise ValueError(f"more than {MAX_SDPFRAG_CANDIDATES} candidates in one PATCH")
        elif line == "a=end-of-candidates":
            end = True
        elif len(line) < 2 or line[1] != "=":  # other SDP lines (a=ice-options, a=group...) are ignored
            raise ValueError(f"not an SDP fragment line: {line[:40]!r}")
    return SdpFrag(ufrag, pwd, tuple(candidates), end)


def _remote_ufrag(pc: RTCPeerConnection) -> str | None:
    description = pc.remoteDescription
    if description is None:
        return None
    found = re.search(r"^a=ice-ufrag:(\S+)", description.sdp, re.MULTILINE)
    return found.group(1) if found else None


async def add_trickled(pc: RTCPeerConnection, frag: SdpFrag) -> int:
    """Give the ICE agent the candidates of one PATCH; the number added. IceRestartError when the
    fragment carries other credentials than the offer (an ICE restart), ValueError for a candidate
    that does not parse."""
    current = _remote_ufrag(pc)
    if frag.ufrag is not None and current is not None and frag.ufrag != current:
        raise IceRestartError("ICE restarts are not supported: start a new session (DELETE, then POST)")
    added = 0
    for mid, index, attribute in frag.candidates:
        try:
            candidate = candidate_from_sdp(attribute.split(":", 1)[1])
        except Exception:
            raise ValueError(f"malformed candidate: {attribute[:60]!r}") from None
        candidate.sdpMid = mid
        candidate.sdpMLineIndex = index
        await pc.addIceCandidate(candidate)
        added += 1
    return added


# ---------------------------------------------------------------------------------------- WHIP


class WhipStream(Endpoint):
    """A stream driven by a WHIP publisher's audio. ``await negotiate(offer_sdp) -> answer_sdp``;
    ``close()`` (DELETE, the peer connection failing, the server stopping)."""

    kind = "whip"

    def __init__(
        self, name: str, make_engine: EngineFactory, settings: SessionSettings, avatar_id: str
    ) -> None:
        super().__init__(_discard)
        self.id = _new_resource_id()
        self.name = name
        self._make_engine = make_engine
        self.settings = settings
        self.avatar_id = avatar_id
        self.broadcast = Broadcast(name)
        self.pc: RTCPeerConnection | None = None
        self.engine: AvatarEngine | None = None
        self.playout: Playout | None = None
        self._connected = asyncio.Event()  # the clock starts when the publisher's media can flow
        self._last_audio = -1e9
        self.audio_frames = 0

    async def negotiate(self, sdp: str) -> str:
        """Apply the publisher's offer, start the engine and the clock; the complete answer SDP.
        OfferError (nothing left running of this negotiation) for an offer without audio or one
        aiortc cannot use; ValueError (``code``: unknown_avatar, no_consent) for the avatar."""
        pc = RTCPeerConnection()
        self.pc = pc
        tracks: list[MediaStreamTrack] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                tracks.append(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            logger.info("whip peer state", extra={"whip": self.id, "state": pc.connectionState})
            if pc is not self.pc:
                return
            if pc.connectionState == "connected":
                self._connected.set()
            if pc.connectionState in ("failed", "closed"):
                await self.close()

        await _apply_offer(pc, sdp)
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        # ``_offerDirection`` is the offer's direction seen from this side: "recvonly" = the client sends.
        if not any(t._offerDirection in ("recvonly", "sendrecv") for t in audio):
            raise OfferError("a WHIP offer needs an audio m-line that sends (sendonly or sendrecv)")
        for transceiver in pc.getTransceivers():
            # Nothing is sent back, and the publisher's picture is not used: only its audio is read.
            transceiver.direction = "recvonly" if transceiver.kind == "audio" else "inactive"
        set_audio_jitter_buffer(pc, self.settings.audio_jitter_prefetch)
        engine, self.avatar_id = await self._make_engine(self.avatar_id)
        self.engine = engine
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # aiortc gathers all candidates here
        engine.set_emotion(emotion_mod.parse(self.settings.emotion))
        engine.start()
        depth = playout_depth(self.settings.latency_budget_ms, self.settings.fps)
        self.playout = Playout(
            engine,
            self.broadcast.video,
            self.broadcast.audio,
            depth=depth,
            on_frame=self._on_frame,
            idle_feed=self._idle_feed,
            start=self._connected,
        )
        for track in tracks[:1]:  # one input: the first audio m-line
            self._spawn(self._read_audio(track), "audio")
        for track in tracks[1:]:
            self._spawn(_drain(track), "drain")
        self._spawn(self.playout.consume(), "consume")
        self._spawn(self.playout.run(), "playout")
        return str(pc.localDescription.sdp)

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        """Always read the publisher's audio (so aiortc never piles frames up) into the engine."""
        assert self.engine is not None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            samples = mic_frame_to_mono(frame)
            if samples.size == 0:
                continue
            self._last_audio = time.monotonic()
            self.audio_frames += 1
            try:
                self.engine.push_audio(samples, int(frame.sample_rate))
            except ValueError as exc:
                logger.warning("bad audio frame dropped", extra={"whip": self.id, "reason": str(exc)})
            except RuntimeError:  # engine closed: the stream is closing
                return

    def _idle_feed(self, seconds: float) -> None:
        """No audio for a while (not connected yet, a pause, a muted source): silence keeps the
        frames coming and the face's idle life going."""
        if self.engine is None or time.monotonic() - self._last_audio < MIC_GAP_S:
            return
        with contextlib.suppress(RuntimeError):
            self.engine.push_audio(np.zeros(round(seconds * SAMPLE_RATE_HZ), np.float32), SAMPLE_RATE_HZ)

    def _on_frame(self, k: int, pts_s: float, item: OutputItem | None, handed_out: float) -> None:
        if not self.broadcast.viewers:
            return
        shown = item if item is not None else (self.playout._last_item if self.playout else None)
        if shown is not None:
            self.broadcast.send_rig(rig_message(k, pts_s, shown, item is None))

    async def add_candidates(self, frag: SdpFrag) -> int:
        if self.pc is None:
            raise ValueError("this session has no peer connection")
        return await add_trickled(self.pc, frag)

    async def _release(self) -> None:
        """After the tasks: viewers are told, every track stops, then the peer connection and the
        engine."""
        self.broadcast.end()
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.aclose()

    def load(self) -> SessionLoad:
        playout = self.playout
        if playout is None or playout.first_frame_at is None or self._closing:
            return SessionLoad(self.id, False, 0, 0)
        return SessionLoad(self.id, True, playout.ticks, playout.late_frames)


# ---------------------------------------------------------------------------------------- WHEP


class WhepViewer(Endpoint):
    """One WHEP player of a running stream. ``await negotiate(offer_sdp) -> answer_sdp``; closes when
    the stream ends, its peer connection fails, or on DELETE."""

    kind = "whep"

    def __init__(self, stream_id: str, broadcast: Broadcast) -> None:
        super().__init__(_discard)
        self.id = _new_resource_id()
        self.stream_id = stream_id
        self._broadcast = broadcast
        self._viewer: Viewer | None = None
        self.pc: RTCPeerConnection | None = None

    async def negotiate(self, sdp: str) -> str:
        pc = RTCPeerConnection()
        self.pc = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:  # a player sends nothing; read away whatever comes
            self._spawn(_drain(track), "drain")

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return
            if pc.connectionState in ("failed", "closed"):
                await self.close()

        await _apply_offer(pc, sdp)
        kinds = {t.kind for t in pc.getTransceivers()}
        if "video" not in kinds:
            raise OfferError("a WHEP offer needs a video m-line (recvonly), and audio to hear it")
        if self._broadcast.ended:
            raise OfferError(f"stream {self.stream_id} has ended")
        viewer = self._broadcast.join(self._stream_ended)
        self._viewer = viewer
        if "audio" in kinds:
            pc.addTrack(viewer.audio)
        pc.addTrack(viewer.video)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        logger.info("whep viewer joined", extra={"whep": self.id, "stream": self.stream_id})
        return str(pc.localDescription.sdp)

    def _stream_ended(self) -> None:
        self._viewer = None  # the broadcast has dropped it already
        if not self._closing:
            self._spawn(self.close(), "ended")

    async def add_candidates(self, frag: SdpFrag) -> int:
        if self.pc is None:
            raise ValueError("this session has no peer connection")
        return await add_trickled(self.pc, frag)

    async def _release(self) -> None:
        viewer, self._viewer = self._viewer, None
        if viewer is not None:
            self._broadcast.leave(viewer)
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()

"""The server: HTTP for the browser client, the WebSockets and WHIP/WHEP, on one port, in one process.

aiohttp serves it all: ``/ws`` upgrades to a WebSocket session (a presenter's microphone, or a
watch-only viewer of a running stream); ``/pcm`` to a PCM-driven stream (TTS, voice agents:
``stream.PcmStream``); ``POST /whip/NAME`` starts a stream driven by a WHIP publisher's audio and
``POST /whep/NAME`` a WHEP player of a running stream (``whip``), each with its resource for PATCH
(trickled candidates) and DELETE; ``/status`` reports admission; any other GET is answered from
``web_client/``. Static paths are looked up in an allow-list of the files in that folder, never
joined from raw input; stream names and resource ids are validated before any lookup.

Responsible use (issue 12): avatars without a consent record are refused (an ``error`` with code
``no_consent``, or a start-up error for the configured one) unless ``allow_unconsented_avatars``;
every session, viewer, PCM, WHIP and WHEP stream is written to the audit log (start and end: avatar,
remote address, duration, frames; never audio; one small unbuffered write on the loop per event); the
engines composite the visible "AI-generated" badge (``build_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import mimetypes
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from stream_avatar.avatar.consent import has_consent, require_consent
from stream_avatar.config import Config
from stream_avatar.provenance.audit import AuditLog
from stream_avatar.server import protocol, whip
from stream_avatar.server.admission import Admission, AdmissionSettings, Refusal, calibrate
from stream_avatar.server.janus import JanusError, JanusPublisher, JanusSettings
from stream_avatar.server.session import Session, SessionSettings
from stream_avatar.server.stream import Broadcast, PcmStream
from stream_avatar.server.whip import WhepViewer, WhipStream

logger = logging.getLogger(__name__)

WEB_CLIENT_DIR = Path(__file__).resolve().parents[2] / "web_client"
WS_PATH = "/ws"
PCM_PATH = "/pcm"  # a stream driven by PCM over this WebSocket (``?avatar=ID`` optional)
STATUS_PATH = "/status"  # JSON: would a session be let in now, why not, and the measured load
STATIC_SUFFIXES = {".html", ".js", ".mjs", ".css", ".png", ".svg", ".ico", ".json", ".webmanifest"}
# WebSocket messages beyond this are refused by aiohttp itself (connection closed with 1009); below
# it and above protocol.MAX_MESSAGE_BYTES (protocol.MAX_REFERENCE_MESSAGE_BYTES for `emotion_ref`, the
# only big message: a base64 face clip) the session answers `too_large` and carries on.
WS_MAX_SIZE = protocol.MAX_REFERENCE_MESSAGE_BYTES + (1 << 20)
WS_HEARTBEAT_S = 20.0  # ping idle sockets; a peer that stops answering is closed
WS_CLOSE_TIMEOUT_S = 5.0  # wait this long for the peer's close frame
# HTTP request bodies (WHIP/WHEP offers, trickle fragments): an SDP is at most protocol.MAX_SDP_CHARS.
MAX_BODY_BYTES = protocol.MAX_SDP_CHARS + 4096
SHUTDOWN_TIMEOUT_S = 5.0  # aclose: handlers still running after this are cancelled
CALIBRATION_FRAMES = 12


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4
    max_viewers: int = 16
    cpu_fraction: float = 0.6
    prior_session_cores: float | None = None
    measured_admission: bool = True
    allow_unconsented_avatars: bool = False
    # WHIP and WHEP requests must carry ``Authorization: Bearer <token>`` when set.
    bearer_token: str | None = field(default=None, repr=False)
    # Origins whose web pages may call WHIP/WHEP across origins (CORS); empty: same origin only.
    cors_origins: tuple[str, ...] = ()
    # Webinar fan-out (``POST /janus/NAME``): the Janus VideoRoom streams are published into; None: off.
    janus: JanusSettings | None = None
    session: SessionSettings = field(default_factory=SessionSettings)


class AvatarServer:
    """Session, stream and viewer registry + the aiohttp server. ``await start()``, ``await aclose()``.

    avatars: ``resolve(spec) -> Avatar`` for "default" or an enrolled id (runs in a thread; may
      enroll or precompute), and ``build_engine(avatar) -> AvatarEngine`` /
      ``build_renderer(avatar) -> renderer`` (injected so tests can use fakes).
    audit: where sessions are recorded (None: nowhere, e.g. tests that do not look).
    Avatars without a consent record are refused unless ``settings.allow_unconsented_avatars``.
    """

    def __init__(
        self,
        settings: ServerSettings,
        resolve_avatar: Callable[[str], Any],
        build_engine: Callable[[Any], Any],
        build_renderer: Callable[[Any], Any],
        default_avatar: str = "default",
        web_root: Path = WEB_CLIENT_DIR,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        self._resolve_avatar = resolve_avatar
        self._build_engine = build_engine
        self._build_renderer = build_renderer
        self.default_avatar = default_avatar
        self.web_root = web_root.resolve()
        self.audit = audit
        self.sessions: dict[str, Session] = {}
        self.streams: dict[str, PcmStream] = {}
        self.whip_streams: dict[str, WhipStream] = {}  # by stream name
        self.whep_viewers: dict[str, WhepViewer] = {}  # by resource id
        self.janus_publishers: dict[str, JanusPublisher] = {}  # by resource id
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = False
        self._avatars: dict[str, Any] = {}
        self._avatar_lock = asyncio.Lock()
        self._closers: set[asyncio.Future[Any]] = set()
        self.admission = Admission(
            AdmissionSettings(
                max_sessions=settings.max_sessions,
                max_viewers=settings.max_viewers,
                cpu_fraction=settings.cpu_fraction,
                prior_cores=settings.prior_session_cores,
                measured=settings.measured_admission,
            ),
            lambda: (
                [s.load() for s in list(self.sessions.values())]
                + [s.load() for s in list(self.streams.values())]
                + [s.load() for s in list(self.whip_streams.values())]
            ),
        )
        self._sampler: asyncio.Task[Any] | None = None

    # ------------------------------------------------------------------------------ avatars

    def preload(self, spec: str) -> Any:
        """Resolve an avatar now (blocking), before the server starts. Raises ConsentError (a
        ValueError) for one without a consent record, unless allowed."""
        if spec not in self._avatars:
            self._avatars[spec] = self._resolve_avatar(spec)
        return self._consented(self._avatars[spec])

    async def avatar(self, spec: str) -> Any:
        """The Avatar for "default" or an id, cached; loading runs off the event loop. Raises
        ConsentError (a ValueError) for one without a consent record, unless allowed."""
        async with self._avatar_lock:
            if spec not in self._avatars:
                self._avatars[spec] = await asyncio.to_thread(self._resolve_avatar, spec)
            return self._consented(self._avatars[spec])

    def _consented(self, avatar: Any) -> Any:
        return require_consent(avatar, allow_unconsented=self.settings.allow_unconsented_avatars)

    def _audit(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record(event, **fields)

    def _avatar_fields(self, spec: str) -> dict[str, Any]:
        """The audit's view of an avatar: its id (the spec until it is resolved) and consent."""
        avatar = self._avatars.get(spec)
        if avatar is None:  # a session's resolved id: the cache is keyed by what was asked for
            avatar = next((a for a in list(self._avatars.values()) if getattr(a, "id", None) == spec), None)
        if avatar is None:
            return {"avatar": spec}
        return {"avatar": avatar.id, "consented": has_consent(getattr(avatar, "meta", {}) or {})}

    async def _engine_for(self, spec: str) -> tuple[Any, str]:
        avatar = await self.avatar(spec)
        engine = await asyncio.to_thread(self._build_engine, avatar)
        return engine, avatar.id

    async def _renderer_for(self, spec: str) -> tuple[Any, str]:
        avatar = await self.avatar(spec)
        if avatar.size != self.settings.session.size:
            raise ValueError(
                f"avatar {avatar.id} is {avatar.size} px, this server renders {self.settings.session.size} px"
            )
        return await asyncio.to_thread(self._build_renderer, avatar), avatar.id

    def calibrate(self, spec: str = "default") -> float:
        """Measure one session's cost (render + video encode of CALIBRATION_FRAMES frames at the
        server's size, in CPU cores at its fps) and make it admission's prior. Blocking; before
        ``start``. Motion, emotion, audio and networking come on top: the running sessions'
        measurement takes over once they stream."""
        import av
        import numpy as np
        from aiortc.codecs import get_encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        from stream_avatar.motion import rig

        avatar = self.preload(spec)
        renderer = self._build_renderer(avatar)
        fps = self.settings.session.fps
        encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))
        rigs = np.zeros((CALIBRATION_FRAMES, rig.RIG_SIZE), np.float32)
        rigs[:, rig.index("jawOpen")] = np.linspace(0.0, 0.8, CALIBRATION_FRAMES)
        pts = [0]

        def work() -> None:
            for frame in np.asarray(renderer.render(rigs)):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                vf.pts, pts[0] = pts[0], pts[0] + 90000 // fps
                encoder.encode(vf)

        cores = calibrate(work, CALIBRATION_FRAMES, fps)
        self.admission.prior_cores = cores
        # A viewer costs one more encode of the same frames.
        frames = [np.ascontiguousarray(f) for f in np.asarray(renderer.render(rigs))]
        viewer_encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))

        def encode_only() -> None:
            for frame in frames:
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                vf.pts, pts[0] = pts[0], pts[0] + 90000 // fps
                viewer_encoder.encode(vf)

        self.admission.viewer_cores = calibrate(encode_only, CALIBRATION_FRAMES, fps)
        return cores

    # ---------------------------------------------------------------------------------- http

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.on_response_prepare.append(_secure_headers)
        app.on_response_prepare.append(self._cors_headers)
        router = app.router
        router.add_get(WS_PATH, self._ws_route)
        router.add_get(PCM_PATH, self._pcm_route)
        router.add_get(STATUS_PATH, self._status)
        router.add_post("/whip/{stream}", self._whip_post)
        router.add_post("/whep/{stream}", self._whep_post)
        for kind in ("whip", "whep"):
            router.add_route("OPTIONS", f"/{kind}/{{stream}}", self._options)
            router.add_route("OPTIONS", f"/{kind}/{{stream}}/{{resource}}", self._options)
            router.add_patch(f"/{kind}/{{stream}}/{{resource}}", self._patch)
            router.add_delete(f"/{kind}/{{stream}}/{{resource}}", self._delete)
        router.add_post("/janus/{stream}", self._janus_post)
        router.add_delete("/janus/{stream}/{resource}", self._janus_delete)
        router.add_get("/{path:.*}", self._static)  # last: every other GET is a file of web_client/
        return app

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["path"] or "index.html"
        allowed = {
            p.relative_to(self.web_root).as_posix(): p
            for p in self.web_root.rglob("*")
            if p.is_file() and p.suffix in STATIC_SUFFIXES
        }
        target = allowed.get(name)  # looked up in the allow-list, never joined onto a path
        if target is None:
            return web.Response(status=HTTPStatus.NOT_FOUND, text="not found\n", charset="utf-8")
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix in (".js", ".mjs"):
            ctype = "text/javascript"
        charset = "utf-8" if ctype.startswith("text/") or ctype in ("application/json",) else None
        return web.Response(body=target.read_bytes(), content_type=ctype, charset=charset)

    def _busy(self, exc: Refusal) -> web.Response:
        return _error(HTTPStatus.SERVICE_UNAVAILABLE, "busy", str(exc))

    def _open_sessions(self) -> int:
        """What admission counts as sessions: presenters, PCM streams and WHIP streams (each registered
        before its handshake or negotiation yields, so concurrent requests see it)."""
        presenters = sum(1 for s in self.sessions.values() if not s.watching)
        return presenters + len(self.streams) + len(self.whip_streams)

    def _viewers(self) -> int:
        watchers = sum(1 for s in self.sessions.values() if s.watching)
        return watchers + len(self.whep_viewers) + len(self.janus_publishers)  # each one encode

    async def _status(self, request: web.Request) -> web.Response:
        """What a browser cannot read from a refused WebSocket upgrade: whether one more session
        would be let in now, the reason if not, and the load admission control measures."""
        reason = self.admission.reason(self._open_sessions())
        viewer_reason = self.admission.viewer_reason(self._viewers())
        body = {
            "accepting": reason is None,
            "reason": reason,
            "accepting_viewers": viewer_reason is None,
            "viewer_reason": viewer_reason,
            "sessions": sum(1 for s in self.sessions.values() if not s.watching),
            "streams": len(self.streams) + len(self.whip_streams),
            "viewers": self._viewers(),
            "max_viewers": self.settings.max_viewers,
            "max_sessions": self.settings.max_sessions,
            **self.admission.snapshot(),
        }
        return web.json_response(body)

    # ---------------------------------------------------------------------------- sessions

    def find_stream(self, stream_id: str) -> Broadcast | None:
        """The outputs of a running stream, for a viewer: a PCM stream, a WHIP stream, or a
        presenter's session."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.closed:
            return stream.broadcast
        whip = self.whip_streams.get(stream_id)
        if whip is not None and whip.playout is not None and not whip.closed:
            return whip.broadcast
        session = self.sessions.get(stream_id)
        if session is not None and session.playout is not None and not session.closed:
            return session.broadcast
        return None

    def _websocket(self) -> web.WebSocketResponse:
        # Incoming messages wait in aiohttp's reader, which stops reading the socket beyond 64 KiB
        # queued (flow control): the queue per connection is bounded by that and max_msg_size.
        return web.WebSocketResponse(
            max_msg_size=WS_MAX_SIZE, heartbeat=WS_HEARTBEAT_S, timeout=WS_CLOSE_TIMEOUT_S
        )

    def _upgrade_refusal(self, request: web.Request, ws: web.WebSocketResponse) -> web.Response | None:
        if not ws.can_prepare(request).ok:
            return _error(HTTPStatus.UPGRADE_REQUIRED, "bad_request", "this address takes a WebSocket")
        if self._stopping:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "busy", "the server is shutting down")
        return None

    async def _ws_route(self, request: web.Request) -> web.StreamResponse:
        ws = self._websocket()
        refused = self._upgrade_refusal(request, ws)
        if refused is not None:
            return refused
        watch_hint = "watch" in request.query
        try:
            if watch_hint:  # a viewer says so at the upgrade (``/ws?watch=ID``): an encode, not an engine
                self.admission.check_viewer(self._viewers())
            else:
                self.admission.check(self._open_sessions())
        except Refusal as exc:
            return self._busy(exc)

        async def send(message: dict[str, Any]) -> None:
            await ws.send_str(json.dumps(message, separators=(",", ":")))

        remote = _remote(request)

        async def renderer_for(spec: str) -> tuple[Any, str]:
            renderer, avatar_id = await self._renderer_for(spec)
            self._audit("avatar_change", session=session.id, **self._avatar_fields(spec), remote=remote)
            return renderer, avatar_id

        session = Session(
            send,
            self._engine_for,
            renderer_for,
            self.settings.session,
            self.default_avatar,
            find_stream=self.find_stream,
        )
        session.watch_hint = watch_hint
        self.sessions[session.id] = session  # counted by admission from here on
        try:
            await ws.prepare(request)
        except BaseException:
            self.sessions.pop(session.id, None)
            await session.close()
            raise

        def closed(s: Session) -> None:
            self.sessions.pop(s.id, None)
            # A session closed by its peer connection (failed, closed) ends its socket too.
            self._track(ws.close())

        session.on_closed = closed
        self._sockets.add(ws)
        logger.info("session opened", extra={"session": session.id, "remote": remote})
        kind = "viewer" if session.watch_hint else "session"
        started = time.monotonic()
        self._audit(
            "session_start",
            session=session.id,
            kind=kind,
            **self._avatar_fields(session.avatar_id),
            remote=remote,
        )
        try:
            await session.hello()
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await session.handle(msg.data)
                elif msg.type == WSMsgType.ERROR:  # e.g. a message over WS_MAX_SIZE (closed with 1009)
                    break
        finally:
            self._sockets.discard(ws)
            await session.close()
            await ws.close()
            self._audit(
                "session_end",
                session=session.id,
                kind="viewer" if session.watched is not None else kind,
                **self._avatar_fields(session.avatar_id),
                **({"watched": session.watched} if session.watched is not None else {}),
                remote=remote,
                duration_s=round(time.monotonic() - started, 3),
                frames=session.playout.ticks if session.playout is not None else 0,
            )
        return ws

    async def _pcm_route(self, request: web.Request) -> web.StreamResponse:
        """One PCM stream per ``/pcm`` connection; it ends (and its viewers with it) when the socket
        closes."""
        ws = self._websocket()
        refused = self._upgrade_refusal(request, ws)
        if refused is not None:
            return refused
        try:
            self.admission.check(self._open_sessions())
        except Refusal as exc:
            return self._busy(exc)

        async def send(message: dict[str, Any]) -> None:
            await ws.send_str(json.dumps(message, separators=(",", ":")))

        avatar = request.query.get("avatar", self.default_avatar)
        settings = self.settings.session
        stream = PcmStream(
            send,
            self._engine_for,
            fps=settings.fps,
            size=settings.size,
            latency_budget_ms=settings.latency_budget_ms,
            emotion=settings.emotion,
            avatar_id=avatar,
        )
        self.streams[stream.id] = stream  # counted by admission from here on

        def closed(s: PcmStream) -> None:
            self.streams.pop(s.id, None)

        stream.on_closed = closed
        try:
            await ws.prepare(request)
        except BaseException:
            await stream.close()
            raise
        if not protocol.AVATAR_ID.fullmatch(avatar):
            await send(protocol.error_message("unknown_avatar", "avatar must be an enrolled id or default"))
            await stream.close()
            await ws.close()
            return ws
        self._sockets.add(ws)
        remote = _remote(request)
        logger.info("pcm stream opened", extra={"stream": stream.id, "remote": remote})
        started = time.monotonic()
        self._audit(
            "session_start", session=stream.id, kind="pcm", **self._avatar_fields(avatar), remote=remote
        )
        try:
            try:
                await stream.start()
            except ValueError as exc:  # an unknown avatar id, or one without a consent record
                await send(protocol.error_message(getattr(exc, "code", "unknown_avatar"), str(exc)))
                return ws
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await stream.handle(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._sockets.discard(ws)
            await stream.close()
            await ws.close()
            self._audit(
                "session_end",
                session=stream.id,
                kind="pcm",
                **self._avatar_fields(stream.avatar_id),
                remote=remote,
                duration_s=round(time.monotonic() - started, 3),
                frames=stream.playout.ticks if stream.playout is not None else 0,
            )
        return ws

    # ----------------------------------------------------------------------------- WHIP / WHEP

    def _authorize(self, request: web.Request) -> None:
        """HTTPUnauthorized unless the request carries the configured bearer token (when one is)."""
        token = self.settings.bearer_token
        if token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise _http_error(
                web.HTTPUnauthorized,
                "unauthorized",
                "this server needs Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="stream_avatar"'},
            )

    async def _offer(self, request: web.Request) -> str:
        """The SDP offer of a WHIP/WHEP POST: 415 for another content type, 400 for a body that is
        no SDP text (aiohttp answers 413 beyond MAX_BODY_BYTES)."""
        if request.content_type != whip.SDP_CONTENT_TYPE:
            raise _http_error(
                web.HTTPUnsupportedMediaType,
                "bad_content_type",
                f"the offer must be sent as {whip.SDP_CONTENT_TYPE}, not {request.content_type}",
            )
        try:
            sdp = (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            raise _http_error(web.HTTPBadRequest, "bad_offer", "the SDP offer is not UTF-8 text") from None
        if not sdp.startswith("v=0") or len(sdp) > protocol.MAX_SDP_CHARS:
            raise _http_error(
                web.HTTPBadRequest,
                "bad_offer",
                f'the body must be an SDP offer: text starting with "v=0", at most '
                f"{protocol.MAX_SDP_CHARS} characters",
            )
        return sdp

    def _stream_name(self, request: web.Request) -> str:
        name = request.match_info["stream"]
        if not whip.STREAM_NAME.fullmatch(name):
            raise _http_error(
                web.HTTPBadRequest, "bad_stream", "a stream id is 1-64 of the characters A-Z a-z 0-9 _ -"
            )
        return name

    async def _whip_post(self, request: web.Request) -> web.Response:
        """A WHIP publisher starts a stream named by the URL; its audio drives the avatar."""
        self._authorize(request)
        name = self._stream_name(request)
        sdp = await self._offer(request)
        avatar = request.query.get("avatar", self.default_avatar)
        if not protocol.AVATAR_ID.fullmatch(avatar):
            raise _http_error(
                web.HTTPBadRequest, "unknown_avatar", "avatar must be an enrolled id or default"
            )
        if self._stopping:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "busy", "the server is shutting down")
        if name in self.whip_streams or self.find_stream(name) is not None:
            raise _http_error(web.HTTPConflict, "stream_exists", f"stream {name} is already running")
        try:
            self.admission.check(self._open_sessions())
        except Refusal as exc:
            return self._busy(exc)
        stream = WhipStream(name, self._engine_for, self.settings.session, avatar)
        self.whip_streams[name] = stream  # counted by admission, and the name taken, from here on
        remote = _remote(request)
        started = time.monotonic()

        def closed(s: WhipStream) -> None:
            if self.whip_streams.get(s.name) is s:
                del self.whip_streams[s.name]
            if s.playout is not None:  # a stream that ran (a refused offer was never announced)
                self._audit(
                    "session_end",
                    session=s.id,
                    kind="whip",
                    stream=s.name,
                    **self._avatar_fields(s.avatar_id),
                    remote=remote,
                    duration_s=round(time.monotonic() - started, 3),
                    frames=s.playout.ticks,
                )

        stream.on_closed = closed
        try:
            answer = await stream.negotiate(sdp)
        except whip.OfferError as exc:
            await stream.close()
            raise _http_error(web.HTTPBadRequest, "bad_offer", str(exc)) from None
        except ValueError as exc:  # the avatar: unknown, or stored without a consent record
            await stream.close()
            code = getattr(exc, "code", "unknown_avatar")
            cls = web.HTTPForbidden if code == "no_consent" else web.HTTPBadRequest
            raise _http_error(cls, code, str(exc)) from None
        except BaseException:
            await stream.close()
            raise
        logger.info("whip stream opened", extra={"whip": stream.id, "stream": name, "remote": remote})
        self._audit(
            "session_start",
            session=stream.id,
            kind="whip",
            stream=name,
            **self._avatar_fields(stream.avatar_id),
            remote=remote,
        )
        return _created(f"/whip/{name}/{stream.id}", answer)

    async def _whep_post(self, request: web.Request) -> web.Response:
        """A WHEP player starts watching a running stream (WHIP, PCM, or a presenter's session)."""
        self._authorize(request)
        name = self._stream_name(request)
        sdp = await self._offer(request)
        if self._stopping:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "busy", "the server is shutting down")
        broadcast = self._watchable(name)
        try:
            self.admission.check_viewer(self._viewers())
        except Refusal as exc:
            return self._busy(exc)
        viewer = WhepViewer(name, broadcast)
        announce = self._register_output(
            self.whep_viewers, viewer, "whep", watched=name, remote=_remote(request)
        )
        try:
            answer = await viewer.negotiate(sdp)
        except whip.OfferError as exc:
            await viewer.close()
            raise _http_error(web.HTTPBadRequest, "bad_offer", str(exc)) from None
        except BaseException:
            await viewer.close()
            raise
        announce()
        return _created(f"/whep/{name}/{viewer.id}", answer)

    def _watchable(self, name: str) -> Broadcast:
        """The outputs of the running stream ``name``, for a new output of it; 404 when none runs."""
        broadcast = self.find_stream(name)
        if broadcast is None or broadcast.ended:
            raise _http_error(
                web.HTTPNotFound, "unknown_stream", f"no stream {name} is running on this server"
            )
        return broadcast

    def _register_output(
        self, registry: dict[str, Any], endpoint: Any, kind: str, **fields: Any
    ) -> Callable[[], None]:
        """Register an output of a stream (a WHEP player, a Janus publisher) under its id: admission
        counts it from here on, and it leaves the registry when it closes. The returned call writes
        its ``session_start`` to the audit log once it is up; its ``session_end`` (with ``fields``
        and the duration) follows only then."""
        registry[endpoint.id] = endpoint
        started = time.monotonic()
        announced = False

        def closed(e: Any) -> None:
            registry.pop(e.id, None)
            if announced:
                duration_s = round(time.monotonic() - started, 3)
                self._audit("session_end", session=e.id, kind=kind, **fields, duration_s=duration_s)

        def announce() -> None:
            nonlocal announced
            announced = True
            self._audit("session_start", session=endpoint.id, kind=kind, **fields)

        endpoint.on_closed = closed
        return announce

    def _resource(self, request: web.Request) -> WhipStream | WhepViewer:
        """The WHIP stream or WHEP viewer a PATCH / DELETE names; 404 for any other URL."""
        kind = request.path.split("/", 2)[1]
        name, resource = request.match_info["stream"], request.match_info["resource"]
        found: WhipStream | WhepViewer | None = None
        if whip.RESOURCE_ID.fullmatch(resource):
            if kind == "whip":
                stream = self.whip_streams.get(name)
                if stream is not None and hmac.compare_digest(stream.id, resource):
                    found = stream
            else:
                viewer = self.whep_viewers.get(resource)
                if viewer is not None and viewer.stream_id == name:
                    found = viewer
        if found is None or found.closed:
            raise _http_error(web.HTTPNotFound, "unknown_session", "no such WHIP/WHEP session on this server")
        return found

    async def _patch(self, request: web.Request) -> web.Response:
        """Trickled ICE candidates of the client (RFC 8840 fragment): handed to the ICE agent, 204.
        ICE restarts are not supported (422)."""
        self._authorize(request)
        endpoint = self._resource(request)
        if request.content_type != whip.SDPFRAG_CONTENT_TYPE:
            raise _http_error(
                web.HTTPUnsupportedMediaType,
                "bad_content_type",
                f"PATCH takes Content-Type: {whip.SDPFRAG_CONTENT_TYPE}, not {request.content_type}",
            )
        try:
            frag = whip.parse_sdpfrag((await request.read()).decode("utf-8"))
            await endpoint.add_candidates(frag)
        except whip.IceRestartError as exc:
            raise _http_error(web.HTTPUnprocessableEntity, "ice_restart", str(exc)) from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise _http_error(web.HTTPBadRequest, "bad_candidate", f"malformed ICE fragment: {exc}") from None
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def _delete(self, request: web.Request) -> web.Response:
        """The client ends its session: its peer connection, engine (WHIP) and tracks are released."""
        self._authorize(request)
        endpoint = self._resource(request)
        await endpoint.close()
        return web.Response(status=HTTPStatus.OK)

    # ----------------------------------------------------------------------------------- Janus

    async def _janus_post(self, request: web.Request) -> web.Response:
        """Publish a running stream into the configured Janus VideoRoom (``?room=N``: another room
        of that Janus); 201 with the room and feed id once the media flows to Janus."""
        self._authorize(request)
        name = self._stream_name(request)
        base = self.settings.janus
        if base is None:
            raise _http_error(
                web.HTTPNotFound, "janus_off", "this server publishes to no Janus: set [janus] url (and room)"
            )
        room_text = request.query.get("room")
        settings = base
        if room_text is not None:
            try:
                room = int(room_text) if room_text.isdigit() and len(room_text) <= 16 else 0
                settings = dataclasses.replace(base, room=room)
            except ValueError:
                raise _http_error(
                    web.HTTPBadRequest, "bad_room", "room must be a positive integer (a VideoRoom room id)"
                ) from None
        if self._stopping:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "busy", "the server is shutting down")
        broadcast = self._watchable(name)
        for other in self.janus_publishers.values():
            if other.stream_id == name and other.settings.room == settings.room and not other.closed:
                raise _http_error(
                    web.HTTPConflict,
                    "already_published",
                    f"stream {name} is already published into room {settings.room}",
                )
        try:
            self.admission.check_viewer(self._viewers())
        except Refusal as exc:
            return self._busy(exc)
        publisher = JanusPublisher(settings, display=name)
        announce = self._register_output(
            self.janus_publishers,
            publisher,
            "janus",
            watched=name,
            room=settings.room,
            remote=_remote(request),
        )
        try:
            feed = await publisher.publish(broadcast)
        except JanusError as exc:  # the publisher has closed itself
            raise _http_error(web.HTTPBadGateway, "janus_error", str(exc)) from None
        announce()
        body = {"type": "janus", "stream": name, "room": settings.room, "feed": feed}
        return web.json_response(
            body, status=HTTPStatus.CREATED, headers={"Location": f"/janus/{name}/{publisher.id}"}
        )

    async def _janus_delete(self, request: web.Request) -> web.Response:
        """Stop publishing a stream into Janus (the stream itself goes on)."""
        self._authorize(request)
        name, resource = request.match_info["stream"], request.match_info["resource"]
        publisher = self.janus_publishers.get(resource) if whip.RESOURCE_ID.fullmatch(resource) else None
        if publisher is None or publisher.stream_id != name or publisher.closed:
            raise _http_error(web.HTTPNotFound, "unknown_session", "no such Janus publisher on this server")
        await publisher.aclose()
        return web.Response(status=HTTPStatus.OK)

    async def _options(self, request: web.Request) -> web.Response:
        """What a POST or PATCH takes (WHIP/WHEP clients may ask), and a browser's CORS preflight.

        No token is asked for: a preflight never carries one. The CORS headers come from
        ``_cors_headers`` (for configured origins only)."""
        if "resource" in request.match_info:
            headers = {"Accept-Patch": whip.SDPFRAG_CONTENT_TYPE}
        else:
            headers = {"Accept-Post": whip.SDP_CONTENT_TYPE}
        return web.Response(status=HTTPStatus.NO_CONTENT, headers=headers)

    async def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """CORS for WHIP and WHEP, for the configured origins only (``cors_origins``; none by default).

        A browser player on another origin reads ``Location`` (to PATCH and DELETE its resource) and
        sends ``Authorization``; both need the headers below. Other paths never get them."""
        origin = request.headers.get("Origin")
        allowed = self.settings.cors_origins
        if origin is None or not request.path.startswith(("/whip/", "/whep/")):
            return
        if origin not in allowed and "*" not in allowed:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")
        response.headers["Access-Control-Expose-Headers"] = "Location, Link, Accept-Post, Accept-Patch"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "POST, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
            response.headers["Access-Control-Max-Age"] = "600"

    # ------------------------------------------------------------------------------ lifecycle

    def _track(self, coro: Any) -> None:
        """Run a small closing coroutine in the background, holding a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def start(self) -> None:
        self._stopping = False
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._sampler = asyncio.ensure_future(self.admission.run())

    @property
    def port(self) -> int:
        assert self._runner is not None
        return self._port if self._port is not None else self.settings.port

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def aclose(self) -> None:
        """Refuse new sessions, close every session, stream and viewer (peer connections, engines),
        then their sockets and the listener."""
        self._stopping = True
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None
        closing = [p.aclose() for p in list(self.janus_publishers.values())]
        closing += [s.close() for s in list(self.whep_viewers.values())]
        closing += [s.close() for s in list(self.streams.values())]
        closing += [s.close() for s in list(self.whip_streams.values())]
        closing += [s.close() for s in list(self.sessions.values())]
        await asyncio.gather(*closing, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in list(self._sockets)), return_exceptions=True)
        if self._closers:
            await asyncio.gather(*list(self._closers), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _remote(request: web.Request) -> str | None:
    """The peer's "host:port" (the proxy's, behind a reverse proxy), for logs and the audit."""
    addr = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not addr:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, the static files, the errors and the WebSocket handshakes alike."""
    response.headers.setdefault("Cache-Control", "no-cache")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


def _error(status: HTTPStatus, code: str, message: str) -> web.Response:
    """An HTTP error with the protocol's JSON error body."""
    return web.json_response(protocol.error_message(code, message), status=status.value)


def _http_error(
    cls: type[web.HTTPException], code: str, message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    return cls(
        text=json.dumps(protocol.error_message(code, message)),
        content_type="application/json",
        headers=headers,
    )


def _created(location: str, answer: str) -> web.Response:
    """201 with the answer SDP and the session's resource (RFC 9725 §4.2)."""
    return web.Response(
        status=HTTPStatus.CREATED,
        body=answer.encode(),
        content_type=whip.SDP_CONTENT_TYPE,
        headers={"Location": location},
    )


async def serve_forever(server: AvatarServer, ready: Callable[[str], None] | None = None) -> None:
    """Start, announce the URL, run until SIGINT/SIGTERM, then close everything cleanly."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(server.url)
    try:
        await stop.wait()
    finally:
        await server.aclose()


def build_server(cfg: Config, consent: Any = None) -> AvatarServer:
    """The real server for a configuration: avatars from the store, engines with the real pieces
    (each with the configured disclosure badge; off is logged here, once), sessions audited to the
    configured log (checked writable here: OSError otherwise). ``consent``: the record for a
    configured portrait image enrolled at start."""
    from stream_avatar.avatar.store import AvatarStore
    from stream_avatar.provenance.audit import default_audit_path
    from stream_avatar.provenance.disclosure import make_badge
    from stream_avatar.session.engine import (
        build_engine,
        build_renderer,
        make_emotion_estimator,
        resolve_device,
    )

    make_emotion_estimator(cfg.engine.fps)  # load + warm the shared emotion model before any session
    badge = make_badge(cfg.disclosure)  # drawn once per size, shared by every session's engine
    audit = AuditLog(cfg.audit.path or default_audit_path(cfg.avatar.store_dir))
    audit.check()
    if cfg.avatar.allow_unconsented_avatars:
        logger.warning(
            "avatars without a consent record are allowed (setting avatar.allow_unconsented_avatars)",
            extra={"setting": "avatar.allow_unconsented_avatars", "value": True},
        )
    store = AvatarStore(cfg.avatar.store_dir)
    size = cfg.avatar.size
    device = resolve_device(cfg.engine.device)

    def resolve(spec: str) -> Any:
        if spec == "default":
            # The configured avatar (or the shipped one); a new image needs ``consent``.
            return store.resolve(cfg.avatar.spec, size=size, consent=consent)
        return store.load(spec)  # ids only: validated by the store before any path is built

    def engine(avatar: Any) -> Any:
        return build_engine(
            avatar,
            driver=cfg.engine.driver,
            fps=cfg.engine.fps,
            max_buffer_s=cfg.engine.max_buffer_s,
            device=device,
            emotion=cfg.engine.emotion_weights,
            emotion_prior_neutral=cfg.engine.emotion_prior_neutral,
            packet_lead=True,
            disclosure=badge,
            watermark=cfg.watermark,
        )

    def renderer(avatar: Any) -> Any:
        return build_renderer(avatar, device)

    settings = ServerSettings(
        host=cfg.server.host,
        port=cfg.server.port,
        max_sessions=cfg.server.max_sessions,
        max_viewers=cfg.server.max_viewers,
        cpu_fraction=cfg.server.cpu_fraction,
        allow_unconsented_avatars=cfg.avatar.allow_unconsented_avatars,
        bearer_token=cfg.server.bearer_token,
        cors_origins=cfg.server.cors_origins,
        janus=cfg.janus.settings(),
        session=SessionSettings(
            fps=cfg.engine.fps,
            size=size,
            latency_budget_ms=cfg.server.latency_budget_ms,
            audio_jitter_prefetch=cfg.server.audio_jitter_prefetch,
            emotion=cfg.engine.emotion,
        ),
    )
    return AvatarServer(settings, resolve, engine, renderer, audit=audit)


def run_server(server: AvatarServer, ready: Callable[[str], None] | None = None) -> None:
    """Blocking entry point: uvloop when installed, else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_forever(server, ready))
    else:
        uvloop.run(serve_forever(server, ready))

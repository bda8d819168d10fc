"""The server: HTTP for the browser client and a WebSocket per session, on one port, in one process.

``websockets`` serves both: requests to ``/ws`` become WebSocket sessions (a presenter's microphone,
or a watch-only viewer of a running stream); requests to ``/pcm`` become PCM-driven streams (TTS,
voice agents: ``stream.PcmStream``); any other GET is answered from ``web_client/`` by
``process_request`` (a handful of static files; no framework needed). Static paths are validated
against an allow-list of names in that folder, never joined from raw input.

Responsible use (issue 12): avatars without a consent record are refused (an ``error`` with code
``no_consent``, or a start-up error for the configured one) unless ``allow_unconsented_avatars``;
every session, viewer and PCM stream is written to the audit log (start and end: avatar, remote
address, duration, frames; never audio; one small unbuffered write on the loop per event); the
engines composite the visible "AI-generated" badge (``build_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import signal
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from stream_avatar.avatar.consent import has_consent, require_consent
from stream_avatar.config import Config
from stream_avatar.provenance.audit import AuditLog
from stream_avatar.server import protocol
from stream_avatar.server.admission import Admission, AdmissionSettings, Refusal, calibrate
from stream_avatar.server.session import Session, SessionSettings
from stream_avatar.server.stream import Broadcast, PcmStream

logger = logging.getLogger(__name__)

WEB_CLIENT_DIR = Path(__file__).resolve().parents[2] / "web_client"
WS_PATH = "/ws"
PCM_PATH = "/pcm"  # a stream driven by PCM over this WebSocket (``?avatar=ID`` optional)
STATUS_PATH = "/status"  # JSON: would a session be let in now, why not, and the measured load
STATIC_SUFFIXES = {".html", ".js", ".mjs", ".css", ".png", ".svg", ".ico", ".json", ".webmanifest"}
# WebSocket messages beyond this are refused by websockets itself (connection closed with 1009); below
# it and above protocol.MAX_MESSAGE_BYTES (protocol.MAX_REFERENCE_MESSAGE_BYTES for `emotion_ref`, the
# only big message: a base64 face clip) the session answers `too_large` and carries on.
WS_MAX_SIZE = protocol.MAX_REFERENCE_MESSAGE_BYTES + (1 << 20)
# An upgrade admitted by process_request counts as a session until its handler registers it (or
# this long has passed: a handshake that failed after admission).
ADMITTED_HOLD_S = 10.0
CALIBRATION_FRAMES = 12


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4
    max_viewers: int = 16
    cpu_fraction: float = 0.8
    prior_session_cores: float | None = None
    measured_admission: bool = True
    allow_unconsented_avatars: bool = False
    session: SessionSettings = field(default_factory=SessionSettings)


class AvatarServer:
    """Session registry + the websockets server. ``await start()``, ``await aclose()``.

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
        self._server: Server | None = None
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
            ),
        )
        self._admitted: list[float] = []  # monotonic times of upgrades admitted, not yet registered
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

    def _static(self, path: str) -> Response:
        name = path.split("?", 1)[0].lstrip("/") or "index.html"
        allowed = {
            p.relative_to(self.web_root).as_posix(): p
            for p in self.web_root.rglob("*")
            if p.is_file() and p.suffix in STATIC_SUFFIXES
        }
        target = allowed.get(name)
        if target is None:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        if target.suffix in (".js", ".mjs"):
            ctype = "text/javascript; charset=utf-8"
        return _response(HTTPStatus.OK, target.read_bytes(), ctype)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH and "watch" in urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query):
            try:  # a viewer says so at the upgrade (``/ws?watch=ID``): it needs an encode, not an engine
                self.admission.check_viewer(self._viewers())
            except Refusal as exc:
                body = json.dumps(protocol.error_message("busy", str(exc)))
                return _response(HTTPStatus.SERVICE_UNAVAILABLE, body.encode(), "application/json")
            return None
        if path in (WS_PATH, PCM_PATH):
            try:
                self.admission.check(self._open_sessions())
            except Refusal as exc:
                body = json.dumps(protocol.error_message("busy", str(exc)))
                return _response(HTTPStatus.SERVICE_UNAVAILABLE, body.encode(), "application/json")
            self._admitted.append(asyncio.get_running_loop().time())
            return None  # go on with the WebSocket handshake
        if path == STATUS_PATH:
            return self._status()
        return self._static(request.path)

    def _open_sessions(self) -> int:
        """Registered sessions plus upgrades admitted but not registered yet (expired ones dropped)."""
        now = asyncio.get_running_loop().time()
        self._admitted = [t for t in self._admitted if now - t < ADMITTED_HOLD_S]
        presenters = sum(1 for s in self.sessions.values() if not s.watching)
        return presenters + len(self.streams) + len(self._admitted)

    def _viewers(self) -> int:
        return sum(1 for s in self.sessions.values() if s.watching)

    def _status(self) -> Response:
        """What a browser cannot read from a refused WebSocket upgrade: whether one more session
        would be let in now, the reason if not, and the load admission control measures."""
        reason = self.admission.reason(self._open_sessions())
        viewer_reason = self.admission.viewer_reason(self._viewers())
        body = {
            "accepting": reason is None,
            "reason": reason,
            "accepting_viewers": viewer_reason is None,
            "viewer_reason": viewer_reason,
            "sessions": len(self.sessions) - self._viewers(),
            "streams": len(self.streams),
            "viewers": self._viewers(),
            "max_viewers": self.settings.max_viewers,
            "max_sessions": self.settings.max_sessions,
            **self.admission.snapshot(),
        }
        return _response(HTTPStatus.OK, json.dumps(body).encode(), "application/json")

    # ---------------------------------------------------------------------------- sessions

    def find_stream(self, stream_id: str) -> Broadcast | None:
        """The outputs of a running stream, for a viewer: a PCM stream, or a presenter's session."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.closed:
            return stream.broadcast
        session = self.sessions.get(stream_id)
        if session is not None and session.playout is not None and not session.closed:
            return session.broadcast
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path.split("?", 1)[0] == PCM_PATH:
            await self._pcm_handler(ws)
            return

        async def send(message: dict[str, Any]) -> None:
            await ws.send(json.dumps(message, separators=(",", ":")))

        remote = _remote(ws)

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
        assert ws.request is not None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path).query)
        session.watch_hint = "watch" in query  # admitted as a viewer (see _process_request)
        self.sessions[session.id] = session
        if self._admitted and not session.watch_hint:
            self._admitted.pop(0)

        def closed(s: Session) -> None:
            self.sessions.pop(s.id, None)
            # A session closed by its peer connection (failed, closed) ends its socket too.
            self._closers.add(asyncio.ensure_future(ws.close()))
            for task in list(self._closers):
                if task.done():
                    self._closers.discard(task)

        session.on_closed = closed
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
            async for raw in ws:
                await session.handle(raw)
        except ConnectionClosed:
            pass
        finally:
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

    async def _pcm_handler(self, ws: ServerConnection) -> None:
        """One PCM stream per ``/pcm`` connection; it ends (and its viewers with it) when the socket
        closes."""

        async def send(message: dict[str, Any]) -> None:
            await ws.send(json.dumps(message, separators=(",", ":")))

        assert ws.request is not None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path).query)
        avatar = query.get("avatar", [self.default_avatar])[0]
        if self._admitted:
            self._admitted.pop(0)
        if not protocol.AVATAR_ID.match(avatar):
            await send(protocol.error_message("unknown_avatar", "avatar must be an enrolled id or default"))
            await ws.close()
            return
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
        self.streams[stream.id] = stream

        def closed(s: PcmStream) -> None:
            self.streams.pop(s.id, None)

        stream.on_closed = closed
        remote = _remote(ws)
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
                return
            async for raw in ws:
                await stream.handle(raw)
        except ConnectionClosed:
            pass
        finally:
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

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await serve(
            self._handler,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            max_size=WS_MAX_SIZE,
            max_queue=4,  # messages up to ~12 MiB (reference clips): at most ~48 MiB per connection
        )
        self._sampler = asyncio.ensure_future(self.admission.run())

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1]) if self._server.sockets else self.settings.port

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def aclose(self) -> None:
        """Stop accepting, close every session (peer connections, engines), then the listener."""
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None
        if self._server is not None:
            self._server.close(close_connections=False)
        closing = [s.close() for s in list(self.streams.values())]
        closing += [s.close() for s in list(self.sessions.values())]
        await asyncio.gather(*closing, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def _remote(ws: ServerConnection) -> str | None:
    """The peer's "host:port" (the proxy's, behind a reverse proxy), for logs and the audit."""
    addr = ws.remote_address
    if not addr:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _response(status: HTTPStatus, body: bytes, ctype: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


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

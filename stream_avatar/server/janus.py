"""Webinar fan-out: a stream's audio and video published into a Janus VideoRoom (Janus WebRTC Server),
so any number of viewers watch through Janus instead of the avatar server.

``JanusPublisher(settings).publish(broadcast) -> feed id`` joins the stream's ``Broadcast`` like a
viewer (its own bounded tracks, one VP8 + Opus encode) and speaks Janus's HTTP transport (the REST
API, ``aiohttp`` client): create a session, attach ``janus.plugin.videoroom``, create the room if
asked and absent, ``join`` as a publisher, ``publish`` with the offer of an aiortc peer connection,
apply Janus's answer, wait until the media flows. Events come back on one long poll per session
(``GET /janus/SESSION``, at most ``MAX_EVENTS_PER_POLL`` per answer); a keepalive every
``KEEPALIVE_S`` keeps the session (Janus drops sessions idle for 60 s by default). ``aclose()``
(idempotent; also when the stream ends, the peer connection fails or Janus hangs up) leaves the
broadcast, closes the peer connection, then ``leave``s the room, detaches and destroys the session,
each request bounded by ``REQUEST_TIMEOUT_S``.

Errors are ``JanusError``: one line with Janus's error code and reason, and what to check (the URL,
the room, its pin or secret). Ids Janus returns (session, handle) are integers and are checked to be
so before they become part of a URL; rooms are positive integers (Janus's default ``string_ids =
false``). Secrets (API secret, room secret and pin, admin key) are never logged.

Non-trickle ICE as elsewhere in this server: aiortc gathers every candidate before the offer goes out
(``"trickle": false`` in the JSEP), and Janus in its default half-trickle mode puts its own into the
answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from stream_avatar.server.stream import Broadcast, Viewer

logger = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
REQUEST_TIMEOUT_S = 10.0  # one Janus API request, including an asynchronous request's event
POLL_TIMEOUT_S = 45.0  # Janus answers an idle long poll after 30 s (with a keepalive)
KEEPALIVE_S = 25.0  # Janus's session_timeout is 60 s by default
CONNECT_TIMEOUT_S = 15.0  # ICE + DTLS with Janus after the answer
CLOSE_REQUEST_TIMEOUT_S = 3.0  # each of leave / detach / destroy when closing
MAX_EVENTS_PER_POLL = 10
MAX_ROOM_ID = 2**53 - 1  # Janus room ids are JSON integers (guint64; JavaScript clients read doubles)
MAX_RESPONSE_BYTES = 1 << 20  # a Janus answer carries one SDP at most

# What the VideoRoom plugin's error codes mean for a publisher, said in one line.
VIDEOROOM_ERRORS = {
    426: "no such room (create it in janus.plugin.videoroom.jcfg, or set create_room)",
    427: "the room already exists",
    428: "no such feed",
    429: "a required field is missing",
    430: "a field is invalid",
    432: "the room has as many publishers as it allows",
    433: "not authorized (check the room's pin / secret, or Janus's admin_key)",
    434: "already published",
    436: "this id is taken in the room",
    437: "Janus could not use the SDP",
}
CORE_ERRORS = {
    403: "unauthorized (check the API secret or token)",
    458: "no such session (it timed out or was destroyed)",
    459: "no such handle",
    460: "the plugin refused the message",
}


class JanusError(RuntimeError):
    """Janus cannot be reached or refused a request; ``code`` is Janus's error code when it gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


@dataclass(frozen=True)
class JanusSettings:
    """Where and how to publish.

    url: Janus's HTTP transport, base path included (``http://127.0.0.1:8088/janus``).
    room: the VideoRoom room id (a positive integer).
    pin: the room's pin, when it has one (needed to join).
    secret: the room's secret: set on a room this publisher creates.
    admin_key: the VideoRoom plugin's ``admin_key``, when Janus requires one to create rooms.
    api_secret: Janus's ``api_secret``, when its core requires one on every request.
    create_room: create the room when it does not exist (else a missing room is an error).
    bitrate_bps: the room's video bitrate cap when this publisher creates it.
    """

    url: str
    room: int
    pin: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    create_room: bool = False
    bitrate_bps: int = 512_000

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                f"the Janus URL must be http(s)://HOST[:PORT]/BASE_PATH (e.g. http://127.0.0.1:8088/janus), "
                f"got {self.url[:80]!r}"
            )
        if parts.username or parts.password:
            raise ValueError("the Janus URL must not carry credentials: set api_secret instead")
        if isinstance(self.room, bool) or not isinstance(self.room, int) or not 1 <= self.room <= MAX_ROOM_ID:
            raise ValueError(f"a Janus room is a positive integer (at most {MAX_ROOM_ID}), got {self.room!r}")
        if not 64_000 <= self.bitrate_bps <= 20_000_000:
            raise ValueError(f"bitrate_bps must lie in 64000..20000000, got {self.bitrate_bps}")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None beyond ``limit`` bytes (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _int_id(value: Any, what: str) -> int:
    """An id from Janus, checked before it goes into a URL."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise JanusError(f"Janus answered a {what} id that is not a non-negative integer")
    return value


def _plugin_error(data: dict[str, Any], what: str) -> JanusError:
    code = data.get("error_code")
    reason = str(data.get("error", "error"))[:200]
    hint = VIDEOROOM_ERRORS.get(code, "") if isinstance(code, int) else ""
    return JanusError(
        f"Janus VideoRoom refused {what}: {reason} (error {code}{': ' + hint if hint else ''})", code
    )


def _core_error(answer: dict[str, Any], what: str) -> JanusError:
    raw = answer.get("error")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    code = error.get("code")
    reason = str(error.get("reason", "error"))[:200]
    hint = CORE_ERRORS.get(code, "") if isinstance(code, int) else ""
    return JanusError(f"Janus refused {what}: {reason} (error {code}{': ' + hint if hint else ''})", code)


class JanusSession:
    """One Janus session over the HTTP transport: requests, the long poll, the keepalive.

    ``await create()``; ``await attach(plugin) -> handle id``; ``await message(handle, body, jsep)`` ->
    (plugin data, jsep) of the answer or of the event that completes an asynchronous request;
    ``await aclose()`` (destroys the session; idempotent). Events that answer no request go to
    ``on_event(event)`` (``webrtcup``, ``media``, ``hangup``, ``detached``, plugin notifications).
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        api_secret: str | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._http = http
        self._url = url.rstrip("/")
        self._api_secret = api_secret
        self.on_event = on_event
        self.id: int | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._count = itertools.count(1)

    def _transaction(self) -> str:
        return f"sa-{next(self._count)}-{secrets.token_hex(4)}"

    async def _post(self, path: str, body: dict[str, Any], what: str, timeout_s: float) -> dict[str, Any]:
        if self._api_secret is not None:
            body = {**body, "apisecret": self._api_secret}
        try:
            async with self._http.post(
                self._url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                raw, status = await _read_capped(resp, MAX_RESPONSE_BYTES), resp.status
        except asyncio.TimeoutError:
            raise JanusError(f"Janus at {self._url} did not answer {what} within {timeout_s:.0f} s") from None
        except aiohttp.ClientError as exc:
            raise JanusError(f"cannot reach Janus at {self._url} ({what}): {exc}") from None
        return self._decode(raw, status, what)

    def _decode(self, raw: bytes | None, status: int, what: str) -> Any:
        if raw is None:
            raise JanusError(f"Janus's answer to {what} is too large")
        try:
            answer = json.loads(raw)
        except ValueError:
            raise JanusError(
                f"{self._url} answered {what} with HTTP {status} and no JSON: is it Janus's HTTP transport "
                "(with its base path, e.g. /janus)?"
            ) from None
        if isinstance(answer, dict) and answer.get("janus") == "error":
            raise _core_error(answer, what)
        return answer

    async def create(self) -> int:
        answer = await self._post(
            "", {"janus": "create", "transaction": self._transaction()}, "create", REQUEST_TIMEOUT_S
        )
        self.id = _int_id((answer.get("data") or {}).get("id"), "session")
        self._tasks.append(asyncio.ensure_future(self._poll_loop()))
        self._tasks.append(asyncio.ensure_future(self._keepalive_loop()))
        for task in self._tasks:
            task.set_name(f"janus-session-{self.id}")
        return self.id

    async def attach(self, plugin: str) -> int:
        body = {"janus": "attach", "plugin": plugin, "transaction": self._transaction()}
        answer = await self._post(f"/{self.id}", body, f"attach {plugin}", REQUEST_TIMEOUT_S)
        return _int_id((answer.get("data") or {}).get("id"), "handle")

    async def message(
        self,
        handle: int,
        body: dict[str, Any],
        jsep: dict[str, Any] | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A plugin request; (plugin data, jsep). Synchronous requests are answered at once,
        asynchronous ones (``join``, ``publish``, ``leave``...) by an event on the long poll."""
        what = f"{body.get('request')!s:.20}"
        transaction = self._transaction()
        request: dict[str, Any] = {"janus": "message", "transaction": transaction, "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = waiter  # before the POST: the event may come back before its answer
        try:
            started = time.monotonic()
            answer = await self._post(f"/{self.id}/{handle}", request, what, timeout_s)
            if answer.get("janus") == "ack":
                left = max(0.1, timeout_s - (time.monotonic() - started))
                try:
                    answer = await asyncio.wait_for(waiter, left)
                except asyncio.TimeoutError:
                    raise JanusError(
                        f"Janus accepted {what} but sent no event within {timeout_s:.0f} s"
                    ) from None
            elif answer.get("janus") != "success":
                raise JanusError(f"unexpected answer to {what}: {str(answer.get('janus'))[:40]}")
        finally:
            self._pending.pop(transaction, None)
        if answer.get("janus") == "error":
            raise _core_error(answer, what)
        data = (answer.get("plugindata") or {}).get("data")
        if not isinstance(data, dict):
            raise JanusError(f"Janus's answer to {what} carries no plugin data")
        if "error_code" in data or data.get("videoroom") == "error":
            raise _plugin_error(data, what)
        jsep_answer = answer.get("jsep")
        return data, jsep_answer if isinstance(jsep_answer, dict) else None

    async def detach(self, handle: int) -> None:
        body = {"janus": "detach", "transaction": self._transaction()}
        await self._post(f"/{self.id}/{handle}", body, "detach", CLOSE_REQUEST_TIMEOUT_S)

    async def _poll_loop(self) -> None:
        """Long poll for events; each goes to the request it completes, or to ``on_event``."""
        params = {"maxev": str(MAX_EVENTS_PER_POLL)}
        if self._api_secret is not None:
            params["apisecret"] = self._api_secret
        failures = 0
        while True:
            params["rid"] = str(int(time.time() * 1000))
            try:
                async with self._http.get(
                    f"{self._url}/{self.id}",
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT_S),
                ) as resp:
                    raw = await _read_capped(resp, MAX_RESPONSE_BYTES * MAX_EVENTS_PER_POLL)
                    status = resp.status
                events = self._decode(raw, status, "a long poll")
            except JanusError as exc:
                # The session is gone (timed out, destroyed, Janus restarted): nothing will come.
                self._fail(exc)
                self._dispatch({"janus": "timeout", "reason": str(exc)})
                return
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                failures += 1
                if failures >= 3:
                    error = JanusError(f"lost Janus at {self._url}: {exc or 'timeout'}")
                    self._fail(error)
                    self._dispatch({"janus": "timeout", "reason": str(error)})
                    return
                await asyncio.sleep(1.0)
                continue
            failures = 0
            for event in events if isinstance(events, list) else [events]:
                if isinstance(event, dict):
                    self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        waiter = self._pending.get(str(event.get("transaction")))
        if waiter is not None and kind in ("event", "error") and not waiter.done():
            waiter.set_result(event)
            return
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.exception("janus event handler failed", extra={"janus_event": str(kind)})

    def _fail(self, exc: JanusError) -> None:
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(exc)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            body = {"janus": "keepalive", "transaction": self._transaction()}
            try:
                await self._post(f"/{self.id}", body, "keepalive", REQUEST_TIMEOUT_S)
            except JanusError as exc:
                logger.warning("janus keepalive failed", extra={"janus_session": self.id, "reason": str(exc)})

    async def aclose(self) -> None:
        """Stop polling, destroy the session on Janus (bounded; a failure is logged). Idempotent."""
        if self._closing:
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail(JanusError("the Janus session is closed"))
        if self.id is not None:
            body = {"janus": "destroy", "transaction": self._transaction()}
            try:
                await self._post(f"/{self.id}", body, "destroy", CLOSE_REQUEST_TIMEOUT_S)
            except JanusError as exc:
                logger.info(
                    "janus session not destroyed", extra={"janus_session": self.id, "reason": str(exc)}
                )


def _prefer(pc: RTCPeerConnection, kind: str, mime_types: tuple[str, ...]) -> None:
    """Offer only these codecs on ``kind``'s transceiver (one encode the room accepts: VP8, Opus)."""
    codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in mime_types]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == kind:
            transceiver.setCodecPreferences(codecs)


class JanusPublisher:
    """One stream published into one VideoRoom room. ``await publish(broadcast)`` -> the feed id
    viewers subscribe to; ``await aclose()`` (idempotent). Closes itself when the stream ends, the
    peer connection fails or Janus hangs up; ``on_closed(self)`` is called once, after."""

    def __init__(
        self, settings: JanusSettings, display: str = "avatar", http: aiohttp.ClientSession | None = None
    ) -> None:
        self.settings = settings
        self.id = secrets.token_hex(16)  # the server's resource id (``/janus/NAME/ID``)
        self.stream_id: str | None = None
        self.display = display[:64]
        self._http = http
        self._own_http = http is None
        self.session: JanusSession | None = None
        self.handle: int | None = None
        self.feed: int | None = None
        self.pc: RTCPeerConnection | None = None
        self._broadcast: Broadcast | None = None
        self._viewer: Viewer | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._closers: set[asyncio.Task[Any]] = set()
        self.on_closed: Callable[[JanusPublisher], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def publish(self, broadcast: Broadcast) -> int:
        """Join the room as a publisher of ``broadcast``'s audio and video; the feed id once the media
        flows. JanusError (nothing left running: publisher closed) when Janus cannot be reached,
        refuses, or ICE/DTLS with it does not complete within ``CONNECT_TIMEOUT_S``."""
        if self._closing or self.session is not None:
            raise RuntimeError("a JanusPublisher publishes once")
        self.stream_id = broadcast.id
        try:
            return await self._publish(broadcast)
        except BaseException:
            await self.aclose()
            raise

    async def _publish(self, broadcast: Broadcast) -> int:
        cfg = self.settings
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=REQUEST_TIMEOUT_S)
            )
        session = JanusSession(self._http, cfg.base_url, cfg.api_secret, on_event=self._on_event)
        self.session = session
        await session.create()
        self.handle = await session.attach(VIDEOROOM)
        if cfg.create_room:
            await self._ensure_room()
        join: dict[str, Any] = {
            "request": "join",
            "ptype": "publisher",
            "room": cfg.room,
            "display": self.display,
        }
        if cfg.pin is not None:
            join["pin"] = cfg.pin
        joined, _ = await session.message(self.handle, join)
        if joined.get("videoroom") != "joined":
            raise JanusError(f"Janus answered join with {str(joined.get('videoroom'))[:40]!r}, not 'joined'")
        self.feed = _int_id(joined.get("id"), "feed")

        pc = RTCPeerConnection()
        self.pc = pc
        connected = asyncio.Event()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return
            logger.info("janus peer state", extra={"janus_feed": self.feed, "state": pc.connectionState})
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed"):
                connected.set()
                self._close_soon()

        if broadcast.ended:
            raise JanusError(f"stream {broadcast.id} has ended")
        self._broadcast = broadcast
        viewer = broadcast.join(self._stream_ended)
        self._viewer = viewer
        pc.addTransceiver(viewer.audio, direction="sendonly")
        pc.addTransceiver(viewer.video, direction="sendonly")
        _prefer(pc, "audio", ("audio/opus",))
        _prefer(pc, "video", ("video/vp8", "video/rtx"))
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate here
        offer = {"type": "offer", "sdp": pc.localDescription.sdp, "trickle": False}
        configured, answer = await session.message(
            self.handle, {"request": "publish", "display": self.display}, offer
        )
        if configured.get("configured") != "ok" or answer is None or answer.get("type") != "answer":
            raise JanusError("Janus accepted the publish request without an SDP answer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=str(answer.get("sdp", "")), type="answer"))
        try:
            await asyncio.wait_for(connected.wait(), CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise JanusError(
                f"no media connection with Janus within {CONNECT_TIMEOUT_S:.0f} s: ICE failed (is Janus "
                "reachable over UDP from here? see its nat settings: nat_1_1_mapping, ice_enforce_list)"
            ) from None
        if pc.connectionState != "connected":
            raise JanusError(f"the media connection with Janus {pc.connectionState}")
        logger.info(
            "janus publisher up",
            extra={"janus_room": cfg.room, "janus_feed": self.feed, "stream": broadcast.id},
        )
        return self.feed

    async def _ensure_room(self) -> None:
        cfg = self.settings
        assert self.session is not None and self.handle is not None
        exists, _ = await self.session.message(self.handle, {"request": "exists", "room": cfg.room})
        if exists.get("exists") is True:
            return
        create: dict[str, Any] = {
            "request": "create",
            "room": cfg.room,
            "permanent": False,
            "description": f"stream_avatar {self.display}",
            "publishers": 1,
            "audiocodec": "opus",
            "videocodec": "vp8",
            "bitrate": cfg.bitrate_bps,
            "fir_freq": 10,
        }
        for key in ("secret", "pin", "admin_key"):
            value = getattr(cfg, key)
            if value is not None:
                create[key] = value
        try:
            await self.session.message(self.handle, create)
        except JanusError as exc:
            if exc.code != 427:  # created meanwhile by another publisher: fine
                raise

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind in ("hangup", "detached", "timeout") and not self._closing:
            logger.info("janus ended the publisher", extra={"janus_event": kind, "janus_feed": self.feed})
            self._close_soon()

    def _stream_ended(self) -> None:
        self._viewer = None  # the broadcast has dropped it already
        self._close_soon()

    def _close_soon(self) -> None:
        if self._closing:
            return
        task = asyncio.ensure_future(self.aclose())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def aclose(self) -> None:
        """Leave the broadcast, close the peer connection, leave the room, detach, destroy the Janus
        session. Idempotent; every Janus request bounded."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            viewer, self._viewer = self._viewer, None
            if viewer is not None and self._broadcast is not None:
                self._broadcast.leave(viewer)
            pc, self.pc = self.pc, None
            if pc is not None:
                await pc.close()
            session = self.session
            if session is not None:
                if self.handle is not None and session.id is not None:
                    if self.feed is not None:  # leave: unpublishes too
                        with contextlib.suppress(JanusError):
                            await session.message(
                                self.handle, {"request": "leave"}, timeout_s=CLOSE_REQUEST_TIMEOUT_S
                            )
                    with contextlib.suppress(JanusError):
                        await session.detach(self.handle)
                await session.aclose()
            if self._own_http and self._http is not None:
                await self._http.close()
        finally:
            self._closed.set()
            if self.on_closed is not None:
                self.on_closed(self)
            logger.info("janus publisher closed", extra={"janus_feed": self.feed})

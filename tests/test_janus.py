"""Webinar fan-out through Janus: a stream published into a Janus VideoRoom, watched through Janus.

The fixture starts the Debian ``janus`` binary (Janus WebRTC Server 1.x) with a configuration written
here: only the VideoRoom plugin and the HTTP transport (symlinks to the installed ones), the HTTP
transport on 127.0.0.1 at a free port, no STUN, no admin API. It is skipped, with the reason, when
Janus is not installed (``.ci/run`` installs it: ``apt-get install janus``).

ICE: neither aiortc (aioice) nor Janus (libnice) gathers candidates on loopback, so media goes over
this machine's own IPv4 address: Janus is restricted to it (``ice_enforce_list``) and aiortc gathers
on it alone (``aioice.ice.get_host_addresses`` patched); packets to one's own address never leave
the machine.

The avatar stream is a WHIP stream of the server in tests/test_whip_whep.py (fake engine: a frame's
red channel is the jaw, which the publisher's tone opens), published with ``POST /janus/NAME``; the
subscriber is an aiortc peer that joins the room as a subscriber of the publisher's feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from stream_avatar.server.app import AvatarServer
from stream_avatar.server.janus import JanusError, JanusPublisher, JanusSession, JanusSettings
from tests.test_whip_whep import make_server, open_peer_connections, publish, wait_for

JANUS_LIB_DIRS = (
    Path("/usr/lib/x86_64-linux-gnu/janus"),
    Path("/usr/lib/aarch64-linux-gnu/janus"),
    Path("/usr/lib/janus"),
)
ROOM = 4242


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _module(kind: str, name: str) -> Path | None:
    """An installed Janus module (``plugins/libjanus_videoroom.so*``), whatever its version suffix."""
    for root in JANUS_LIB_DIRS:
        found = sorted((root / kind).glob(f"libjanus_{name}.so*"))
        if found:
            return found[0]
    return None


@dataclass
class Janus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def _write_config(root: Path, port: int, ice_address: str, rtp_ports: str) -> Path:
    """The generated configuration: plugins/ and transports/ hold only the two modules used."""
    conf, plugins, transports, empty = (root / n for n in ("conf", "plugins", "transports", "empty"))
    for folder in (conf, plugins, transports, empty):
        folder.mkdir()
    videoroom, http = _module("plugins", "videoroom"), _module("transports", "http")
    assert videoroom is not None and http is not None
    (plugins / "libjanus_videoroom.so").symlink_to(videoroom)
    (transports / "libjanus_http.so").symlink_to(http)
    (conf / "janus.jcfg").write_text(
        f"""general: {{
  configs_folder = "{conf}"
  plugins_folder = "{plugins}"
  transports_folder = "{transports}"
  events_folder = "{empty}"
  loggers_folder = "{empty}"
  debug_level = 4
  session_timeout = 60
  server_name = "stream-avatar-test"
}}
media: {{
  rtp_port_range = "{rtp_ports}"
}}
nat: {{
  full_trickle = false
  ice_enforce_list = "{ice_address}"
  ignore_mdns = true
}}
plugins: {{}}
transports: {{}}
events: {{}}
loggers: {{}}
"""
    )
    (conf / "janus.transport.http.jcfg").write_text(
        f"""general: {{
  json = "plain"
  base_path = "/janus"
  http = true
  port = {port}
  ip = "127.0.0.1"
  https = false
}}
admin: {{
  admin_http = false
  admin_https = false
}}
cors: {{}}
"""
    )
    # No rooms configured: the publisher creates its room through the API.
    (conf / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return conf / "janus.jcfg"


@pytest.fixture
def janus(tmp_path: Path, ice_address: str) -> Iterator[Janus]:
    binary = shutil.which("janus") or ("/usr/bin/janus" if os.access("/usr/bin/janus", os.X_OK) else None)
    if binary is None:
        pytest.skip("Janus WebRTC Server is not installed (Debian: apt-get install janus)")
    if _module("plugins", "videoroom") is None or _module("transports", "http") is None:
        pytest.skip("Janus is installed without its VideoRoom plugin or HTTP transport")
    port = _free_port()
    config = _write_config(tmp_path, port, ice_address, "40000-40999")
    log = tmp_path / "janus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-C", str(config), "-F", str(config.parent), "-o"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}/janus"
    try:
        deadline = time.monotonic() + 15.0
        import urllib.request

        while True:
            if process.poll() is not None:
                pytest.fail(f"janus exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/info", timeout=1.0) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"janus did not answer /info within 15 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Janus(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def _host_ipv4() -> str | None:
    """This machine's first non-loopback IPv4 address, as aiortc's ICE (aioice) lists them."""
    import aioice.ice

    addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    return addresses[0] if addresses else None


@pytest.fixture(scope="module")
def ice_address() -> str:
    address = _host_ipv4()
    if address is None:
        pytest.skip("no non-loopback IPv4 address: neither aiortc nor Janus (libnice) gathers on loopback")
    return address


@pytest.fixture
def local_ice(ice_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc gathers one host candidate, on the address Janus is restricted to."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [ice_address])


class Subscriber:
    """A Janus VideoRoom subscriber (aiortc): joins ``feed`` of ``room``, answers Janus's offer, and
    records the red channel of each video frame and the samples of each audio frame (bounded)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.session = JanusSession(http, url)
        self.handle: int | None = None
        self.pc = RTCPeerConnection()
        self.video: deque[float] = deque(maxlen=2000)
        self.audio: deque[np.ndarray] = deque(maxlen=2000)
        self._tasks: list[asyncio.Task[Any]] = []
        self.pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._read(track))))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    rgb = frame.to_ndarray(format="rgb24")
                    self.video.append(float(rgb[rgb.shape[0] // 2, rgb.shape[1] // 2, 0]))
                else:
                    self.audio.append(frame.to_ndarray().astype(np.float32).reshape(-1) / 32768.0)

    async def watch(self, room: int, feed: int) -> None:
        await self.session.create()
        self.handle = await self.session.attach("janus.plugin.videoroom")
        body = {"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": feed}]}
        attached, offer = await self.session.message(self.handle, body)
        assert attached["videoroom"] == "attached" and offer is not None and offer["type"] == "offer"
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = {"type": "answer", "sdp": self.pc.localDescription.sdp, "trickle": False}
        started, _ = await self.session.message(self.handle, {"request": "start"}, answer)
        assert started.get("started") == "ok", started

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.aclose()


async def participants(http: aiohttp.ClientSession, url: str, room: int = ROOM) -> int:
    """Publishers in a room, asked through a session of its own (0 when the room does not exist)."""
    probe = JanusSession(http, url)
    await probe.create()
    try:
        handle = await probe.attach("janus.plugin.videoroom")
        try:
            data, _ = await probe.message(handle, {"request": "listparticipants", "room": room})
        except JanusError as exc:
            if exc.code == 426:  # no such room
                return 0
            raise
        return len(data.get("participants", []))
    finally:
        await probe.aclose()


async def wait_for_async(read: Callable[[], Awaitable[int]], expected: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await read() == expected:
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def test_python_api_publishes_a_stream_that_a_janus_subscriber_receives(
    janus: Janus, local_ice: None, http: aiohttp.ClientSession
) -> None:
    server = make_server()
    await server.start()
    publisher_pc, _ = await publish(http, server.url + "/whip/webinar")
    janus_pub = JanusPublisher(JanusSettings(janus.url, ROOM, create_room=True), display="webinar")
    viewer = Subscriber(http, janus.url)
    try:
        broadcast = server.find_stream("webinar")
        assert broadcast is not None
        feed = await janus_pub.publish(broadcast)
        await viewer.watch(ROOM, feed)
        assert await wait_for(lambda: len(viewer.video) > 25 and len(viewer.audio) > 50, 15.0), (
            len(viewer.video),
            len(viewer.audio),
        )
        assert await wait_for(lambda: np.mean(list(viewer.video)[-5:]) > 200, 5.0), list(viewer.video)[-5:]
        tail = np.concatenate(list(viewer.audio)[-25:])
        assert float(np.sqrt(np.mean(tail**2))) > 0.05
    finally:
        await viewer.close()
        await janus_pub.aclose()
        await janus_pub.aclose()
        await publisher_pc.close()
        await server.aclose()
    assert await participants(http, janus.url) == 0
    assert open_peer_connections() == 0


@pytest.fixture
async def server(janus: Janus) -> AsyncIterator[AvatarServer]:
    srv = make_server()
    srv.settings = dataclasses.replace(srv.settings, janus=JanusSettings(janus.url, ROOM, create_room=True))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.aclose()
    assert not srv.janus_publishers and not srv.whip_streams


async def test_post_janus_publishes_a_running_stream_to_janus_subscribers(
    server: AvatarServer, janus: Janus, local_ice: None, http: aiohttp.ClientSession
) -> None:
    publisher_pc, whip_location = await publish(http, server.url + "/whip/webinar")
    first, second = Subscriber(http, janus.url), Subscriber(http, janus.url)
    try:
        async with http.post(server.url + "/janus/webinar") as resp:
            assert resp.status == 201, await resp.text()
            body, location = await resp.json(), resp.headers["Location"]
        assert body["stream"] == "webinar" and body["room"] == ROOM and isinstance(body["feed"], int)
        assert re.fullmatch(r"/janus/webinar/[0-9a-f]{32}", location), location
        async with http.post(server.url + "/janus/webinar") as resp:
            assert resp.status == 409 and (await resp.json())["code"] == "already_published"
        # Viewers talk to Janus only: two subscribers of the feed, the server encodes once for both.
        await first.watch(ROOM, body["feed"])
        await second.watch(ROOM, body["feed"])
        for viewer in (first, second):
            assert await wait_for(lambda v=viewer: len(v.video) > 25 and len(v.audio) > 50, 15.0)
            # The tone opens the fake face's mouth (red channel = jaw) and is heard back.
            assert await wait_for(lambda v=viewer: np.mean(list(v.video)[-5:]) > 200, 5.0)
            tail = np.concatenate(list(viewer.audio)[-25:])
            assert float(np.sqrt(np.mean(tail**2))) > 0.05
        assert len(server.whep_viewers) == 0 and len(server.janus_publishers) == 1
        status = await (await http.get(server.url + "/status")).json()
        assert status["viewers"] == 1  # the Janus publisher is one viewer of the stream

        # DELETE stops publishing; the stream goes on, the room is left.
        async with http.delete(server.url + location) as resp:
            assert resp.status == 200
        assert not server.janus_publishers and "webinar" in server.whip_streams
        assert await participants(http, janus.url) == 0
        async with http.delete(server.url + location) as resp:
            assert resp.status == 404

        # Published again, then the stream ends: its Janus publisher ends with it.
        async with http.post(server.url + "/janus/webinar") as resp:
            assert resp.status == 201, await resp.text()
        assert await participants(http, janus.url) == 1
        async with http.delete(server.url + whip_location) as resp:
            assert resp.status == 200
        assert await wait_for(lambda: not server.janus_publishers and not server.whip_streams)
        assert await wait_for_async(lambda: participants(http, janus.url), 0)
    finally:
        await first.close()
        await second.close()
        await publisher_pc.close()
    assert await wait_for(lambda: open_peer_connections() == 0)


async def test_janus_errors_are_clear_and_leave_nothing_running(
    server: AvatarServer, janus: Janus, local_ice: None, http: aiohttp.ClientSession
) -> None:
    async def post(path: str) -> tuple[int, dict[str, Any]]:
        async with http.post(server.url + path) as resp:
            return resp.status, await resp.json(content_type=None)

    status, body = await post("/janus/nothing-here")
    assert status == 404 and body["code"] == "unknown_stream", body
    status, body = await post("/janus/bad.name")
    assert status == 400 and body["code"] == "bad_stream", body
    publisher_pc, _ = await publish(http, server.url + "/whip/webinar")
    try:
        status, body = await post("/janus/webinar?room=abc")
        assert status == 400 and body["code"] == "bad_room", body
        # A room that does not exist, and the publisher may not create it.
        base = server.settings.janus
        assert base is not None
        server.settings = dataclasses.replace(
            server.settings, janus=dataclasses.replace(base, create_room=False)
        )
        status, body = await post("/janus/webinar?room=999")
        assert status == 502 and body["code"] == "janus_error", body
        assert "no such room" in body["message"].lower() and "426" in body["message"], body
        # Janus not there.
        gone = dataclasses.replace(base, url=f"http://127.0.0.1:{_free_port()}/janus")
        server.settings = dataclasses.replace(server.settings, janus=gone)
        status, body = await post("/janus/webinar")
        assert status == 502 and "cannot reach Janus" in body["message"], body
        # Janus not configured.
        server.settings = dataclasses.replace(server.settings, janus=None)
        status, body = await post("/janus/webinar")
        assert status == 404 and body["code"] == "janus_off", body
        assert not server.janus_publishers
    finally:
        await publisher_pc.close()
    assert await participants(http, janus.url, room=999) == 0


def test_janus_settings_from_config_and_their_errors() -> None:
    from stream_avatar.config import ConfigError, load_config

    env = {"STREAM_AVATAR_JANUS_URL": "http://127.0.0.1:8088/janus", "STREAM_AVATAR_JANUS_ROOM": "77"}
    cfg = load_config(
        environ={**env, "STREAM_AVATAR_JANUS_PIN": "letmein", "STREAM_AVATAR_JANUS_CREATE_ROOM": "1"}
    )
    settings = cfg.janus.settings()
    assert settings == JanusSettings("http://127.0.0.1:8088/janus", 77, pin="letmein", create_room=True)
    assert "letmein" not in repr(cfg) and "letmein" not in repr(settings)  # secrets stay out of logs
    assert load_config(environ={}).janus.settings() is None  # off by default
    for bad, fragment in (
        ({"STREAM_AVATAR_JANUS_URL": "ftp://host/janus"}, "http(s)://"),
        ({"STREAM_AVATAR_JANUS_URL": "http://user:pw@host/janus"}, "credentials"),
        ({**env, "STREAM_AVATAR_JANUS_ROOM": "0"}, "positive integer"),
        ({**env, "STREAM_AVATAR_JANUS_ROOM": "x"}, "room must be int"),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            load_config(environ=bad)

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
import os
import shutil
import socket
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from stream_avatar.server.janus import JanusError, JanusPublisher, JanusSession, JanusSettings
from tests.test_whip_whep import open_peer_connections, publish, wait_for

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


async def janus_sessions(http: aiohttp.ClientSession, url: str) -> int:
    """Sessions alive on Janus, read through a fresh session's list of rooms' participants would
    need the admin API; instead: a feed list of the room (0 when the room is gone or empty)."""
    probe = JanusSession(http, url)
    await probe.create()
    try:
        handle = await probe.attach("janus.plugin.videoroom")
        try:
            data, _ = await probe.message(handle, {"request": "listparticipants", "room": ROOM})
        except JanusError as exc:
            if exc.code == 426:
                return 0
            raise
        return len(data.get("participants", []))
    finally:
        await probe.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def test_python_api_publishes_a_stream_that_a_janus_subscriber_receives(
    janus: Janus, local_ice: None, http: aiohttp.ClientSession
) -> None:
    from tests.test_whip_whep import make_server

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
    assert await janus_sessions(http, janus.url) == 0
    assert open_peer_connections() == 0

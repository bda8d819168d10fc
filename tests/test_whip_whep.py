"""WHIP ingest and WHEP playback over plain HTTP: aiortc peers as the clients, aiohttp as their HTTP.

A WHIP publisher sends a tone; a WHEP viewer of the same stream receives the avatar's video and audio.
The server runs in the test's event loop with fake engine parts (tests/fakes.py: FakeRenderer draws
solid frames whose red channel is jawOpen, FakeDriver opens the jaw with the audio's energy), so the
viewer can read the publisher's audio off the picture without any model.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from stream_avatar.server.app import AvatarServer, ServerSettings
from stream_avatar.server.client import AvatarClient
from stream_avatar.server.session import SessionSettings
from stream_avatar.session.engine import AvatarEngine
from tests.fakes import TEST_CONSENT, FakeDriver, FakeIdle, FakeRenderer, to_int16

SIZE = 64
FPS = 25
RATE = 48000
TOKEN = "test-token-0123456789abcdef"
SDP = {"Content-Type": "application/sdp"}


def make_server(
    bearer_token: str | None = None,
    max_sessions: int = 4,
    max_viewers: int = 16,
    cors_origins: tuple[str, ...] = (),
) -> AvatarServer:
    avatar = SimpleNamespace(id="default", size=SIZE, meta={"consent": {"statement": TEST_CONSENT}})
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        max_sessions=max_sessions,
        max_viewers=max_viewers,
        measured_admission=False,
        bearer_token=bearer_token,
        cors_origins=cors_origins,
        session=SessionSettings(fps=FPS, size=SIZE, emotion="neutral"),
    )
    return AvatarServer(
        settings,
        lambda spec: avatar,
        lambda a: AvatarEngine(FakeRenderer(SIZE), FakeDriver(FPS), FakeIdle(), fps=FPS, packet_lead=True),
        lambda a: FakeRenderer(SIZE),
    )


@pytest.fixture
async def server() -> AsyncIterator[AvatarServer]:
    srv = make_server()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.aclose()
    assert not srv.whip_streams and not srv.whep_viewers


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def endpoint_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("whip-", "whep-"))]


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "avatar-engine-worker"]


def open_peer_connections() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is RTCPeerConnection and o.connectionState != "closed")


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


class ToneTrack(MediaStreamTrack):
    """A publisher's microphone: a 220 Hz tone in 20 ms, 48 kHz mono frames, paced by their pts."""

    kind = "audio"

    def __init__(self, amp: float = 0.5) -> None:
        super().__init__()
        self.amp = amp
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._pts / RATE - time.monotonic()))
        n = RATE // 50
        t = (self._pts + np.arange(n)) / RATE
        samples = to_int16((self.amp * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32))
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, Fraction(1, RATE)
        self._pts += n
        return frame


async def offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate here
    return str(pc.localDescription.sdp)


async def publish(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[RTCPeerConnection, str]:
    """A WHIP publisher of a tone: its peer connection and the session's Location."""
    pc = RTCPeerConnection()
    pc.addTransceiver(ToneTrack(), direction="sendonly")
    async with http.post(url, data=await offer(pc), headers={**SDP, **(headers or {})}) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.content_type == "application/sdp"
        answer, location = await resp.text(), resp.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc, location


class Player:
    """A WHEP player: recvonly audio + video; records (arrival, red channel) per video frame and
    (arrival, samples) per audio frame, in bounded buffers."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.video: deque[tuple[float, float]] = deque(maxlen=2000)
        self.audio: deque[tuple[float, np.ndarray]] = deque(maxlen=2000)
        self._tasks: list[asyncio.Task[Any]] = []
        self.pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._read(track))))
        self.location = ""

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if isinstance(frame, av.VideoFrame):
                    rgb = frame.to_ndarray(format="rgb24")
                    self.video.append((now, float(rgb[rgb.shape[0] // 2, rgb.shape[1] // 2, 0])))
                else:
                    pcm = frame.to_ndarray().astype(np.float32).reshape(-1) / 32768.0
                    self.audio.append((now, pcm))

    async def watch(
        self, http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
    ) -> None:
        async with http.post(url, data=await offer(self.pc), headers={**SDP, **(headers or {})}) as resp:
            assert resp.status == 201, await resp.text()
            answer, self.location = await resp.text(), resp.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_whip_publisher_drives_a_stream_that_whep_players_watch(
    server: AvatarServer, http: aiohttp.ClientSession
) -> None:
    publisher, location = await publish(http, server.url + "/whip/studio-1")
    first, second = Player(), Player()
    try:
        assert re.fullmatch(r"/whip/studio-1/[0-9a-f]{32}", location), location
        assert set(server.whip_streams) == {"studio-1"}
        await first.watch(http, server.url + "/whep/studio-1")
        await second.watch(http, server.url + "/whep/studio-1")
        assert re.fullmatch(r"/whep/studio-1/[0-9a-f]{32}", first.location), first.location
        assert len(server.whep_viewers) == 2
        # The tone reaches the engine: the fake face opens its mouth (red channel = jawOpen), and the
        # viewers hear the tone back (delayed with the picture).
        assert await wait_for(lambda: len(first.video) > FPS and len(first.audio) > 50, 10.0)
        assert await wait_for(lambda: np.mean([r for _, r in list(first.video)[-5:]]) > 200, 5.0), list(
            first.video
        )[-5:]
        tail = np.concatenate([a for _, a in list(first.audio)[-25:]])
        assert float(np.sqrt(np.mean(tail**2))) > 0.1
        assert server.whip_streams["studio-1"].audio_frames > 25
        status = await (await http.get(server.url + "/status")).json()
        assert status["streams"] == 1 and status["viewers"] == 2
        # The page's viewer (`/?watch=studio-1`, its /ws offer with watch) watches a WHIP stream by name.
        page_viewer = AvatarClient(server.url, None, watch="studio-1", keep_frames=4)
        try:
            await page_viewer.connect()
            assert await wait_for(lambda: len(page_viewer.received.video) > 5, 10.0)
        finally:
            await page_viewer.close()

        # DELETE of one player frees it; the other keeps receiving.
        async with http.delete(server.url + first.location) as resp:
            assert resp.status == 200
        assert await wait_for(lambda: len(server.whep_viewers) == 1)
        n = len(second.video)
        assert await wait_for(lambda: len(second.video) > n + 10)
        async with http.delete(server.url + first.location) as resp:
            assert resp.status == 404  # already gone

        # DELETE of the publisher ends the stream: the remaining player is closed with it.
        async with http.delete(server.url + location) as resp:
            assert resp.status == 200
        assert await wait_for(lambda: not server.whip_streams and not server.whep_viewers)
        assert await wait_for(lambda: second.pc.connectionState in ("closed", "failed"), 10.0)
    finally:
        await first.close()
        await second.close()
        await publisher.close()
    assert await wait_for(lambda: not endpoint_tasks() and not engine_threads())
    assert open_peer_connections() == 0


def _setup(sdp: str) -> set[str]:
    return set(re.findall(r"a=setup:(\w+)", sdp))


@pytest.mark.parametrize(
    ("offered", "answered"), [("actpass", "passive"), ("active", "passive"), ("passive", "active")]
)
async def test_answers_take_the_dtls_server_role_where_the_offer_leaves_it_open(
    server: AvatarServer, http: aiohttp.ClientSession, offered: str, answered: str
) -> None:
    """An offer that leaves the DTLS role open (actpass, what every WHIP/WHEP client sends) is answered
    passive: the server's ECDSA certificate serves, and RSA clients (GStreamer) find a shared cipher.
    An offer that picks a role keeps it; every pairing connects."""
    pc = RTCPeerConnection()
    pc.addTransceiver(ToneTrack(), direction="sendonly")
    sdp = (await offer(pc)).replace("a=setup:actpass", f"a=setup:{offered}")
    try:
        async with http.post(server.url + "/whip/roles", data=sdp, headers=SDP) as resp:
            assert resp.status == 201, await resp.text()
            answer, location = await resp.text(), resp.headers["Location"]
        assert _setup(answer) == {answered}, answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert await wait_for(lambda: pc.connectionState == "connected", 10.0), pc.connectionState
        assert await wait_for(lambda: server.whip_streams["roles"].audio_frames > 10, 5.0)
        async with http.delete(server.url + location) as resp:
            assert resp.status == 200
    finally:
        await pc.close()
    assert await wait_for(lambda: not endpoint_tasks() and not engine_threads())


GST_PEER = Path(__file__).with_name("gst_webrtc_peer.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # PyGObject and GStreamer come from Debian, not from pip


@functools.cache
def _gstreamer_missing() -> str | None:
    """Why GStreamer's webrtcbin cannot run here (None: it can)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON}"
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
        "gi.require_version('GstSdp', '1.0'); from gi.repository import Gst; Gst.init(None); "
        f"import sys; sys.path.insert(0, {str(GST_PEER.parent)!r}); import gst_webrtc_peer as p; "
        "missing = [n for n in p.REQUIRED_ELEMENTS if Gst.ElementFactory.find(n) is None]; "
        "print(' '.join(missing))"
    )
    run = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        return "PyGObject / GStreamer typelibs missing: " + run.stderr.strip().splitlines()[-1]
    if run.stdout.strip():
        return "GStreamer elements missing: " + run.stdout.strip()
    return None


needs_gstreamer = pytest.mark.skipif(
    _gstreamer_missing() is not None,
    reason=f"GStreamer webrtcbin unavailable ({_gstreamer_missing()}): apt-get install python3-gi "
    "gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice",
)


async def gst_peer(mode: str, url: str, seconds: float) -> list[dict[str, Any]]:
    """Run the GStreamer peer to its end; its JSON events."""
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(GST_PEER), mode, url, str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), seconds + 40.0)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (events, err.decode()[-2000:])
    return events


@needs_gstreamer
async def test_gstreamer_webrtcbin_publishes_over_whip(
    server: AvatarServer, http: aiohttp.ClientSession
) -> None:
    """GStreamer's WebRTC stack (that of whipsink) publishes a tone: it connects, the stream's engine
    gets the audio (the fake face opens its mouth for an aiortc WHEP player), DELETE ends it."""
    peer = asyncio.ensure_future(gst_peer("whip", server.url + "/whip/gst", 4.0))
    player = Player()
    try:
        # Watchable once its answer is made (the name is taken earlier, while its engine is built).
        assert await wait_for(lambda: server.find_stream("gst") is not None or peer.done(), 15.0)
        assert not peer.done(), peer.result()
        await player.watch(http, server.url + "/whep/gst")
        assert await wait_for(lambda: server.whip_streams["gst"].audio_frames > 50, 10.0)
        assert await wait_for(lambda: any(r > 200 for _, r in list(player.video)), 5.0), list(player.video)[
            -5:
        ]
        events = await peer
    finally:
        await player.close()
        if not peer.done():
            peer.cancel()
    assert {"event": "post", "status": 201} in events and {"event": "delete", "status": 200} in events
    assert {"event": "connection", "state": "connected"} in events, events
    assert await wait_for(lambda: not server.whip_streams and not endpoint_tasks() and not engine_threads())


@needs_gstreamer
async def test_gstreamer_webrtcbin_plays_over_whep(server: AvatarServer, http: aiohttp.ClientSession) -> None:
    """GStreamer's WebRTC stack (that of whepsrc) watches a stream: it decodes the avatar's VP8 video
    and Opus audio."""
    publisher, location = await publish(http, server.url + "/whip/src")
    try:
        events = await gst_peer("whep", server.url + "/whep/src", 3.0)
        decoded = next(e for e in events if e["event"] == "decoded")
        assert decoded["video"] >= FPS and decoded["audio"] >= 50, events
        assert {"event": "delete", "status": 200} in events
        assert await wait_for(lambda: not server.whep_viewers)
        async with http.delete(server.url + location) as resp:
            assert resp.status == 200
    finally:
        await publisher.close()
    assert await wait_for(lambda: not endpoint_tasks() and not engine_threads())


async def test_malformed_requests_get_clear_errors_and_leave_nothing_running(
    server: AvatarServer, http: aiohttp.ClientSession
) -> None:
    base = server.url

    async def post(path: str, body: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        async with http.post(base + path, data=body, headers=SDP if headers is None else headers) as resp:
            return resp.status, await resp.json(content_type=None)

    # Wrong content type: 415.
    status, body = await post("/whip/a", "v=0\r\n", {"Content-Type": "application/json"})
    assert status == 415 and body["code"] == "bad_content_type", body
    status, body = await post("/whep/a", "v=0\r\n", {"Content-Type": "text/plain"})
    assert status == 415
    # Not SDP, or SDP aiortc cannot use: 400 with the reason.
    for bad in ("hello", "v=0\r\nnonsense", "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\nm=audio x\r\n"):
        status, body = await post("/whip/studio", bad)
        assert status == 400 and body["code"] == "bad_offer" and "\n" not in body["message"], (bad, body)
    # A valid offer without audio to send: 400 (a WHIP stream needs the presenter's audio).
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    status, body = await post("/whip/studio", await offer(pc))
    assert status == 400 and "audio" in body["message"], body
    await pc.close()
    # An offer without its DTLS fingerprint or ICE credentials: 400 now, not a handshake failing later.
    pc = RTCPeerConnection()
    pc.addTransceiver(ToneTrack(), direction="sendonly")
    good = await offer(pc)
    await pc.close()
    for drop, word in (("a=fingerprint", "fingerprint"), ("a=ice-ufrag", "ICE"), ("a=ice-pwd", "ICE")):
        sdp = "".join(line + "\r\n" for line in good.splitlines() if not line.startswith(drop))
        status, body = await post("/whip/studio", sdp)
        assert status == 400 and body["code"] == "bad_offer" and word in body["message"], (drop, body)
    # Stream ids are validated; watching a stream that does not run is 404.
    for name in ("a.b", "x" * 65, "caf%C3%A9"):
        status, body = await post(f"/whip/{name}", "v=0\r\n")
        assert status == 400 and body["code"] == "bad_stream", (name, body)
    status, body = await post("/whep/nobody", "v=0\r\n")
    assert status == 404 and body["code"] == "unknown_stream", body
    # Unknown resources: 404 for PATCH and DELETE.
    for path in ("/whip/studio/" + "0" * 32, "/whep/studio/" + "0" * 32, "/whip/studio/nope"):
        async with http.delete(base + path) as resp:
            assert resp.status == 404, path
    # Nothing of the refused offers is left: no stream, task, engine or open peer connection.
    assert not server.whip_streams and not server.whep_viewers
    assert await wait_for(lambda: not endpoint_tasks() and not engine_threads())
    assert open_peer_connections() == 0


async def test_trickle_patch_conflicts_and_admission(http: aiohttp.ClientSession) -> None:
    srv = make_server(max_sessions=1, max_viewers=1)
    await srv.start()
    publisher, location = await publish(http, srv.url + "/whip/live")
    player = Player()
    try:
        url = srv.url + location
        ufrag = re.search(r"a=ice-ufrag:(\S+)", publisher.localDescription.sdp).group(1)  # type: ignore[union-attr]
        frag = (
            f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
            "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n"
        )
        frag_type = {"Content-Type": "application/trickle-ice-sdpfrag"}
        async with http.patch(url, data=frag, headers=frag_type) as resp:
            assert resp.status == 204  # trickled candidates are taken
        async with http.patch(url, data=frag.replace(ufrag, "other"), headers=frag_type) as resp:
            assert resp.status == 422 and (await resp.json())["code"] == "ice_restart"
        async with http.patch(url, data="a=candidate:garbage\r\n", headers=frag_type) as resp:
            assert resp.status == 400
        async with http.patch(url, data=frag, headers=SDP) as resp:
            assert resp.status == 415
        # The name is taken while the stream runs; the session cap refuses another stream (503 busy).
        async with http.post(srv.url + "/whip/live", data="v=0\r\n", headers=SDP) as resp:
            assert resp.status == 409
        other = RTCPeerConnection()
        other.addTransceiver(ToneTrack(), direction="sendonly")
        async with http.post(srv.url + "/whip/second", data=await offer(other), headers=SDP) as resp:
            body = await resp.json()
            assert resp.status == 503 and body["code"] == "busy", body
        await other.close()
        # Viewers by their own cap: the first is let in, the second refused.
        await player.watch(http, srv.url + "/whep/live")
        late = Player()
        async with http.post(srv.url + "/whep/live", data=await offer(late.pc), headers=SDP) as resp:
            assert resp.status == 503 and (await resp.json())["code"] == "busy"
        await late.close()
    finally:
        await player.close()
        await publisher.close()
        await srv.aclose()
    assert not srv.whip_streams and not srv.whep_viewers
    assert await wait_for(lambda: not endpoint_tasks() and not engine_threads())


async def test_bearer_token_is_required_when_configured(http: aiohttp.ClientSession) -> None:
    srv = make_server(bearer_token=TOKEN)
    await srv.start()
    publisher: RTCPeerConnection | None = None
    try:
        pc = RTCPeerConnection()
        pc.addTransceiver(ToneTrack(), direction="sendonly")
        sdp = await offer(pc)
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            async with http.post(srv.url + "/whip/secure", data=sdp, headers={**SDP, **headers}) as resp:
                assert resp.status == 401, headers
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await resp.json())["code"] == "unauthorized"
        await pc.close()
        assert not srv.whip_streams
        auth = {"Authorization": f"Bearer {TOKEN}"}
        publisher, location = await publish(http, srv.url + "/whip/secure", auth)
        async with http.post(srv.url + "/whep/secure", data="v=0\r\n", headers=SDP) as resp:
            assert resp.status == 401  # WHEP too
        async with http.delete(srv.url + location) as resp:
            assert resp.status == 401 and srv.whip_streams
        async with http.delete(srv.url + location, headers=auth) as resp:
            assert resp.status == 200
        assert await wait_for(lambda: not srv.whip_streams)
        # The rest of the server is unchanged by the token: the page and /status need none.
        async with http.get(srv.url + "/status") as resp:
            assert resp.status == 200
    finally:
        if publisher is not None:
            await publisher.close()
        await srv.aclose()
    assert await wait_for(lambda: not endpoint_tasks() and not engine_threads())


def test_the_bearer_token_setting() -> None:
    from stream_avatar.config import ConfigError, load_config

    cfg = load_config(environ={"STREAM_AVATAR_BEARER_TOKEN": TOKEN})
    assert cfg.server.bearer_token == TOKEN and TOKEN not in repr(cfg)
    assert load_config({"bearer_token": TOKEN}, environ={}).server.bearer_token == TOKEN
    assert load_config(environ={"STREAM_AVATAR_BEARER_TOKEN": ""}).server.bearer_token is None
    assert load_config(environ={}).server.bearer_token is None  # off by default
    for bad in ("short", "has a space in the middle!!"):
        with pytest.raises(ConfigError, match="bearer_token"):
            load_config({"bearer_token": bad}, environ={})


async def test_cors_only_for_configured_origins(http: aiohttp.ClientSession) -> None:
    """A browser WHEP/WHIP player on another origin: its preflight and requests get CORS headers when
    its origin is configured, and none otherwise (the default: same origin only)."""
    app_origin = "https://app.example.com"
    for allowed, origin, expect in (
        ((), app_origin, False),
        ((app_origin,), app_origin, True),
        ((app_origin,), "https://evil.example.com", False),
        (("*",), "https://evil.example.com", True),
    ):
        srv = make_server(cors_origins=allowed)
        await srv.start()
        try:
            pre = {"Origin": origin, "Access-Control-Request-Method": "POST"}
            async with http.options(srv.url + "/whep/room", headers=pre) as resp:
                assert resp.status == 204 and resp.headers["Accept-Post"] == "application/sdp"
                assert ("Access-Control-Allow-Origin" in resp.headers) is expect, (allowed, origin)
                if expect:
                    assert resp.headers["Access-Control-Allow-Origin"] == origin
                    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
                    assert "DELETE" in resp.headers["Access-Control-Allow-Methods"]
            async with http.options(srv.url + "/whip/room/" + "0" * 32, headers=pre) as resp:
                assert resp.status == 204
                assert resp.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
                assert ("Access-Control-Allow-Origin" in resp.headers) is expect
            # An actual request (here an error: no stream named "room") carries them too, and exposes
            # Location for the player's later PATCH/DELETE.
            headers = {**SDP, "Origin": origin}
            async with http.post(srv.url + "/whep/room", data="v=0\r\n", headers=headers) as resp:
                assert resp.status >= 400
                assert ("Access-Control-Allow-Origin" in resp.headers) is expect
                if expect:
                    assert "Location" in resp.headers["Access-Control-Expose-Headers"]
            # The page, the signalling and /status never get CORS headers.
            async with http.get(srv.url + "/status", headers={"Origin": origin}) as resp:
                assert "Access-Control-Allow-Origin" not in resp.headers
        finally:
            await srv.aclose()


def test_the_cors_origins_setting() -> None:
    from stream_avatar.config import ConfigError, load_config

    assert load_config(environ={}).server.cors_origins == ()  # same origin only by default
    cfg = load_config(environ={"STREAM_AVATAR_CORS_ORIGINS": "https://b.example, https://a.example:8443/"})
    assert cfg.server.cors_origins == ("https://a.example:8443", "https://b.example")
    assert load_config({"cors_origins": ["http://[::1]:3000"]}, environ={}).server.cors_origins == (
        "http://[::1]:3000",
    )
    for bad in ("app.example.com", "https://app.example.com/path", "javascript:alert(1)", "https://a b"):
        with pytest.raises(ConfigError, match="cors_origins"):
            load_config({"cors_origins": [bad]}, environ={})

"""The WebRTC server end to end: a real aiortc peer through the real signaling WebSocket.

The server runs in the test's event loop with the real engine (DSP driver, warp renderer at 128 px to
leave CPU for the media path); the client is ``stream_avatar.server.client.AvatarClient``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from stream_avatar.audio.resample import resample
from stream_avatar.avatar.store import Avatar
from stream_avatar.server.app import AvatarServer, ServerSettings
from stream_avatar.server.client import AvatarClient, PcmSource
from stream_avatar.server.media import LowDelayAudioJitterBuffer, set_audio_jitter_buffer
from stream_avatar.server.session import SessionSettings
from stream_avatar.session.engine import build_engine
from tests.conftest import SpeechBursts

SIZE = 128
FPS = 25
RATE = 48000


@pytest.fixture(scope="module")
def avatar(default_avatar: Callable[[int], Avatar]) -> Avatar:
    return default_avatar(SIZE)


def make_server(avatar: Avatar, web_root: Path | None = None, max_sessions: int = 4) -> AvatarServer:
    from stream_avatar.render.renderer import RendererWrapper

    settings = ServerSettings(
        host="127.0.0.1", port=0, max_sessions=max_sessions, session=SessionSettings(fps=FPS, size=SIZE)
    )

    def resolve(spec: str) -> Avatar:
        if spec not in ("default", avatar.id):
            raise ValueError(f"no avatar {spec}")
        return avatar

    kwargs: dict[str, Any] = {} if web_root is None else {"web_root": web_root}
    return AvatarServer(
        settings,
        resolve,
        lambda a: build_engine(a, device="cpu", packet_lead=True),
        lambda a: RendererWrapper(a.tensors, "cpu"),
        **kwargs,
    )


@pytest.fixture
async def server(avatar: Avatar) -> AsyncIterator[AvatarServer]:
    srv = make_server(avatar)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.aclose()
    assert not srv.sessions


def session_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("session-")]


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "avatar-engine-worker"]


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def to_48k(x16: np.ndarray) -> np.ndarray:
    return resample(x16, 16000, RATE)


# ------------------------------------------------------------------------------------ loopback


async def test_loopback_speech_bursts(server: AvatarServer, speech_bursts: SpeechBursts) -> None:
    """fps, mouth follows the bursts, audio comes back, rig and audio agree in time, clear is fast."""
    signal = to_48k(speech_bursts.samples)
    # A last long burst to interrupt: the same phrases again, without gaps.
    tail_speech = np.concatenate([to_48k(speech_bursts.samples[a:b]) for a, b in speech_bursts.bursts])
    source = PcmSource(np.concatenate([signal, tail_speech]))
    client = AvatarClient(server.url, source)
    try:
        await client.connect()
        assert client.hello is not None and client.hello["fps"] == FPS
        # Play the bursts, then 1 s into the tail burst interrupt: mute the mic and send clear.
        await asyncio.sleep(signal.size / RATE + 1.0)
        rigs_before = [m["rig"]["jawOpen"] for _, m in list(client.received.rig)[-5:]]
        source.mute()
        t_clear = await client.clear()
        cleared = await client.reply("cleared")
        await asyncio.sleep(0.5)
        rec = client.received
        stats = list(rec.stats)
    finally:
        await client.close()
    assert cleared["type"] == "cleared"

    # Frame rate at the client, after the first second.
    arrivals = np.array([t for t, _, _ in rec.video])
    assert arrivals.size > 4 * FPS
    steady = arrivals[arrivals > arrivals[0] + 1.0]
    fps = (steady.size - 1) / (steady[-1] - steady[0])
    assert abs(fps - FPS) <= 0.1 * FPS, f"received {fps:.1f} fps"

    # Mouth (from the rig channel) high during the bursts, low in the silences. Each burst's window is
    # placed by the send time of its samples; the server's reply lags them by less than 0.2 s.
    rig_t = np.array([t for t, _ in rec.rig])
    jaw = np.array([m["rig"]["jawOpen"] for _, m in rec.rig])
    in_speech: list[float] = []
    in_silence: list[float] = []
    scale = RATE / speech_bursts.sample_rate_hz
    starts = [source.sent_time_of(int(a * scale)) for a, _ in speech_bursts.bursts]
    ends = [source.sent_time_of(int(b * scale)) for _, b in speech_bursts.bursts]
    assert None not in starts and None not in ends
    for i, (t_a, t_b) in enumerate(zip(starts, ends, strict=True)):
        assert t_a is not None and t_b is not None
        in_speech += jaw[(rig_t > t_a + 0.2) & (rig_t < t_b)].tolist()
        next_start = starts[i + 1] if i + 1 < len(starts) else t_b + 0.9
        assert next_start is not None
        in_silence += jaw[(rig_t > t_b + 0.45) & (rig_t < next_start)].tolist()
    assert len(in_speech) > 40 and len(in_silence) > 20
    assert np.mean(in_speech) > 0.25, f"mean jawOpen in speech {np.mean(in_speech):.2f}"
    assert np.max(in_silence) < 0.05, f"max jawOpen in silence {np.max(in_silence):.3f}"

    # The audio sent back is the audio we sent (delayed): compare 10 ms energy envelopes.
    got = np.concatenate([a for _, _, a in rec.audio])
    sent = np.concatenate([signal, tail_speech])[: got.size]
    hop = RATE // 100

    def envelope(x: np.ndarray) -> np.ndarray:
        n = x.size // hop
        return np.log(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-8)

    env_got, env_sent = envelope(got), envelope(sent)
    n = min(env_got.size, env_sent.size) - 50
    corr = [np.corrcoef(env_got[lag : lag + n - 50], env_sent[: n - 50])[0, 1] for lag in range(0, 50)]
    assert max(corr) > 0.8, f"received audio does not follow the sent audio (r = {max(corr):.2f})"

    # Rig messages and audio of the same frame arrive together (within one frame period).
    audio_arrival = {pts: t for t, pts, _ in rec.audio}
    diffs = [
        t - audio_arrival[m["frame"] * 1920]
        for t, m in rec.rig
        if m["frame"] * 1920 in audio_arrival and m["frame"] > FPS
    ]
    assert len(diffs) > 100
    assert np.percentile(np.abs(diffs), 90) < 1.0 / FPS, (
        f"rig vs audio: {np.percentile(np.abs(diffs), 90):.3f} s"
    )

    # clear: the mouth was open and is below 0.05 within 100 ms of the message.
    assert max(rigs_before) > 0.2, "the tail burst did not open the mouth before the interrupt"
    after = [(t, m["rig"]["jawOpen"]) for t, m in rec.rig if t > t_clear]
    closed_at = next(t for t, j in after if j < 0.05)
    assert closed_at - t_clear <= 0.1, f"mouth closed {1000 * (closed_at - t_clear):.0f} ms after clear"

    # The server reported its stats once a second, with its own latency figure.
    assert len(stats) >= 4
    assert stats[-1]["frames_sent"] > 4 * FPS and stats[-1]["mouth_latency_ms"] is not None


# ----------------------------------------------------------------------------------- signaling


async def test_bad_messages_get_errors_and_the_session_survives(server: AvatarServer) -> None:
    async with websockets.connect(server.url.replace("http", "ws") + "/ws") as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and hello["protocol"] == 1

        async def ask(raw: str) -> dict[str, Any]:
            await ws.send(raw)
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

        cases = {
            "{not json": "bad_json",
            "[1, 2]": "bad_message",
            '{"kind": "offer"}': "bad_message",
            '{"type": "dance"}': "unknown_type",
            '{"type": "offer"}': "bad_field",
            '{"type": "offer", "sdp": "hello"}': "bad_field",
            '{"type": "offer", "sdp": "v=0\\r\\nnonsense"}': "bad_offer",
            '{"type": "avatar", "avatar": "../../etc/passwd"}': "bad_field",
            '{"type": "avatar", "avatar": "0123456789abcdef"}': "unknown_avatar",
            '{"type": "ping", "t": "soon"}': "bad_field",
            '{"type": "emotion"}': "bad_field",
            '{"type": "emotion", "emotion": "joy"}': "bad_field",
            '{"type": "emotion", "emotion": "happy:2"}': "bad_field",
            '{"type": "emotion", "weights": {"happy": "much"}}': "bad_field",
            json.dumps({"type": "ping", "t": 1, "pad": "x" * 70000}): "too_large",
        }
        for raw, code in cases.items():
            reply = await ask(raw)
            assert reply["type"] == "error" and reply["code"] == code, (raw[:40], reply)
            assert "\n" not in reply["message"]
        assert await ask('{"type": "ping", "t": 12.5}') == {"type": "pong", "t": 12.5}
        assert (await ask('{"type": "clear"}'))["type"] == "cleared"  # before any offer: harmless
        # An emotion before the offer is kept for the engine the offer builds.
        reply = await ask('{"type": "emotion", "weights": {"sad": 0.5}}')
        assert reply == {"type": "emotion", "emotion": "sad:0.5", "weights": {"sad": 0.5}}
    assert await wait_for(lambda: not server.sessions)


async def test_second_offer_is_refused_and_media_keeps_flowing(server: AvatarServer) -> None:
    client = AvatarClient(server.url, PcmSource(np.zeros(RATE * 3, np.float32)))
    try:
        await client.connect()
        assert client.pc is not None
        await client.send({"type": "offer", "sdp": client.pc.localDescription.sdp})
        reply = await client.reply("answer")
        assert reply["type"] == "error" and reply["code"] == "already_negotiated"
        n = len(client.received.video)
        await asyncio.sleep(0.6)
        assert len(client.received.video) > n + 5
        # Switching to the same avatar by id works; an unknown id is refused.
        await client.send({"type": "avatar", "avatar": "default"})
        assert (await client.reply("avatar"))["type"] == "avatar"
        # The operator's emotion changes the face within a second (the rig channel shows it).
        assert client.hello is not None and client.hello["emotion"] == "neutral"
        await client.send({"type": "emotion", "emotion": "surprised:0.9"})
        assert (await client.reply("emotion"))["weights"] == {"surprised": 0.9}
        sent = time.monotonic()
        await asyncio.sleep(1.0)
        brows = [m["rig"]["browInnerUp"] for t, m in client.received.rig if t > sent + 0.8]
        assert brows and min(brows) > 0.6, brows
    finally:
        await client.close()


async def test_disconnect_mid_stream_cleans_up_and_others_keep_going(
    server: AvatarServer, speech_bursts: SpeechBursts
) -> None:
    speech = to_48k(speech_bursts.samples)
    first, second = AvatarClient(server.url, PcmSource(speech)), AvatarClient(server.url, PcmSource(speech))
    await first.connect()
    await second.connect()
    try:
        await asyncio.sleep(1.5)
        assert len(server.sessions) == 2 and len(engine_threads()) == 2
        # Vanish without a goodbye: the socket drops, the peer connection is never closed politely.
        assert first._ws is not None
        first._ws.transport.abort()
        assert await wait_for(lambda: len(server.sessions) == 1)
        n = len(second.received.video)
        await asyncio.sleep(1.0)
        assert len(second.received.video) >= n + 20, "the other session stalled"
    finally:
        await first.close()
        await second.close()
    assert await wait_for(lambda: not server.sessions and not session_tasks() and not engine_threads())


async def test_session_limit(avatar: Avatar) -> None:
    srv = make_server(avatar, max_sessions=1)
    await srv.start()
    try:
        url = srv.url.replace("http", "ws") + "/ws"
        async with websockets.connect(url) as ws:
            await ws.recv()
            with pytest.raises(websockets.InvalidStatus) as exc:
                await websockets.connect(url)
            assert exc.value.response.status_code == 503
    finally:
        await srv.aclose()


async def test_shutdown_closes_every_session(avatar: Avatar) -> None:
    srv = make_server(avatar)
    await srv.start()
    client = AvatarClient(srv.url, PcmSource(np.zeros(RATE, np.float32)))
    await client.connect()
    await asyncio.sleep(0.3)
    await srv.aclose()
    assert not srv.sessions
    assert await wait_for(lambda: not session_tasks() and not engine_threads())
    await client.close()


# ---------------------------------------------------------------------------------------- http


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


async def test_static_files_are_served_from_the_client_folder_only(avatar: Avatar, tmp_path: Path) -> None:
    root = tmp_path / "web"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>t</title>")
    (root / "js" / "app.js").write_text("export const x = 1;")
    (root / "secret.py").write_text("not served")
    (tmp_path / "outside.html").write_text("outside")
    srv = make_server(avatar, web_root=root)
    await srv.start()
    try:
        base = srv.url
        status, ctype, body = await asyncio.to_thread(_get, base + "/")
        assert status == 200 and ctype.startswith("text/html") and b"doctype" in body
        status, ctype, _ = await asyncio.to_thread(_get, base + "/js/app.js?v=1")
        assert status == 200 and ctype.startswith("text/javascript")
        for path in ("/secret.py", "/../outside.html", "/%2e%2e/outside.html", "/nope.html", "/js"):
            status, _, _ = await asyncio.to_thread(_get, base + path)
            assert status == 404, path
    finally:
        await srv.aclose()


def test_the_shipped_client_page_exists() -> None:
    from stream_avatar.server.app import WEB_CLIENT_DIR

    assert (WEB_CLIENT_DIR / "index.html").is_file()


async def test_audio_jitter_buffer_is_replaced() -> None:
    from aiortc import RTCPeerConnection
    from aiortc.jitterbuffer import JitterBuffer

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        pc.addTransceiver("video")
        audio = next(t for t in pc.getTransceivers() if t.kind == "audio")
        assert set_audio_jitter_buffer(pc, 0) == 1
        assert isinstance(audio.receiver._RTCRtpReceiver__jitter_buffer, LowDelayAudioJitterBuffer)  # type: ignore[attr-defined]
        assert set_audio_jitter_buffer(pc, 3) == 1
        buffer = audio.receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        assert type(buffer) is JitterBuffer and buffer._prefetch == 3
    finally:
        await pc.close()


def _packet(seq: int) -> Any:
    from aiortc.rtp import RtpPacket

    packet = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(seq * 960) % 2**32)
    packet._data = bytes([seq % 256])
    return packet


def test_low_delay_jitter_buffer_releases_on_arrival_and_survives_loss() -> None:
    buf = LowDelayAudioJitterBuffer(capacity=16, gap_wait=2)

    def add(seq: int) -> int | None:
        _, frame = buf.add(_packet(seq))
        return None if frame is None else frame.data[0]

    start = 65530  # crosses the 16-bit sequence wrap
    assert [add(start + i) for i in range(10)] == [(start + i) % 256 for i in range(10)]  # no wait at all
    s = start + 10
    # Packet s is lost: s+1 waits for it, s+2 gives up on it and goes out with the run's newest.
    assert add(s + 1) is None
    assert add(s + 2) == (s + 2) % 256
    assert buf.dropped == 2  # the hole and s+1, which queued behind it
    assert add(s) is None  # too late: already skipped
    assert add(s + 3) == (s + 3) % 256  # back to release on arrival
    # Reordered pair: s+5 before s+4; the late s+4 releases the newest of the run (s+5).
    assert add(s + 5) is None
    assert add(s + 4) == (s + 5) % 256
    assert add(s + 6) == (s + 6) % 256

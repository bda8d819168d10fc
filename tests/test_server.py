"""The WebRTC server end to end: a real aiortc peer through the real signaling WebSocket.

The server runs in the test's event loop with the real engine (DSP driver, warp renderer at 128 px to
leave CPU for the media path); the client is ``stream_avatar.server.client.AvatarClient``.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import os
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import websockets

from stream_avatar.audio.resample import resample
from stream_avatar.avatar.store import Avatar
from stream_avatar.emotion.facs import EMOTIONS
from stream_avatar.server import protocol
from stream_avatar.server.app import WS_MAX_SIZE, AvatarServer, ServerSettings
from stream_avatar.server.client import AvatarClient, PcmSource
from stream_avatar.server.media import LowDelayAudioJitterBuffer, set_audio_jitter_buffer
from stream_avatar.server.session import SessionSettings
from stream_avatar.session.engine import build_engine
from tests.conftest import SpeechBursts
from tests.fakes import EmotionTaggedEngine

SIZE = 128
FPS = 25
RATE = 48000


@pytest.fixture(scope="module")
def avatar(default_avatar: Callable[[int], Avatar]) -> Avatar:
    return default_avatar(SIZE)


def make_server(
    avatar: Avatar,
    web_root: Path | None = None,
    max_sessions: int = 4,
    wrap_engine: Callable[[Any], Any] = lambda engine: engine,
    emotion: str = "auto",
    measured_admission: bool = False,
    prior_session_cores: float | None = None,
) -> AvatarServer:
    """Admission by the hard cap only, unless ``measured_admission`` (the load of a test process,
    with its clients in it, says nothing about the server's)."""
    from stream_avatar.render.renderer import RendererWrapper

    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        max_sessions=max_sessions,
        measured_admission=measured_admission,
        prior_session_cores=prior_session_cores,
        session=SessionSettings(fps=FPS, size=SIZE, emotion=emotion),
    )

    def resolve(spec: str) -> Avatar:
        if spec not in ("default", avatar.id):
            raise ValueError(f"no avatar {spec}")
        return avatar

    kwargs: dict[str, Any] = {} if web_root is None else {"web_root": web_root}
    return AvatarServer(
        settings,
        resolve,
        lambda a: wrap_engine(build_engine(a, device="cpu", packet_lead=True)),
        lambda a: RendererWrapper(a.tensors, "cpu"),
        **kwargs,
    )


async def _running(srv: AvatarServer) -> AsyncIterator[AvatarServer]:
    """Start ``srv``, yield it, close it; no session may outlive it."""
    await srv.start()
    try:
        yield srv
    finally:
        await srv.aclose()
    assert not srv.sessions


@pytest.fixture
async def server(avatar: Avatar) -> AsyncIterator[AvatarServer]:
    async for srv in _running(make_server(avatar)):
        yield srv


@pytest.fixture
async def neutral_server(avatar: Avatar) -> AsyncIterator[AvatarServer]:
    """The lip-sync checks: the face's emotion fixed to neutral, so only speech moves the jaw (an
    inferred surprise or fear drops it on purpose)."""
    async for srv in _running(make_server(avatar, emotion="neutral")):
        yield srv


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


async def test_loopback_speech_bursts(neutral_server: AvatarServer, speech_bursts: SpeechBursts) -> None:
    """fps, mouth follows the bursts, audio comes back, rig and audio agree in time, clear is fast."""
    server = neutral_server
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
    # At rest the learned driver holds jawOpen near 0.02; over a 1 s pause it creeps up to 0.05-0.07
    # (the tracked speech peak decays 4 dB/s, so the room noise reads a little louder relative to it),
    # about a pixel of jaw at 512² and a fifth of the mean opening in speech.
    assert np.max(in_silence) < 0.08, f"max jawOpen in silence {np.max(in_silence):.3f}"
    assert np.median(in_silence) < 0.05, f"median jawOpen in silence {np.median(in_silence):.3f}"

    # The audio sent back is the audio we sent (delayed): compare 10 ms energy envelopes.
    got = np.concatenate([a for _, _, a in rec.audio])
    sent = np.concatenate([signal, tail_speech])[: got.size]
    hop = RATE // 100

    def envelope(x: np.ndarray) -> np.ndarray:
        n = x.size // hop
        return np.log(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-8)

    env_got, env_sent = envelope(got), envelope(sent)
    # In 2 s pieces, each at its own best lag: a late frame is replaced by the previous one with
    # silence and its audio follows one frame later, so the lag may step by 40 ms along the stream.
    piece = 200
    n = min(env_got.size - 50, env_sent.size)
    rs = []
    for a in range(0, n - piece + 1, piece):
        ref = env_sent[a : a + piece]
        rs.append(max(np.corrcoef(env_got[a + lag : a + lag + piece], ref)[0, 1] for lag in range(0, 50)))
    late = stats[-1]["late_frames"] if stats else None
    assert len(rs) >= 3 and float(np.median(rs)) > 0.8, (
        f"received audio does not follow the sent audio (r per 2 s: {np.round(rs, 2)}; late frames {late})"
    )

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
        assert hello["type"] == "hello" and hello["protocol"] == 8

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


async def test_emotion_accepts_auto(server: AvatarServer) -> None:
    async with websockets.connect(server.url.replace("http", "ws") + "/ws") as ws:
        hello = json.loads(await ws.recv())
        assert hello["emotion"] == "auto"  # the default: the emotion inferred from the voice

        async def ask(message: dict[str, Any]) -> dict[str, Any]:
            await ws.send(json.dumps(message))
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

        cases = [
            ({"emotion": "auto"}, "auto", {"auto": 1.0}),
            ({"emotion": "auto+happy:0.3"}, "auto+happy:0.3", {"auto": 1.0, "happy": 0.3}),
            ({"emotion": "auto:0.5"}, "auto:0.5", {"auto": 0.5}),
            ({"weights": {"auto": 1, "sad": 0.4}}, "auto+sad:0.4", {"auto": 1.0, "sad": 0.4}),
            ({"emotion": "happy:0.7"}, "happy:0.7", {"happy": 0.7}),
        ]
        for fields, spec, weights in cases:
            reply = await ask({"type": "emotion", **fields})
            assert reply == {"type": "emotion", "emotion": spec, "weights": weights}, fields
        for bad in ({"emotion": "auto:0"}, {"emotion": "auto+auto"}, {"weights": {"auto": 0}}):
            reply = await ask({"type": "emotion", **bad})
            assert reply["type"] == "error" and reply["code"] == "bad_field" and "auto" in reply["message"]
        session = next(iter(server.sessions.values()))
        assert session._emotion == {"happy": 0.7}  # the last good one; the bad ones changed nothing


@pytest.fixture
def reference_module() -> ModuleType:
    """stream_avatar.capture.reference, the module the server calls for ``emotion_ref``; each test
    sets its ``clip_emotion`` with monkeypatch."""
    return importlib.import_module("stream_avatar.capture.reference")


# The first bytes of an MP4 (ftyp box) and of a WebM (EBML header): enough for the server's sniffing.
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(64)
WEBM = b"\x1a\x45\xdf\xa3" + bytes(64)


def ref_message(clip: bytes) -> str:
    return json.dumps({"type": "emotion_ref", "data": base64.b64encode(clip).decode()})


async def test_emotion_ref_errors_leave_the_session_and_its_emotion(
    server: AvatarServer, reference_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, bytes, int]] = []

    def clip_emotion(path: str | Path, neutral_image: bytes | None = None) -> dict[str, float]:
        seen.append((str(path), Path(path).read_bytes(), stat.S_IMODE(os.stat(path).st_mode)))
        if len(seen) == 1:
            raise reference_module.ReferenceError(f"{Path(path).name}: no video stream")
        if len(seen) == 2:
            raise reference_module.ReferenceError("no face found in the clip")
        raise RuntimeError("a bug in the analysis")

    monkeypatch.setattr(reference_module, "clip_emotion", clip_emotion, raising=False)
    async with websockets.connect(server.url.replace("http", "ws") + "/ws") as ws:
        hello = json.loads(await ws.recv())
        assert hello["reference_max_bytes"] == protocol.MAX_REFERENCE_BYTES == 8 * 1024 * 1024

        async def ask(raw: str) -> dict[str, Any]:
            await ws.send(raw)
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

        assert (await ask('{"type": "emotion", "emotion": "sad:0.5"}'))["emotion"] == "sad:0.5"
        # One byte over (caught once decoded) and a few over (caught by the length of the text).
        oversized = base64.b64encode(bytes(protocol.MAX_REFERENCE_BYTES + 1)).decode()
        longer = base64.b64encode(bytes(protocol.MAX_REFERENCE_BYTES + 3)).decode()
        assert len(oversized) <= protocol.MAX_REFERENCE_BASE64_CHARS < len(longer)
        assert len(longer) + 100 < WS_MAX_SIZE  # refused by the session, not by the transport
        cases = {
            '{"type": "emotion_ref"}': ("bad_field", "base64"),
            '{"type": "emotion_ref", "data": 12}': ("bad_field", "base64"),
            '{"type": "emotion_ref", "data": ""}': ("bad_field", "base64"),
            '{"type": "emotion_ref", "data": "not base64!"}': ("bad_field", "not valid base64"),
            '{"type": "emotion_ref", "data": "AAAAIGZ0eXA"}': ("bad_field", "not valid base64"),  # no padding
            json.dumps({"type": "emotion_ref", "data": oversized}): ("too_large", "limit of 8 MiB"),
            json.dumps({"type": "emotion_ref", "data": longer}): ("too_large", "limit of 8 MiB"),
            # Over 64 KiB is fine for this type: 70000 "A"s decode (to zeros), which are no video.
            json.dumps({"type": "emotion_ref", "data": "A" * 70000}): ("bad_reference", "neither an MP4"),
            json.dumps({"type": "ping", "t": 1, "pad": "x" * 100_000}): ("too_large", "exceeds"),
            ref_message(b"GIF89a" + bytes(64)): ("bad_reference", "neither an MP4 nor a WebM"),
            # The server's temp file is not named in the reply.
            ref_message(MP4): ("bad_reference", "reference clip: no video stream"),
            ref_message(WEBM): ("bad_reference", "reference clip: no face found in the clip"),
            ref_message(MP4 + b"!"): ("reference_failed", "could not analyse"),  # logged, not shown
        }
        for raw, (code, text) in cases.items():
            reply = await ask(raw)
            assert reply["type"] == "error" and reply["code"] == code, (raw[:60], reply)
            assert text in reply["message"] and "\n" not in reply["message"], reply
        # clip_emotion saw the clip's bytes in a private temp file (of the server's naming), since removed.
        assert [(Path(p).suffix, data, mode) for p, data, mode in seen] == [
            (".mp4", MP4, 0o600),
            (".webm", WEBM, 0o600),
            (".mp4", MP4 + b"!", 0o600),
        ]
        for path, _, _ in seen:
            assert Path(path).parent == Path(tempfile.gettempdir()) and not Path(path).exists()
        # The session survived every one of them, its emotion untouched.
        assert await ask('{"type": "ping", "t": 3}') == {"type": "pong", "t": 3}
        session = next(iter(server.sessions.values()))
        assert session._emotion == {"sad": 0.5}
    assert await wait_for(lambda: not server.sessions)


async def test_emotion_ref_is_analysed_off_the_loop_one_at_a_time(
    server: AvatarServer, reference_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()

    def clip_emotion(path: str | Path, neutral_image: bytes | None = None) -> dict[str, float]:
        entered.set()
        assert release.wait(10)
        return {"happy": 0.8}

    monkeypatch.setattr(reference_module, "clip_emotion", clip_emotion, raising=False)
    async with websockets.connect(server.url.replace("http", "ws") + "/ws") as ws:
        json.loads(await ws.recv())

        async def ask(raw: str) -> dict[str, Any]:
            await ws.send(raw)
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

        await ws.send(ref_message(MP4))
        assert await asyncio.to_thread(entered.wait, 5)
        # While the clip is analysed, the session answers (clear, ping) and refuses a second clip.
        assert (await ask('{"type": "clear"}'))["type"] == "cleared"
        reply = await ask(ref_message(WEBM))
        assert reply["type"] == "error" and reply["code"] == "reference_busy", reply
        assert await ask('{"type": "ping", "t": 1}') == {"type": "pong", "t": 1}
        release.set()
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply == {
            "type": "emotion",
            "emotion": "happy:0.8",
            "weights": {"happy": 0.8},
            "source": "reference",
        }
        session = next(iter(server.sessions.values()))
        assert session._emotion == {"happy": 0.8}
        # Done: the next clip is taken.
        reply = await ask(ref_message(WEBM))
        assert reply["type"] == "emotion" and reply["source"] == "reference"


async def test_emotion_ref_neutral_photo_reaches_the_analysis_and_bad_ones_are_refused(
    server: AvatarServer, reference_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``neutral``: a photo of the clip's person at rest, passed to clip_emotion as bytes (no file);
    malformed, oversized or faceless photos are one-line errors and change nothing."""
    seen: list[bytes] = []
    photo = b"\x89PNG\r\n\x1a\n" + bytes(64)

    def clip_emotion(path: str | Path, neutral_image: bytes | None = None) -> dict[str, float]:
        assert isinstance(neutral_image, bytes)
        seen.append(neutral_image)
        if neutral_image.endswith(b"!"):
            raise reference_module.ReferenceError("neutral image: no face found")
        return {"sad": 0.6}

    monkeypatch.setattr(reference_module, "clip_emotion", clip_emotion, raising=False)
    async with websockets.connect(server.url.replace("http", "ws") + "/ws") as ws:
        hello = json.loads(await ws.recv())
        assert hello["neutral_max_bytes"] == protocol.MAX_NEUTRAL_BYTES == 4 * 1024 * 1024

        async def ask(raw: dict[str, Any]) -> dict[str, Any]:
            await ws.send(json.dumps(raw))
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

        clip = base64.b64encode(MP4).decode()
        big = base64.b64encode(bytes(protocol.MAX_NEUTRAL_BYTES + 3)).decode()
        assert len(big) > protocol.MAX_NEUTRAL_BASE64_CHARS
        cases = [
            ({"neutral": 12}, "bad_field", "photo of the person at rest"),
            ({"neutral": ""}, "bad_field", "photo of the person at rest"),
            ({"neutral": "not base64!"}, "bad_field", '"neutral" is not valid base64'),
            ({"neutral": big}, "too_large", "limit of 4 MiB"),
            (
                {"neutral": base64.b64encode(photo + b"!").decode()},
                "bad_reference",
                "reference neutral image: no face",
            ),
        ]
        for extra, code, text in cases:
            reply = await ask({"type": "emotion_ref", "data": clip, **extra})
            assert reply["type"] == "error" and reply["code"] == code, (extra, reply)
            assert text in reply["message"], reply
        reply = await ask({"type": "emotion_ref", "data": clip, "neutral": base64.b64encode(photo).decode()})
        assert reply == {
            "type": "emotion",
            "emotion": "sad:0.6",
            "weights": {"sad": 0.6},
            "source": "reference",
        }
        assert seen == [photo + b"!", photo]


async def test_emotion_ref_sets_the_engines_emotion_and_rig_carries_probabilities(
    avatar: Avatar, reference_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        reference_module, "clip_emotion", lambda path, neutral_image=None: {"happy": 0.8}, raising=False
    )
    srv = make_server(avatar, wrap_engine=EmotionTaggedEngine)
    await srv.start()
    client = AvatarClient(srv.url, PcmSource(np.zeros(RATE * 4, np.float32)))
    try:
        await client.connect()
        assert await wait_for(lambda: len(client.received.rig) > 5)
        # Every rig message has the frame's emotion: probabilities over the 8 emotions, 3 decimals.
        first = client.received.rig[-1][1]["emotion"]
        assert set(first) == set(EMOTIONS) and first["neutral"] == 1.0, first
        await client.send({"type": "emotion_ref", "data": base64.b64encode(MP4).decode()})
        reply = await client.reply("emotion")
        assert reply == {
            "type": "emotion",
            "emotion": "happy:0.8",
            "weights": {"happy": 0.8},
            "source": "reference",
        }
        session = next(iter(srv.sessions.values()))
        assert session.engine is not None and session.engine.emotion == {"happy": 0.8}
        sent = time.monotonic()
        assert await wait_for(lambda: any(t > sent + 0.2 for t, _ in client.received.rig))
        later = [m["emotion"] for t, m in client.received.rig if t > sent + 0.2]
        assert later[-1]["happy"] == 0.8 and later[-1]["neutral"] == 0.2, later[-1]
        assert all(round(p, 3) == p for m in later for p in m.values())
        # The smile shows on the rig as well (FACS AU12 eased in).
        assert await wait_for(lambda: client.received.rig[-1][1]["rig"]["mouthSmileLeft"] > 0.5)
    finally:
        await client.close()
        await srv.aclose()
    assert not srv.sessions


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
        assert client.hello is not None and client.hello["emotion"] == "auto"  # the default
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


async def test_a_session_the_measured_load_cannot_carry_is_refused_with_busy(avatar: Avatar) -> None:
    from stream_avatar.server.admission import available_cores

    # One session is taken to need 0.6 of the cores; two would pass the budget (0.8 of them).
    srv = make_server(
        avatar, max_sessions=8, measured_admission=True, prior_session_cores=0.6 * available_cores()
    )
    await srv.start()
    try:
        url = srv.url.replace("http", "ws") + "/ws"
        async with websockets.connect(url) as ws:  # the first is always let in
            assert json.loads(await ws.recv())["type"] == "hello"
            with pytest.raises(websockets.InvalidStatus) as exc:
                await websockets.connect(url)
            response = exc.value.response
            assert response.status_code == 503
            body = json.loads(response.body)
            assert body["type"] == "error" and body["code"] == "busy"
            assert "cannot carry another session" in body["message"], body
            assert srv.admission.refused == 1
            status, _, raw = await asyncio.to_thread(_get, srv.url + "/status")
            report = json.loads(raw)
            assert status == 200 and report["accepting"] is False, report
            assert "cannot carry another session" in report["reason"] and report["sessions"] == 1
        # Gone: the next one is let in again.
        assert await wait_for(lambda: not srv.sessions)
        status, _, raw = await asyncio.to_thread(_get, srv.url + "/status")
        assert json.loads(raw)["accepting"] is True
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
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


def test_watch_names_a_stream_by_id_or_whip_name() -> None:
    """`watch` takes a session's or PCM stream's id and a WHIP stream's name; nothing else gets through."""
    sdp = "v=0\r\n"
    for name in ("0123456789ab", "studio-1", "Webinar_2026", "x" * 64):
        assert protocol.parse(json.dumps({"type": "offer", "sdp": sdp, "watch": name}))["watch"] == name
    for bad in ("", "../etc", "a b", "x" * 65, "名前", "studio-1\n", 12):
        with pytest.raises(protocol.ProtocolError) as err:
            protocol.parse(json.dumps({"type": "offer", "sdp": sdp, "watch": bad}))
        assert err.value.code == "bad_field"

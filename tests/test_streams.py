"""Streams and viewers: PCM ingest over ``/pcm`` (TTS-like bursts and paced input), barge-in with the
played duration, watch-only viewers of a PCM stream and of a presenter's session, and their ends.

The server runs in the test's event loop with the real engine (as in test_server.py); the publisher
is ``stream_avatar.server.client.PcmPublisher``, viewers are ``AvatarClient(watch=...)``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import websockets

from stream_avatar.audio.resample import resample
from stream_avatar.avatar.store import Avatar
from stream_avatar.server import stream as stream_mod
from stream_avatar.server.app import AvatarServer
from stream_avatar.server.client import AvatarClient, PcmPublisher, PcmSource
from tests.conftest import SpeechBursts
from tests.test_server import RATE, SIZE, _running, engine_threads, make_server, session_tasks, wait_for

TTS_RATE = 24000  # what TTS services commonly send


@pytest.fixture(scope="module")
def avatar(default_avatar: Callable[[int], Avatar]) -> Avatar:
    return default_avatar(SIZE)


@pytest.fixture
async def server(avatar: Avatar) -> AsyncIterator[AvatarServer]:
    async for srv in _running(make_server(avatar, emotion="neutral")):
        yield srv
    assert not srv.streams


def stream_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("stream-")]


def envelope(x: np.ndarray, rate: int) -> np.ndarray:
    hop = rate // 100
    n = x.size // hop
    return np.log(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-8)


async def test_bursty_pcm_plays_at_real_time_to_a_watch_only_viewer(
    server: AvatarServer, speech_bursts: SpeechBursts
) -> None:
    """A TTS-like burst (the whole utterance at once) plays at real time; a viewer without a
    microphone sees the lips move with it and hears it; the events bracket its playback."""
    speech = resample(speech_bursts.samples, speech_bursts.sample_rate_hz, TTS_RATE)
    duration_s = speech.size / TTS_RATE
    publisher = PcmPublisher(server.url)
    hello = await publisher.connect()
    assert hello["watch"] == f"/?watch={publisher.stream}" and TTS_RATE in hello["sample_rates"]
    viewer = AvatarClient(server.url, None, watch=publisher.stream)
    try:
        await viewer.connect()
        await asyncio.sleep(0.5)
        sent = await publisher.say(speech, TTS_RATE, "greeting")
        t_start, _ = await publisher.next_event("playback_started", id="greeting")
        await publisher.next_event("speaking")
        t_end, finished = await publisher.next_event(
            "playback_finished", timeout_s=duration_s + 5, id="greeting"
        )
        await publisher.next_event("idle", after=t_end - 0.1)
        await asyncio.sleep(0.3)
        rec = viewer.received
    finally:
        await viewer.close()
        await publisher.close()
    assert t_start - sent < 0.3, f"playback started {t_start - sent:.2f} s after the burst"
    # Real time: not dumped at once, not slower.
    assert abs((t_end - t_start) - duration_s) < 0.35, f"{t_end - t_start:.2f} s for {duration_s:.2f} s"
    assert not finished["interrupted"] and abs(finished["played_ms"] - finished["duration_ms"]) < 1.0
    assert abs(finished["duration_ms"] - 1000 * duration_s) < 5.0

    # The viewer got video at the stream's rate and the rig channel.
    arrivals = np.array([t for t, _, _ in rec.video])
    steady = arrivals[(arrivals > t_start) & (arrivals < t_end)]
    fps = (steady.size - 1) / (steady[-1] - steady[0])
    assert abs(fps - 25) <= 2.5, f"viewer received {fps:.1f} fps"
    rig_t = np.array([t for t, _ in rec.rig])
    jaw = np.array([m["rig"]["jawOpen"] for _, m in rec.rig])
    assert rig_t.size > 50

    # Lips move with the PCM: open in the bursts, shut in the pauses (placed from playback_started,
    # which comes with the frame carrying the first sample: up to one frame, 40 ms, before it plays;
    # the lips lead the sound by up to 80 ms: the driver's lookahead and coarticulation).
    scale = 1.0 / speech_bursts.sample_rate_hz
    frame = 0.04
    in_speech, in_silence = [], []
    for (a, b), (_, next_a) in zip(speech_bursts.bursts, speech_bursts.silences[1:], strict=True):
        in_speech += jaw[(rig_t > t_start + a * scale + 0.2) & (rig_t < t_start + b * scale)].tolist()
        in_silence += jaw[
            (rig_t > t_start + b * scale + 0.45) & (rig_t < t_start + next_a * scale - 0.1 - frame)
        ].tolist()
    assert len(in_speech) > 30 and len(in_silence) > 10
    assert np.mean(in_speech) > 0.2 and np.max(in_silence) < 0.08, (np.mean(in_speech), np.max(in_silence))

    # The viewer hears the PCM: its 10 ms energy envelope follows the sent one.
    got = np.concatenate([a for t, _, a in rec.audio if t > t_start - 0.2])
    env_got, env_sent = envelope(got, RATE), envelope(resample(speech, TTS_RATE, RATE), RATE)
    n = min(env_got.size, env_sent.size) - 60
    r = max(np.corrcoef(env_got[lag : lag + n], env_sent[:n])[0, 1] for lag in range(0, 60))
    assert r > 0.8, f"viewer audio vs sent PCM r = {r:.2f}"


async def test_paced_pcm_and_barge_in_report_the_played_duration(server: AvatarServer) -> None:
    rng = np.random.default_rng(0)
    # 6 s of "speech": noise bursts at syllable rate, paced like a streaming TTS (20 ms per message).
    t = np.arange(6 * 16000) / 16000
    speech = (rng.standard_normal(t.size) * 0.2 * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.float32)
    publisher = PcmPublisher(server.url)
    await publisher.connect()
    viewer = AvatarClient(server.url, None, watch=publisher.stream)
    try:
        await viewer.connect()
        await asyncio.sleep(0.3)
        say = asyncio.ensure_future(publisher.say(speech, 16000, "long", paced=True))
        t_start, _ = await publisher.next_event("playback_started", id="long")
        await asyncio.sleep(1.5)
        t_clear = await publisher.clear()
        t_finished, finished = await publisher.next_event("playback_finished", id="long")
        t_cleared, cleared = await publisher.next_event("cleared")
        assert t_finished <= t_cleared  # every interrupted utterance is reported before the reply
        await publisher.next_event("idle", after=t_clear)
        errors_after_clear = asyncio.ensure_future(
            publisher.next_event("error", after=t_clear, timeout_s=1.0, code="no_utterance")
        )
        say.cancel()
        await asyncio.gather(say, return_exceptions=True)
        await asyncio.gather(errors_after_clear, return_exceptions=True)
        # The stream goes on: the next utterance plays in full.
        await publisher.say(np.zeros(8000, np.float32) + 0.0, 8000, "next")
        _, nxt = await publisher.next_event("playback_finished", id="next", timeout_s=5)
        await asyncio.sleep(0.3)
        rec = viewer.received
    finally:
        await viewer.close()
        await publisher.close()
    assert finished["interrupted"] and finished["duration_ms"] < 6000
    played_s = finished["played_ms"] / 1000
    assert abs(played_s - (t_clear - t_start)) < 0.2, (
        f"played {played_s:.2f} s, cleared after {t_clear - t_start:.2f}"
    )
    assert cleared["dropped_ms"] >= 0
    assert not nxt["interrupted"] and nxt["played_ms"] == pytest.approx(1000.0, abs=1.0)
    # At the viewer: the mouth is at rest and the audio silent shortly after the clear.
    after = [(ta, m["rig"]["jawOpen"]) for ta, m in rec.rig if ta > t_clear]
    closed_at = next(ta for ta, j in after if j < 0.05)
    assert closed_at - t_clear < 0.25, f"mouth closed {1000 * (closed_at - t_clear):.0f} ms after clear"
    loud = [
        ta for ta, _, a in rec.audio if t_clear + 0.25 < ta < t_clear + 1.0 and np.sqrt(np.mean(a**2)) > 0.02
    ]
    assert not loud, f"{len(loud)} audible packets at the viewer 250 ms+ after clear"


async def test_pcm_errors_are_answered_and_the_stream_survives(server: AvatarServer) -> None:
    publisher = PcmPublisher(server.url)
    await publisher.connect()
    try:
        ws = publisher._ws
        cases: list[tuple[str | bytes, str]] = [
            (b"\x00\x01", "no_utterance"),
            ("not json", "bad_json"),
            ('{"type": "shout"}', "unknown_type"),
            ('{"type": "utterance", "sample_rate": 12345}', "bad_field"),
            ('{"type": "utterance", "sample_rate": 16000, "id": "../x"}', "bad_field"),
        ]
        for raw, code in cases:
            t = time.monotonic()
            await ws.send(raw)
            _, err = await publisher.next_event("error", after=t, timeout_s=3)
            assert err["code"] == code, (raw, err)
        await ws.send(json.dumps({"type": "utterance", "sample_rate": 8000}))
        for raw, code in [
            (b"\x00\x01\x02", "bad_pcm"),
            (np.zeros(int(8000 * (stream_mod.MAX_BUFFERED_S + 1)), "<i2").tobytes(), "too_much_audio"),
        ]:
            t = time.monotonic()
            await ws.send(raw)
            _, err = await publisher.next_event("error", after=t, timeout_s=3)
            assert err["code"] == code, err
        t = time.monotonic()
        await publisher.send({"type": "ping", "t": 7})
        _, pong = await publisher.next_event("pong", after=t)
        assert pong["t"] == 7
    finally:
        await publisher.close()
    assert await wait_for(lambda: not server.streams and not stream_tasks() and not engine_threads())


async def test_an_idle_pcm_stream_has_every_frame_ready_at_its_tick(server: AvatarServer) -> None:
    """Between utterances the stream feeds silence ahead of its clock like speech: idle frames are made
    before their ticks (fed only when a tick had starved, every other idle tick was a late one)."""
    publisher = PcmPublisher(server.url)
    await publisher.connect()
    viewer = AvatarClient(server.url, None, watch=publisher.stream)
    try:
        await viewer.connect()
        assert await wait_for(lambda: len(viewer.received.video) > 10)
        assert await wait_for(
            lambda: sum(1 for _, m in publisher.events if m.get("type") == "stats") >= 3, 10.0
        )
        stats = [m for _, m in publisher.events if m.get("type") == "stats"][-1]
        assert stats["frames_sent"] >= 50, stats
        # Before, about half; now none but what a loaded machine costs now and then.
        assert stats["late_frames"] <= 0.1 * stats["frames_sent"], stats
        rigs = [m for _, m in viewer.received.rig]
        assert rigs and sum(bool(m["late"]) for m in rigs) <= 0.1 * len(rigs)
    finally:
        await viewer.close()
        await publisher.close()


async def test_viewers_of_a_presenter_and_the_end_of_a_stream(server: AvatarServer) -> None:
    """A presenter's mic session can be watched; an unknown stream is refused; when a stream ends,
    its viewers are told and everything of both is gone."""
    presenter = AvatarClient(server.url, PcmSource(np.zeros(RATE * 8, np.float32)))
    await presenter.connect()
    assert presenter.hello is not None
    stray = AvatarClient(server.url, None, watch="0123456789ab")
    try:
        with pytest.raises(RuntimeError, match="unknown_stream"):
            await stray.connect()
    finally:
        await stray.close()
    viewer = AvatarClient(server.url, None, watch=presenter.hello["session"])
    try:
        await viewer.connect()
        assert await wait_for(lambda: len(viewer.received.video) > 20 and len(viewer.received.rig) > 20)
        # The PCM stream: its viewer hears of its end when the publisher goes away.
        publisher = PcmPublisher(server.url)
        await publisher.connect()
        pcm_viewer = AvatarClient(server.url, None, watch=publisher.stream)
        await pcm_viewer.connect()
        assert await wait_for(lambda: len(pcm_viewer.received.video) > 10)
        await publisher.close()
        ended = await pcm_viewer.reply("stream_ended")
        assert ended["type"] == "stream_ended" and ended["stream"] == publisher.stream
        await pcm_viewer.close()
        # The presenter leaves: its viewer is told too.
        await presenter.close()
        ended = await viewer.reply("stream_ended")
        assert ended["type"] == "stream_ended"
    finally:
        await viewer.close()
        await presenter.close()
    assert await wait_for(
        lambda: (
            not server.sessions
            and not server.streams
            and not session_tasks()
            and not stream_tasks()
            and not engine_threads()
        )
    )


async def test_a_pcm_stream_is_admitted_like_a_session_and_viewers_by_their_own_cap(avatar: Avatar) -> None:
    srv = make_server(avatar, max_sessions=1)
    async for server in _running(srv):
        publisher = PcmPublisher(server.url)
        await publisher.connect()
        viewer = AvatarClient(server.url, None, watch=publisher.stream)
        try:
            url = server.url.replace("http", "ws")
            with pytest.raises(websockets.InvalidStatus) as exc:  # a second stream: over max_sessions
                await websockets.connect(url + "/pcm")
            assert exc.value.response.status_code == 503
            assert json.loads(exc.value.response.body)["code"] == "busy"
            await viewer.connect()  # a viewer is not a session: let in
            assert await wait_for(lambda v=viewer: len(v.received.video) > 5)
            raw = await asyncio.to_thread(
                lambda u=server.url: urllib.request.urlopen(u + "/status", timeout=5).read()
            )
            status = json.loads(raw)
            assert status["viewers"] == 1 and status["streams"] == 1 and not status["accepting"]
            assert status["accepting_viewers"]
            # Admitted as a viewer, a connection cannot become a presenter.
            async with websockets.connect(url + f"/ws?watch={publisher.stream}") as ws:
                await ws.recv()
                assert viewer.pc is not None
                await ws.send(json.dumps({"type": "offer", "sdp": viewer.pc.localDescription.sdp}))
                err = json.loads(await ws.recv())
                assert err["code"] == "bad_offer" and "viewer" in err["message"]
        finally:
            await viewer.close()
            await publisher.close()


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _RecordingEngine:
    """What PcmStream's feeder needs of an engine: push_audio (recorded) and the dropped-audio count."""

    audio_dropped_s = 0.0

    def __init__(self) -> None:
        self.fed: list[np.ndarray] = []

    def push_audio(self, samples: np.ndarray, rate: int) -> None:
        assert rate == 16000
        self.fed.append(np.array(samples, np.float32))


def test_a_stalled_paced_sender_gets_its_latency_back_in_the_next_pauses() -> None:
    """Paced PCM (20 ms messages) whose sender stalls 250 ms mid-utterance and then catches up: the
    silence fed during the stall is owed, and quiet blocks of the following pauses are skipped until
    it is made up: the backlog drains, every loud sample is still fed, in order, and a pause keeps at
    least KEEP_PAUSE_S. Without a stall nothing is skipped."""
    clock = _Clock()

    async def no_engine(avatar: str) -> Any:
        raise AssertionError("not started here")

    stream = stream_mod.PcmStream(
        lambda message: asyncio.sleep(0),
        no_engine,
        fps=25,
        size=64,
        latency_budget_ms=80,
        emotion="neutral",
        avatar_id="default",
        clock=clock,
    )
    engine = _RecordingEngine()
    stream.engine = engine  # type: ignore[assignment]
    stream._due = clock.t
    rng = np.random.default_rng(0)
    # 300 ms "syllables" at -10 dBFS, 500 ms pauses of -60 dBFS room noise, eight times.
    loud = rng.standard_normal(4800) * 0.3
    quiet = rng.standard_normal(8000) * 0.001
    audio = np.concatenate([np.concatenate([loud, quiet]) for _ in range(8)])
    pcm = np.clip(np.rint(audio * 32767), -32768, 32767).astype(np.int16)
    stream._on_utterance(16000, "u")
    utt = stream._open
    assert utt is not None
    step = 320  # 20 ms
    stall = range(int(2.4 * 16000) // step, int(2.65 * 16000) // step)  # 250 ms inside a pause
    backlog_after_stall = None
    for i, start in enumerate(range(0, pcm.size, step)):
        for _ in range(2):  # the feeder runs every 10 ms
            clock.t += 0.01
            stream._feed()
        if i in stall:
            continue
        if i == stall.stop:  # the sender catches up: everything it missed at once
            for j in stall:
                stream._on_pcm(pcm[j * step : (j + 1) * step])
            backlog_after_stall = stream._buffered
        stream._on_pcm(pcm[start : start + step])
        if i == stall.start - 1:
            assert utt.skipped == 0 and stream._debt == 0  # no underrun yet: nothing skipped
    assert backlog_after_stall is not None and backlog_after_stall > 0.1 * 16000
    owed = utt.skipped + stream._debt
    assert 0.1 * 16000 < owed < 0.3 * 16000, owed  # the silence fed during the stall
    assert stream._debt == 0 and stream._buffered <= step, (stream._debt, stream._buffered)
    assert stream._skipped_total == utt.skipped
    # The played duration counts the utterance's own audio: at the end of the fed timeline, all of
    # it (the silence of the stall not, the skipped pause blocks yes).
    assert utt.played_ms(stream._fed) == pytest.approx(1000.0 * utt.samples / 16000, abs=0.1)
    assert stream._fed - utt.start < utt.samples  # the timeline itself is shorter: the debt was paid
    # Every loud sample was fed, in order; only pause blocks were skipped.
    fed = np.concatenate(engine.fed)
    norm = pcm.astype(np.float32) / 32768.0
    loud_fed = fed[np.abs(fed) > 0.02]
    loud_sent = norm[np.abs(norm) > 0.02]
    assert np.array_equal(loud_fed, loud_sent)
    # The pause after the stall kept at least KEEP_PAUSE_S: no loud sample follows another loud one
    # across a shortened pause with less than that between them.
    runs = np.flatnonzero(np.abs(fed) > 0.02)
    gaps = np.diff(runs)
    assert gaps[gaps > 1600].min() >= stream_mod.KEEP_PAUSE_S * 16000

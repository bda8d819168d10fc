"""AvatarEngine behaviour with fakes: framing, pts, audio pairing, interrupt, bounds, lifecycle."""

from __future__ import annotations

import asyncio
import math
import threading
from fractions import Fraction

import numpy as np
import pytest

from stream_avatar.session.engine import AvatarEngine, EngineClosedError, OutputItem
from tests.fakes import (
    FakeDriver,
    FakeIdle,
    FakeRenderer,
    FakeResampler,
    jaw_from_frame,
    to_int16,
    tone,
)

try:  # the real streaming resampler (helper 1's audio/resample.py) when it is there
    from stream_avatar.audio.resample import StreamResampler as _RealResampler
except ImportError:  # pragma: no cover - only before audio/ lands
    _RealResampler = None  # type: ignore[assignment,misc]

RESAMPLER = _RealResampler if _RealResampler is not None else FakeResampler
FPS = 25
SPF = 16000 // FPS


def make_engine(**kwargs) -> tuple[AvatarEngine, FakeRenderer, FakeDriver]:
    renderer = kwargs.pop("renderer", None) or FakeRenderer()
    driver = FakeDriver(FPS)
    kwargs.setdefault("resampler_factory", RESAMPLER)
    engine = AvatarEngine(renderer, driver, FakeIdle(), fps=FPS, **kwargs)
    return engine, renderer, driver


async def collect(engine: AvatarEngine, limit: int | None = None, timeout: float = 20.0) -> list[OutputItem]:
    async def run() -> list[OutputItem]:
        items: list[OutputItem] = []
        async for item in engine:
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
        return items

    return await asyncio.wait_for(run(), timeout)


def reference_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """The whole signal through one fresh resampler: what streaming must reproduce."""
    if rate == 16000:
        return samples
    rs = RESAMPLER(rate, 16000)
    return np.concatenate([rs.process(samples), rs.flush()])


def random_chunks(samples: np.ndarray, rng: np.random.Generator, max_len: int = 2000) -> list[np.ndarray]:
    cuts = np.cumsum(rng.integers(1, max_len, size=samples.size // 2 + 1))
    cuts = cuts[cuts < samples.size]
    return np.split(samples, cuts)


def assert_contiguous(items: list[OutputItem]) -> None:
    assert [it.pts for it in items] == list(range(len(items)))
    assert all(it.time_base == Fraction(1, FPS) for it in items)
    assert all(it.audio.shape == (SPF,) and it.audio.dtype == np.float32 for it in items)


async def test_frames_pts_and_audio_at_16k() -> None:
    rng = np.random.default_rng(0)
    duration = 1.03
    audio = tone(duration, 16000) * np.float32(0.8)
    engine, _, _ = make_engine()
    async with engine:
        for chunk in random_chunks(audio, rng):
            engine.push_audio(chunk, 16000)
        engine.end_input()
        items = await collect(engine)
    assert len(items) == math.ceil(duration * FPS)
    assert_contiguous(items)
    out = np.concatenate([it.audio for it in items])
    np.testing.assert_array_equal(out[: audio.size], audio)
    assert not out[audio.size :].any()  # the last partial frame is padded with silence
    assert all(it.frame.shape == (32, 32, 3) and it.frame.dtype == np.uint8 for it in items)
    # Each frame shows the rig that came with it.
    for it in items:
        assert jaw_from_frame(it.frame) == pytest.approx(float(it.rig[0]), abs=1 / 255)
    assert engine.stats()["frames_out"] == len(items)


@pytest.mark.parametrize("rate", [44100, 48000])
async def test_push_int16_at_other_rates_from_another_thread(rate: int) -> None:
    rng = np.random.default_rng(rate)
    duration = 0.77
    audio = to_int16(tone(duration, rate, freq_hz=300.0))
    chunks = random_chunks(audio, rng, max_len=3000)
    engine, _, _ = make_engine(max_buffer_s=5.0)
    async with engine:

        def push_all() -> None:
            for c in chunks:
                engine.push_audio(c, rate)

        pusher = threading.Thread(target=push_all)
        pusher.start()
        pusher.join()
        engine.end_input()
        items = await collect(engine)
    ref = reference_16k(audio.astype(np.float32) / 32768.0, rate)
    assert len(items) == math.ceil(ref.size / SPF)
    assert abs(len(items) - math.ceil(duration * FPS)) <= 1
    assert_contiguous(items)
    out = np.concatenate([it.audio for it in items])
    np.testing.assert_allclose(out[: ref.size], ref, atol=1e-5)
    assert not out[ref.size :].any()


async def test_rate_change_mid_stream_rebuilds_resampler() -> None:
    a = tone(0.3, 48000)
    b = tone(0.5, 16000, freq_hz=500.0)
    engine, _, _ = make_engine(max_buffer_s=5.0)
    async with engine:
        engine.push_audio(a, 48000)
        engine.push_audio(b, 16000)
        engine.end_input()
        items = await collect(engine)
    ref = np.concatenate([reference_16k(a, 48000), b])
    out = np.concatenate([it.audio for it in items])
    assert len(items) == math.ceil(ref.size / SPF)
    np.testing.assert_allclose(out[: ref.size], ref, atol=1e-5)


@pytest.mark.parametrize(
    ("pcm", "rate", "match"),
    [
        (np.zeros(10, np.float64), 16000, "int16 or float32"),
        (np.zeros(10, np.int32), 16000, "int16 or float32"),
        (np.zeros((10, 2), np.float32), 16000, "mono"),
        (np.zeros(10, np.float32), 0, "positive"),
        (np.zeros(10, np.float32), -16000, "positive"),
        (np.zeros(10, np.float32), 16000.0, "int"),
        (np.array([0.0, np.nan], np.float32), 16000, "NaN"),
        (np.array([0.0, np.inf], np.float32), 16000, "NaN"),
        ([0.0, 0.1], 16000, "numpy array"),
    ],
)
async def test_bad_input_raises_value_error(pcm: object, rate: object, match: str) -> None:
    engine, _, _ = make_engine()
    with pytest.raises(ValueError, match=match):
        engine.push_audio(pcm, rate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        await engine.feed(pcm, rate)  # type: ignore[arg-type]
    await engine.aclose()


async def test_compute_runs_on_one_worker_thread_not_the_loop() -> None:
    engine, renderer, driver = make_engine()
    async with engine:
        engine.push_audio(tone(0.5, 16000), 16000)
        engine.end_input()
        await collect(engine)
    loop_thread = threading.get_ident()
    assert len(renderer.threads) == 1 and loop_thread not in renderer.threads
    assert driver.threads == renderer.threads


async def test_clear_drops_pending_work_and_mouth_decays() -> None:
    gate = threading.Event()
    renderer = FakeRenderer(gate=gate)
    engine, _, driver = make_engine(renderer=renderer, max_buffer_s=3.0)
    async with engine:
        engine.push_audio(tone(2.0, 16000, amp=0.6), 16000)  # loud: jaw near 1
        # The worker is now inside render() with speech frames, the rest of the speech is queued.
        assert renderer.entered.wait(5.0)
        dropped_s = engine.clear()
        assert dropped_s > 1.5
        gate.set()
        silence = np.zeros(int(0.6 * 16000), np.float32)
        engine.push_audio(silence, 16000)
        engine.end_input()
        items = await collect(engine)
    # Only the silence comes out: no speech frame computed before the interrupt is shown.
    assert len(items) == math.ceil(0.6 * FPS)
    assert_contiguous(items)
    assert not np.concatenate([it.audio for it in items]).any()
    jaws = [jaw_from_frame(it.frame) for it in items]
    assert jaws[0] < 0.5  # decaying from ~1 at the interrupt, not holding the open mouth
    assert max(jaws[4:]) < 0.05
    assert driver.clears == 1
    stats = engine.stats()
    assert stats["clears"] == 1 and stats["frames_discarded"] >= 1
    assert stats["audio_cleared_s"] == pytest.approx(dropped_s, abs=1e-3)


async def test_clear_after_partial_consumption_keeps_pts_contiguous() -> None:
    engine, _, _ = make_engine(max_buffer_s=3.0, max_output_frames=8)
    async with engine:
        engine.push_audio(tone(2.0, 16000), 16000)
        first = await collect(engine, limit=5)
        engine.clear()
        engine.push_audio(np.zeros(int(0.4 * 16000), np.int16), 16000)
        engine.end_input()
        rest = await collect(engine)
    items = first + rest
    assert_contiguous(items)
    assert len(rest) == 10
    assert not np.concatenate([it.audio for it in rest]).any()


async def test_bounded_buffer_drops_oldest_and_counts_it() -> None:
    engine, _, _ = make_engine(max_buffer_s=0.5)
    # Ten 0.1 s chunks, each a distinct constant level, pushed before the worker starts.
    levels = [(i + 1) / 20 for i in range(10)]
    for level in levels:
        engine.push_audio(np.full(1600, level, np.float32), 16000)
    stats = engine.stats()
    assert stats["audio_dropped_s"] == pytest.approx(0.5)
    assert stats["buffered_s"] == pytest.approx(0.5)
    assert stats["audio_in_s"] == pytest.approx(1.0)
    async with engine:
        engine.end_input()
        items = await collect(engine)
    out = np.concatenate([it.audio for it in items])
    np.testing.assert_allclose(out[:8000], np.repeat(levels[5:], 1600), rtol=1e-6)
    assert len(items) == math.ceil(0.5 * FPS)


async def test_single_chunk_longer_than_buffer_keeps_its_newest_part() -> None:
    engine, _, _ = make_engine(max_buffer_s=0.2)
    audio = np.linspace(-1, 1, 16000, dtype=np.float32)
    engine.push_audio(audio, 16000)
    assert engine.stats()["audio_dropped_s"] == pytest.approx(0.8)
    async with engine:
        engine.end_input()
        items = await collect(engine)
    out = np.concatenate([it.audio for it in items])
    np.testing.assert_array_equal(out[:3200], audio[-3200:])


async def test_feed_applies_backpressure_instead_of_dropping() -> None:
    engine, _, _ = make_engine(max_buffer_s=0.2, max_output_frames=2)
    audio = tone(3.0, 48000)

    async def producer() -> None:
        for start in range(0, audio.size, 960):  # 20 ms chunks
            await engine.feed(audio[start : start + 960], 48000)
        await engine.feed(audio[:0], 48000)  # empty chunk is a no-op
        engine.end_input()

    async with engine:
        task = asyncio.create_task(producer())
        items = await collect(engine)
        await task
    assert engine.stats()["audio_dropped_s"] == 0.0
    ref = reference_16k(audio, 48000)
    assert len(items) == math.ceil(ref.size / SPF)
    np.testing.assert_allclose(np.concatenate([it.audio for it in items])[: ref.size], ref, atol=1e-5)


async def test_feed_splits_chunks_larger_than_the_buffer() -> None:
    engine, _, _ = make_engine(max_buffer_s=0.1)
    audio = tone(1.0, 16000)
    async with engine:
        consumer = asyncio.create_task(collect(engine))
        await asyncio.wait_for(engine.feed(audio, 16000), 10.0)
        engine.end_input()
        items = await consumer
    assert len(items) == 25
    np.testing.assert_array_equal(np.concatenate([it.audio for it in items]), audio)


async def test_end_input_without_audio_ends_iteration() -> None:
    engine, _, _ = make_engine()
    async with engine:
        engine.end_input()
        assert await collect(engine) == []
        with pytest.raises(EngineClosedError):
            engine.push_audio(np.zeros(10, np.float32), 16000)


def _engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "avatar-engine-worker"]


async def test_aclose_is_idempotent_and_leaves_nothing_running() -> None:
    before = set(asyncio.all_tasks())
    engine, _, _ = make_engine(max_output_frames=2)
    engine.start()
    engine.start()  # idempotent
    engine.push_audio(tone(1.0, 16000), 16000)
    # A consumer blocked waiting for frames must be released by aclose().
    first = await collect(engine, limit=1)
    assert len(first) == 1

    async def wait_forever() -> list[OutputItem]:
        return [item async for item in engine]

    for _ in range(500):  # the worker is now blocked on the full output queue
        if engine.stats()["output_frames"] == 2:
            break
        await asyncio.sleep(0.01)
    engine.clear()  # nothing left: the consumer below waits for audio that never comes
    consumer = asyncio.create_task(wait_forever())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(engine.aclose(), 5.0)
    await asyncio.wait_for(engine.aclose(), 5.0)
    assert await asyncio.wait_for(consumer, 5.0) == []
    assert not _engine_threads()
    assert set(asyncio.all_tasks()) == before
    with pytest.raises(EngineClosedError):
        engine.push_audio(np.zeros(10, np.float32), 16000)
    with pytest.raises(EngineClosedError):
        await engine.feed(np.zeros(10, np.float32), 16000)


async def test_aclose_while_worker_blocked_on_full_output() -> None:
    engine, _, _ = make_engine(max_output_frames=1)
    async with engine:
        engine.push_audio(tone(1.0, 16000), 16000)
        for _ in range(500):
            if engine.stats()["output_frames"] == 1 and engine.stats()["frames_computed"] >= 2:
                break
            await asyncio.sleep(0.01)
    assert not _engine_threads()


async def test_aclose_without_start() -> None:
    engine, _, _ = make_engine()
    await engine.aclose()
    await engine.aclose()
    assert await collect(engine) == []


class _BrokenRenderer(FakeRenderer):
    def render(self, rig: np.ndarray) -> np.ndarray:
        raise RuntimeError("renderer exploded")


async def test_worker_error_reaches_the_consumer() -> None:
    engine, _, _ = make_engine(renderer=_BrokenRenderer())
    async with engine:
        engine.push_audio(tone(0.2, 16000), 16000)
        with pytest.raises(RuntimeError, match="renderer exploded"):
            await collect(engine)
        with pytest.raises(EngineClosedError):
            engine.push_audio(tone(0.2, 16000), 16000)
    assert not _engine_threads()


async def test_stats_report_latency_percentiles() -> None:
    engine, _, _ = make_engine()
    async with engine:
        engine.push_audio(tone(0.4, 16000), 16000)
        engine.end_input()
        await collect(engine)
        stats = engine.stats()
    assert stats["frames_out"] == stats["frames_computed"] == 10
    assert 0 <= stats["render_ms_p50"] <= stats["compute_ms_p50"] <= stats["compute_ms_p95"]
    assert stats["rtf"] > 0

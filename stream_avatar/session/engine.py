"""The streaming engine: push audio in, iterate video frames with their paired audio out.

This is the small interface that the server, the offline renderer, tests and benchmarks use
(STYLE §3). Time is audio time: every ``16000 / fps`` samples of 16 kHz input make one frame
(640 samples = 40 ms at 25 fps), so a frame's audio and its mouth come from the same samples.

Threads: the caller's event loop only moves small buffers and wakes waiters. All compute
(resampling, the motion driver, idle motion and the renderer) runs in ONE worker thread owned by
the engine, because the driver and renderer keep per-stream state and are not thread-safe; results
come back to the loop with ``loop.call_soon_threadsafe``.

Queues (all bounded):
  input   raw audio, at most ``max_buffer_s`` seconds. ``push_audio`` (live) drops the OLDEST audio
          when full and counts it; ``feed`` (offline, TTS) waits for room instead.
  output  at most ``max_output_frames`` finished frames. When the consumer is slow the worker
          blocks on it, the input buffer fills and live input starts dropping.

``clear()`` is the interrupt: out of band, it empties both queues at once, tells the worker to
reset its stream state (``driver.clear()``, resampler and partial-frame buffers) and discards any
frame still being computed, so nothing spoken before the interrupt is shown after it. Idle motion
keeps running so the face decays to rest instead of snapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from stream_avatar.motion import rig as rig_mod

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
# Rates outside this range are almost certainly a caller bug (samples passed as the rate, ms for Hz).
MIN_RATE_HZ = 4000
MAX_RATE_HZ = 192000  # same range as audio.resample.StreamResampler
RESAMPLER_LEAD_SAMPLES = 32  # 2 ms at 16 kHz: covers libswresample's hold-back from 8..192 kHz input
_STATS_WINDOW = 250  # frames kept for the latency percentiles (10 s at 25 fps)
_BEHIND_LOG_INTERVAL_S = 5.0


# ----------------------------------------------------------------------------------------- protocols


class MotionFrameLike(Protocol):
    """One video frame of motion from a driver."""

    @property
    def rig(self) -> np.ndarray:  # (RIG_SIZE,) float32
        ...

    @property
    def speaking(self) -> bool: ...


class Driver(Protocol):
    """Audio-to-motion driver: ``push`` 16 kHz float32 samples, get one MotionFrame per completed frame."""

    def push(self, samples: np.ndarray) -> Sequence[MotionFrameLike]: ...

    def clear(self) -> None: ...


class Idle(Protocol):
    """Additive idle motion (blinks, breathing, sway): one rig vector per video frame."""

    def next(self, speaking: bool) -> np.ndarray: ...


class Emotion(Protocol):
    """The stream's expression layer (``stream_avatar.emotion.facs.EmotionLayer``)."""

    @property
    def weights(self) -> dict[str, float]: ...

    def set(self, weights: Mapping[str, float]) -> None: ...

    def apply(self, rig: np.ndarray) -> np.ndarray: ...


class EmotionEstimator(Protocol):
    """The voice's emotion, causally (``stream_avatar.emotion.inference.EmotionStream``): ``push``
    16 kHz samples → the estimate in force at each completed frame (``probs`` over EMOTIONS,
    ``weights()`` for the FACS layer, ``motion_vector()`` for the driver)."""

    def push(self, samples: np.ndarray) -> Sequence[Any]: ...


class Renderer(Protocol):
    """``render(rigs (B, RIG_SIZE) float32) -> (B, H, W, 3) uint8``."""

    def render(self, rig: np.ndarray) -> np.ndarray: ...


class Disclosure(Protocol):
    """The visible "AI-generated" label (``stream_avatar.provenance.disclosure.DisclosureBadge``)."""

    def apply(self, frames: np.ndarray) -> np.ndarray: ...  # (B, H, W, 3) uint8, in place when writable


class Watermark(Protocol):
    """The invisible mark (``stream_avatar.provenance.watermark.Watermarker``)."""

    def set_timestamp(self, timestamp_s: float) -> None: ...

    def set_avatar(self, avatar_id: str) -> None: ...

    def mark(self, frame_rgb: np.ndarray) -> np.ndarray: ...  # (H, W, 3) uint8 -> a marked copy


class Resampler(Protocol):
    """Causal streaming resampler to 16 kHz (``stream_avatar.audio.resample.StreamResampler``)."""

    def process(self, chunk: np.ndarray) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...


ResamplerFactory = Callable[[int, int], Resampler]


def _default_resampler(in_rate_hz: int, out_rate_hz: int) -> Resampler:
    from stream_avatar.audio.resample import StreamResampler

    return StreamResampler(in_rate_hz, out_rate_hz)


def _default_combine(driver_rig: np.ndarray, idle_rig: np.ndarray) -> np.ndarray:
    # Same rule as stream_avatar.motion.idle.combine: additive, then clamped to the rig's ranges.
    return rig_mod.clamp(np.asarray(driver_rig, np.float32) + np.asarray(idle_rig, np.float32))


# ------------------------------------------------------------------------------------------- output


@dataclass(frozen=True, eq=False)
class OutputItem:
    """One video frame and the audio it belongs to.

    index: running number of frames the engine has computed since start (skips frames that
      ``clear()`` discarded; for logs and debugging).
    pts: presentation time in ``time_base`` units (1/fps). Contiguous over everything the consumer
      receives: 0, 1, 2, ... even across ``clear()``.
    frame: (H, W, 3) uint8 RGB.
    audio: (16000 / fps,) float32 mono in [-1, 1] at 16 kHz: exactly the samples this frame's motion
      was computed from (the last frame after ``end_input`` is zero-padded).
    rig: (RIG_SIZE,) float32, the rig that was rendered (driver + idle, clamped).
    speaking: the driver's voice-activity decision for this frame.
    emotion: per-emotion probabilities shown by this frame (``facs.EMOTIONS`` → p, summing to 1):
      the emotion model's estimate while the spec has ``auto``, else the operator's emotion.
    """

    index: int
    pts: int
    time_base: Fraction
    frame: np.ndarray
    audio: np.ndarray
    rig: np.ndarray
    speaking: bool
    emotion: dict[str, float] | None = None

    @property
    def time_s(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)


@dataclass
class _Computed:
    index: int
    frame: np.ndarray
    audio: np.ndarray
    rig: np.ndarray
    speaking: bool
    emotion: dict[str, float] | None = None


def validate_pcm(pcm: Any, sample_rate_hz: Any) -> tuple[np.ndarray, int]:
    """Check one chunk of mono PCM and return it as float32 in [-1, 1] with its rate.

    pcm: (n,) int16 (full scale 32768) or float32 (full scale 1.0); (n, 1) is accepted as mono.
    sample_rate_hz: positive int (MIN_RATE_HZ..MAX_RATE_HZ).
    Raises ValueError with a one-line reason otherwise.
    """
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, (int, np.integer)):
        raise ValueError(f"sample_rate_hz must be an int, got {type(sample_rate_hz).__name__}")
    rate = int(sample_rate_hz)
    if rate <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {rate}")
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise ValueError(f"sample_rate_hz must lie in {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz, got {rate}")
    if not isinstance(pcm, np.ndarray):
        raise ValueError(f"pcm must be a numpy array, got {type(pcm).__name__}")
    if pcm.ndim == 2 and pcm.shape[1] == 1:
        pcm = pcm[:, 0]
    if pcm.ndim != 1:
        raise ValueError(f"pcm must be mono with shape (n,) or (n, 1), got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0, rate
    if pcm.dtype == np.float32:
        if not np.isfinite(pcm).all():
            raise ValueError("pcm contains NaN or infinite samples")
        # Slight overs from gain stages are clipped; samples must be in [-1, 1] downstream.
        return np.clip(pcm, -1.0, 1.0), rate
    raise ValueError(f"pcm must be int16 or float32, got {pcm.dtype}")


class EngineClosedError(RuntimeError):
    """The engine was closed (or its input ended) and accepts no more audio."""


# ------------------------------------------------------------------------------------------- engine


class AvatarEngine:
    """Audio in, (frame, audio, rig) out, at ``fps`` frames per second of audio time.

    Usage::

        engine = AvatarEngine(renderer, driver, idle)
        async with engine:                      # start() ... aclose()
            engine.push_audio(pcm_int16, 48000)  # any chunk size and rate, from any thread
            engine.end_input()
            async for item in engine:            # OutputItem, pts 0, 1, 2, ... (time base 1/fps)
                ...

    renderer: ``render(rigs (B, RIG_SIZE) float32) -> (B, H, W, 3) uint8`` (RendererWrapper).
    driver: ``push(samples16k float32) -> [MotionFrame]``, ``clear()``; optionally ``flush()``
      for drivers with lookahead, called once after ``end_input``.
    idle: ``next(speaking) -> (RIG_SIZE,)`` additive idle motion.
    fps: video frame rate; must divide 16000.
    max_buffer_s: bound of the live input buffer (seconds of audio not yet taken by the worker).
    max_output_frames: bound of the finished-frame queue.
    max_batch: most frames rendered in one renderer call (only reached when the worker is behind,
      so it adds no latency when keeping up).
    resampler_factory: ``(in_rate_hz, 16000) -> Resampler``; default StreamResampler.
    combine: ``(driver_rig, idle_rig) -> rig``; default clamp(driver + idle).
    warn_when_behind: log a warning (at most every 5 s) when compute is slower than real time.
      Off for offline rendering, where that is expected.
    emotion: the stream's emotion layer (``stream_avatar.emotion.facs.EmotionLayer``), blended into
      every frame's rig after driver + idle; None: a neutral one. ``set_emotion`` changes its spec.
    emotion_estimator: infers the emotion from the voice (``EmotionStream``), used while the spec has
      ``auto``: its estimate feeds the emotion layer and the driver's emotion input (``set_emotion``
      of drivers that have one). None: ``auto`` shows neutral.
    packet_lead: live input in packets (WebRTC): start each resampled stream with 2 ms of silence so
      a frame completes with the packet carrying its last sample (saves up to one packet of latency;
      audio and video shift together, so sync is unchanged). Off by default: exact sample alignment.
    disclosure: composited into every rendered frame before it leaves the engine (the visible
      "AI-generated" badge); kept across ``set_renderer``. None here (fakes, tests); ``build_engine``
      gives the real engines the configured badge, on by default.
    watermark: the invisible mark stamped into every frame after the badge, with the wall-clock time
      of the batch (None here; ``build_engine`` gives real engines one for their avatar, on by default).
    """

    def __init__(
        self,
        renderer: Renderer,
        driver: Driver,
        idle: Idle,
        *,
        fps: int = 25,
        max_buffer_s: float = 2.0,
        max_output_frames: int = 25,
        max_batch: int = 4,
        resampler_factory: ResamplerFactory | None = None,
        combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        warn_when_behind: bool = True,
        packet_lead: bool = False,
        emotion: Emotion | None = None,
        emotion_estimator: EmotionEstimator | None = None,
        disclosure: Disclosure | None = None,
        watermark: Watermark | None = None,
    ) -> None:
        if not 1 <= fps <= 60 or SAMPLE_RATE_HZ % fps:
            raise ValueError(f"fps must divide {SAMPLE_RATE_HZ} and lie in 1..60, got {fps}")
        if not max_buffer_s > 0:
            raise ValueError(f"max_buffer_s must be positive, got {max_buffer_s}")
        if max_output_frames < 1 or max_batch < 1:
            raise ValueError("max_output_frames and max_batch must be >= 1")
        self._renderer = renderer
        self._driver = driver
        self._idle = idle
        self.fps = fps
        self.time_base = Fraction(1, fps)
        self.samples_per_frame = SAMPLE_RATE_HZ // fps
        self.max_buffer_s = float(max_buffer_s)
        self._max_out = max_output_frames
        self._max_batch = max_batch
        self._resampler_factory = resampler_factory or _default_resampler
        self._combine = combine or _default_combine
        self._warn_when_behind = warn_when_behind
        self._packet_lead = packet_lead
        if emotion is None:
            from stream_avatar.emotion.facs import EmotionLayer

            emotion = EmotionLayer(fps)  # neutral: leaves every rig as it is
        self._emotion: Emotion = emotion
        self._estimator = emotion_estimator
        self._disclosure = disclosure
        self._watermark = watermark
        self._mark_avatar: str | None = None  # set by set_renderer; the worker hands it to the mark
        self._marked_avatar: str | None = None

        # Shared state, guarded by _lock. _cond wakes the worker (input, clear, close, output room).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._in: deque[tuple[np.ndarray, int]] = deque()
        self._in_samples: dict[int, int] = {}  # rate -> samples buffered at that rate (exact size)
        self._out: deque[OutputItem] = deque()
        self._epoch = 0  # bumped by clear(); work of an older epoch is discarded
        self._reset_pending = False
        self._ended = False  # end_input() called
        self._finished = False  # worker delivered the last frame after end_input()
        self._closing = False
        self._error: BaseException | None = None
        self._next_pts = 0
        self._consumed_pts = -1

        # Stats (guarded by _lock).
        self._frames_out = 0
        self._frames_computed = 0
        self._frames_discarded = 0
        self._audio_in_s = 0.0
        self._audio_dropped_s = 0.0
        self._audio_cleared_s = 0.0
        self._clears = 0
        self._render_ms: deque[float] = deque(maxlen=_STATS_WINDOW)
        self._compute_ms: deque[float] = deque(maxlen=_STATS_WINDOW)
        self._last_behind_log = -math.inf

        # Worker-only state (touched by the worker thread alone).
        self._rs: Resampler | None = None
        self._rs_rate: int | None = None
        self._pending16k = np.zeros(0, np.float32)
        self._blocks: deque[np.ndarray] = deque()  # audio blocks waiting for their motion frame
        self._block_emotion: deque[Any] = deque()  # the voice's emotion estimate at each block
        self._index = 0

        # Loop-side state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._out_event: asyncio.Event | None = None
        self._room_event: asyncio.Event | None = None
        self._done: asyncio.Future[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker thread; must be called from the event loop that will iterate. Idempotent."""
        if self._thread is not None:
            return
        if self._closed:
            raise EngineClosedError("engine is closed")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._out_event = asyncio.Event()
        self._room_event = asyncio.Event()
        self._done = loop.create_future()
        self._thread = threading.Thread(target=self._run, name="avatar-engine-worker", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        """Stop the worker and wait for it; pending audio and frames are dropped. Idempotent.

        After it returns no engine thread is alive; iteration ends and pushes raise EngineClosedError.
        """
        self._closed = True
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._set_events()
        if self._thread is None:
            return
        if self._done is not None:
            await asyncio.shield(self._done)
        # The worker signals `_done` as its very last step, so this join is immediate.
        self._thread.join()

    async def __aenter__(self) -> AvatarEngine:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def set_renderer(self, renderer: Renderer, avatar_id: str | None = None) -> None:
        """Swap the renderer (e.g. another avatar of the same size); takes effect at the next batch.
        ``avatar_id``: the new avatar's id, which the watermark carries from then on.

        Thread-safe: the worker reads the references once per batch, and an attribute store is atomic.
        """
        self._renderer = renderer
        if avatar_id is not None:
            self._mark_avatar = avatar_id

    def set_emotion(self, weights: Mapping[str, float]) -> None:
        """Change the operator's emotion (validated weights, e.g. from ``emotion.parse``); the face
        eases into it over the next frames. Thread-safe."""
        self._emotion.set(weights)

    @property
    def watermarked(self) -> bool:
        """Whether every frame carries the invisible watermark."""
        return self._watermark is not None

    @property
    def emotion(self) -> dict[str, float]:
        """The operator's current emotion target (empty: neutral)."""
        return self._emotion.weights

    # ---------------------------------------------------------------------------------- input

    def push_audio(self, pcm: np.ndarray, sample_rate_hz: int) -> None:
        """Queue live audio; never blocks. Thread-safe.

        pcm: (n,) int16 or float32 mono, any n (0 is a no-op), any rate (resampled to 16 kHz in the worker).
        When the input buffer would exceed ``max_buffer_s`` the oldest buffered audio is dropped
        (counted in ``stats()["audio_dropped_s"]``).
        Raises ValueError for malformed audio, EngineClosedError after aclose()/end_input().
        """
        samples, rate = validate_pcm(pcm, sample_rate_hz)
        if samples.size == 0:
            return
        with self._cond:
            self._check_open_locked()
            self._append_locked(samples, rate)
            self._cond.notify_all()

    async def feed(self, pcm: np.ndarray, sample_rate_hz: int) -> None:
        """Queue audio, waiting for room instead of dropping (offline rendering, TTS faster than real time).

        Same input contract as ``push_audio``. Starts the engine if needed.
        """
        samples, rate = validate_pcm(pcm, sample_rate_hz)
        self.start()
        assert self._room_event is not None
        # Pieces of at most half the buffer always fit once the worker has taken enough.
        piece = max(1, int(rate * self.max_buffer_s / 2))
        for start in range(0, samples.size, piece):
            chunk = samples[start : start + piece]
            while True:
                self._room_event.clear()
                with self._cond:
                    self._check_open_locked()
                    if self._buffered_s_locked() + chunk.size / rate <= self.max_buffer_s:
                        self._append_locked(chunk, rate)
                        self._cond.notify_all()
                        break
                await self._room_event.wait()

    def end_input(self) -> None:
        """No more audio: the last partial frame is padded with silence, then iteration ends. Idempotent."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def clear(self) -> float:
        """Interrupt: drop buffered audio and frames not yet delivered; the face decays to idle.

        Thread-safe and immediate: queued frames vanish now; the frame being computed is discarded
        when done; the worker calls ``driver.clear()`` before the next audio. pts stay contiguous:
        the next frame delivered follows the last frame the consumer received.
        Returns the seconds of audio dropped (buffered input plus queued frames).
        """
        with self._cond:
            dropped_s = self._buffered_s_locked() + len(self._out) / self.fps
            self._frames_discarded += len(self._out)
            self._in.clear()
            self._in_samples.clear()
            self._out.clear()
            self._epoch += 1
            self._reset_pending = True
            self._next_pts = self._consumed_pts + 1
            self._clears += 1
            self._audio_cleared_s += dropped_s
            self._cond.notify_all()
        self._wake_loop()
        logger.info("engine cleared", extra={"dropped_s": round(dropped_s, 3)})
        return dropped_s

    # --------------------------------------------------------------------------------- output

    def __aiter__(self) -> AvatarEngine:
        if not self._closed:
            self.start()
        return self

    async def __anext__(self) -> OutputItem:
        """Next frame in pts order; StopAsyncIteration after end_input() output or aclose()."""
        if self._closed:
            raise StopAsyncIteration
        self.start()
        assert self._out_event is not None
        while True:
            self._out_event.clear()
            with self._cond:
                if self._closed:
                    raise StopAsyncIteration
                if self._out:
                    item = self._out.popleft()
                    self._consumed_pts = item.pts
                    self._frames_out += 1
                    self._cond.notify_all()  # room for the worker
                    return item
                if self._error is not None:
                    raise self._error
                if self._finished:
                    raise StopAsyncIteration
            await self._out_event.wait()

    @property
    def audio_dropped_s(self) -> float:
        """Seconds of live input dropped so far because the buffer was full (the oldest audio)."""
        return self._audio_dropped_s

    def stats(self) -> dict[str, float]:
        """Counters and latency percentiles (render/compute ms per frame over the last 250 frames).

        frames_out: frames handed to the consumer. frames_computed: frames rendered.
        frames_discarded: rendered or queued frames dropped by clear(). audio_in_s: audio accepted.
        audio_dropped_s: oldest audio dropped because the live buffer was full. audio_cleared_s:
        audio dropped by clear(). buffered_s / output_frames: current queue levels.
        rtf: compute time per frame / frame period (< 1 keeps up with real time).
        """
        with self._lock:
            render = np.asarray(self._render_ms, np.float64)
            compute = np.asarray(self._compute_ms, np.float64)
            out: dict[str, float] = {
                "frames_out": self._frames_out,
                "frames_computed": self._frames_computed,
                "frames_discarded": self._frames_discarded,
                "audio_in_s": round(self._audio_in_s, 4),
                "audio_dropped_s": round(self._audio_dropped_s, 4),
                "audio_cleared_s": round(self._audio_cleared_s, 4),
                "clears": self._clears,
                "buffered_s": round(self._buffered_s_locked(), 4),
                "output_frames": len(self._out),
            }
        for name, values in (("render_ms", render), ("compute_ms", compute)):
            for q in (50, 95):
                out[f"{name}_p{q}"] = round(float(np.percentile(values, q)), 3) if values.size else math.nan
        out["rtf"] = round(float(compute.mean()) * self.fps / 1000.0, 4) if compute.size else math.nan
        return out

    # ------------------------------------------------------------------------- locked helpers

    def _check_open_locked(self) -> None:
        if self._closing:
            raise EngineClosedError("engine is closed")
        if self._ended:
            raise EngineClosedError("end_input() was called; no more audio is accepted")
        if self._error is not None:
            raise EngineClosedError("engine worker failed") from self._error

    def _buffered_s_locked(self) -> float:
        return sum(n / rate for rate, n in self._in_samples.items())

    def _append_locked(self, samples: np.ndarray, rate: int) -> None:
        """Append one chunk; drop the oldest audio beyond max_buffer_s (counted)."""
        self._audio_in_s += samples.size / rate
        keep = int(self.max_buffer_s * rate)
        if samples.size > keep:  # one chunk longer than the whole buffer: keep its newest part
            self._audio_dropped_s += (samples.size - keep) / rate
            samples = samples[samples.size - keep :]
        self._in.append((samples, rate))
        self._in_samples[rate] = self._in_samples.get(rate, 0) + samples.size
        excess = self._buffered_s_locked() - self.max_buffer_s
        while excess > 1e-9 and len(self._in) > 1:
            old, old_rate = self._in[0]
            # The tolerance keeps float error in `excess` from dropping one sample too many.
            n_drop = min(old.size, math.ceil(excess * old_rate - 1e-6))
            if n_drop == old.size:
                self._in.popleft()
            else:
                self._in[0] = (old[n_drop:], old_rate)
            self._in_samples[old_rate] -= n_drop
            self._audio_dropped_s += n_drop / old_rate
            excess -= n_drop / old_rate

    def _take_locked(self, max_s: float) -> list[tuple[np.ndarray, int]]:
        """Pop up to ``max_s`` seconds of buffered audio from the front (chunks may be split)."""
        taken: list[tuple[np.ndarray, int]] = []
        budget = max_s
        while self._in and budget > 0:
            samples, rate = self._in[0]
            n = min(samples.size, max(1, round(budget * rate)))
            if n == samples.size:
                self._in.popleft()
            else:
                self._in[0] = (samples[n:], rate)
            self._in_samples[rate] -= n
            if not self._in_samples[rate]:
                del self._in_samples[rate]
            taken.append((samples[:n], rate))
            budget -= n / rate
        return taken

    # --------------------------------------------------------------------------- loop wakeups

    def _set_events(self) -> None:
        for event in (self._out_event, self._room_event):
            if event is not None:
                event.set()

    def _wake_loop(self) -> None:
        """Wake the consumer and feeders from any thread."""
        loop = self._loop
        if loop is None:
            return
        # The loop may already be closed when a daemon worker outlives it; nobody is waiting then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._set_events)

    # --------------------------------------------------------------------------------- worker

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:
            logger.exception("engine worker failed")
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            self._wake_loop()
            loop, done = self._loop, self._done
            if loop is not None and done is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_set_done, done)

    def _work(self) -> None:
        batch_s = self._max_batch / self.fps
        while True:
            with self._cond:
                while not (
                    self._closing or self._reset_pending or self._in or (self._ended and not self._finished)
                ):
                    self._cond.wait()
                if self._closing:
                    return
                epoch = self._epoch
                reset = self._reset_pending
                self._reset_pending = False
                chunks = self._take_locked(batch_s)
                ending = self._ended and not self._in
            self._wake_loop()  # feeders waiting for room
            if reset:
                self._reset_stream()
            audio16k = self._to_16k(chunks, flush=ending)
            computed = self._compute(audio16k, ending)
            self._deliver(computed, epoch)
            if ending:
                # Pushes raise after end_input(), so nothing can follow: iteration ends when drained.
                with self._cond:
                    self._finished = True
                    self._cond.notify_all()
                self._wake_loop()

    def _reset_stream(self) -> None:
        """Interrupt: forget all per-stream audio state; the driver decays the mouth to rest."""
        self._driver.clear()
        self._rs = None
        self._rs_rate = None
        self._pending16k = np.zeros(0, np.float32)
        self._blocks.clear()
        self._block_emotion.clear()

    def _to_16k(self, chunks: list[tuple[np.ndarray, int]], flush: bool) -> np.ndarray:
        """Resample chunks to 16 kHz; one resampler per input rate, rebuilt when the rate changes."""
        parts: list[np.ndarray] = []
        for samples, rate in chunks:
            if rate != self._rs_rate:
                if self._rs is not None:
                    parts.append(self._rs.flush())
                self._rs = None if rate == SAMPLE_RATE_HZ else self._resampler_factory(rate, SAMPLE_RATE_HZ)
                self._rs_rate = rate
                if self._rs is not None and self._packet_lead:
                    # The resampler holds back ~1 ms (2 ms from 8 kHz) of output until more input comes.
                    # A lead of that much silence shifts the frame grid so a frame completes with the
                    # packet that carries its last sample, not 20 ms later with the next one.
                    parts.append(np.zeros(RESAMPLER_LEAD_SAMPLES, np.float32))
            parts.append(samples if self._rs is None else self._rs.process(samples))
        if flush and self._rs is not None:
            parts.append(self._rs.flush())
        if flush:
            self._rs = None
            self._rs_rate = None
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate([np.asarray(p, np.float32).reshape(-1) for p in parts])

    def _compute(self, audio16k: np.ndarray, ending: bool) -> list[_Computed]:
        """Cut 16 kHz audio into frames, run driver + idle + renderer; returns frames in order."""
        spf = self.samples_per_frame
        pending = np.concatenate([self._pending16k, audio16k]) if self._pending16k.size else audio16k
        if ending and pending.size % spf:
            pending = np.concatenate([pending, np.zeros(spf - pending.size % spf, np.float32)])
        n = pending.size // spf
        self._pending16k = pending[n * spf :].copy()
        if n == 0 and not ending:
            return []
        t0 = time.perf_counter()
        blocks = pending[: n * spf].reshape(n, spf)
        # Drivers get whole frames only; a driver with lookahead may return fewer frames than blocks
        # for now, so audio blocks wait in a FIFO for their motion frame.
        self._blocks.extend(np.array(b, np.float32) for b in blocks)
        if n:
            self._block_emotion.extend(self._estimate(blocks.reshape(-1), n))
        motion = self._push_driver(blocks.reshape(-1)) if n else []
        if ending:
            flush = getattr(self._driver, "flush", None)
            if callable(flush):
                motion.extend(flush())
        if len(motion) > len(self._blocks):
            raise RuntimeError(
                f"driver returned {len(motion)} frames for {len(self._blocks)} frames of audio"
            )
        if not motion:
            return []
        rigs = np.stack(
            [self._combine(np.asarray(m.rig, np.float32), self._idle.next(bool(m.speaking))) for m in motion]
        ).astype(np.float32)
        emotions: list[dict[str, float] | None] = []
        applied = []
        for r in rigs:
            emotions.append(self._frame_emotion())
            applied.append(self._emotion.apply(r))
        rigs = np.stack(applied).astype(np.float32)
        t_motion = time.perf_counter() - t0
        out: list[_Computed] = []
        for b0 in range(0, len(motion), self._max_batch):
            batch = rigs[b0 : b0 + self._max_batch]
            t1 = time.perf_counter()
            frames = np.asarray(self._renderer.render(batch))
            render_s = time.perf_counter() - t1
            if frames.ndim != 4 or frames.shape[0] != len(batch) or frames.shape[3] != 3:
                expected = f"({len(batch)}, H, W, 3)"
                raise RuntimeError(f"renderer returned shape {frames.shape}, expected {expected}")
            if frames.dtype != np.uint8:
                raise RuntimeError(f"renderer returned dtype {frames.dtype}, expected uint8")
            if self._disclosure is not None:
                frames = self._disclosure.apply(frames)
            if self._watermark is not None:
                avatar_id = self._mark_avatar
                if avatar_id is not None and avatar_id != self._marked_avatar:
                    self._watermark.set_avatar(avatar_id)
                    self._marked_avatar = avatar_id
                self._watermark.set_timestamp(time.time())
                frames = np.stack([self._watermark.mark(f) for f in frames])
            per_frame_render_ms = render_s * 1000.0 / len(batch)
            per_frame_compute_ms = per_frame_render_ms + t_motion * 1000.0 / len(motion)
            with self._lock:
                self._render_ms.extend([per_frame_render_ms] * len(batch))
                self._compute_ms.extend([per_frame_compute_ms] * len(batch))
                self._frames_computed += len(batch)
            for i, row in enumerate(batch):
                m = motion[b0 + i]
                out.append(
                    _Computed(
                        self._index,
                        frames[i],
                        self._blocks.popleft(),
                        row,
                        bool(m.speaking),
                        emotions[b0 + i],
                    )
                )
                self._index += 1
        self._maybe_warn_behind()
        return out

    def _push_driver(self, samples: np.ndarray) -> list[Any]:
        """Driver step; first the driver's emotion input follows the stream's emotion (drivers that
        take one): the operator's emotions plus the voice's, weighted as the spec says."""
        set_vector = getattr(self._driver, "set_emotion", None)
        if callable(set_vector):
            set_vector(self._emotion_vector())
        return list(self._driver.push(samples))

    def _estimate(self, samples: np.ndarray, n: int) -> list[Any]:
        """The voice's emotion for ``n`` frames of audio; paid only while the spec has ``auto`` (None
        per frame otherwise: an operator-only stream costs nothing here, and its window refills in
        0.4-2 s after a switch to ``auto``)."""
        from stream_avatar.emotion import facs

        if self._estimator is None or facs.split(self._emotion.weights)[0] <= 0:
            return [None] * n
        return list(self._estimator.push(samples))

    def _emotion_vector(self) -> np.ndarray:
        from stream_avatar.emotion import facs

        w_auto, operator = facs.split(self._emotion.weights)
        v = np.zeros(len(facs.EMOTIONS), np.float32)
        for name, value in operator.items():
            v[facs.EMOTIONS.index(name)] += value
        latest = self._block_emotion[-1] if self._block_emotion else None
        if w_auto > 0 and latest is not None:
            v += w_auto * np.asarray(latest.motion_vector(), np.float32)
        v[0] = 0.0
        return np.clip(v, 0.0, 1.0)

    def _frame_emotion(self) -> dict[str, float] | None:
        """The next frame's emotion: feeds the voice's estimate for it to the layer (while ``auto``)
        and returns the probabilities shown: w·voice + operator intensities + the rest neutral."""
        from stream_avatar.emotion import facs

        est = self._block_emotion.popleft() if self._block_emotion else None
        w_auto, operator = facs.split(self._emotion.weights)
        set_inferred = getattr(self._emotion, "set_inferred", None)
        if est is not None and w_auto > 0 and callable(set_inferred):
            set_inferred(est.weights())
        p = np.zeros(len(facs.EMOTIONS), np.float64)
        for name, value in operator.items():
            p[facs.EMOTIONS.index(name)] += value
        total = p.sum()
        if total > 1.0:
            p /= total
        rest = 1.0 - p.sum()
        if w_auto > 0 and est is not None:
            voice = min(1.0, w_auto / rest) if rest > 0 else 0.0  # split: w_auto <= rest
            p += rest * voice * np.asarray(est.probs, np.float64)
            rest *= 1.0 - voice
        p[0] += rest
        return {name: round(float(x), 4) for name, x in zip(facs.EMOTIONS, p, strict=True)}

    def _deliver(self, computed: list[_Computed], epoch: int) -> None:
        """Hand frames to the consumer, waiting for room; drop them if clear() or aclose() intervened."""
        for k, c in enumerate(computed):
            with self._cond:
                while len(self._out) >= self._max_out and not self._closing and self._epoch == epoch:
                    self._cond.wait()
                if self._closing or self._epoch != epoch:
                    self._frames_discarded += len(computed) - k
                    return
                self._out.append(
                    OutputItem(
                        index=c.index,
                        pts=self._next_pts,
                        time_base=self.time_base,
                        frame=c.frame,
                        audio=c.audio,
                        rig=c.rig,
                        speaking=c.speaking,
                        emotion=c.emotion,
                    )
                )
                self._next_pts += 1
            self._wake_loop()

    def _maybe_warn_behind(self) -> None:
        if not self._warn_when_behind:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last_behind_log < _BEHIND_LOG_INTERVAL_S or len(self._compute_ms) < self.fps:
                return
            mean_ms = float(np.mean(self._compute_ms))
            if mean_ms * self.fps <= 1000.0:
                return
            self._last_behind_log = now
        logger.warning(
            "engine slower than real time",
            extra={"compute_ms": round(mean_ms, 2), "budget_ms": 1000 / self.fps},
        )


def _set_done(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


# ------------------------------------------------------------------------------------ construction

DRIVERS: tuple[str, ...] = ("learned", "dsp")
DEFAULT_DRIVER = "learned"


def make_driver(name: str, fps: int = 25, seed: int = 0) -> Driver:
    """Build an audio-to-motion driver by name (``DRIVERS``). Raises ValueError for unknown names.

    ``learned`` loads the shipped model (``models/motion``) once per process and shares it between
    sessions (the weights are read-only; every driver keeps its own streaming state).
    """
    if name == "learned":
        from stream_avatar.motion.learned import LearnedMouthDriver

        learned: Driver = LearnedMouthDriver(fps=fps, seed=seed, model=_shared_motion_model())
        return learned
    if name == "dsp":
        from stream_avatar.motion.dsp_driver import DSPMouthDriver

        driver: Driver = DSPMouthDriver(fps=fps, seed=seed)
        return driver
    raise ValueError(f"unknown driver {name!r} (known: {', '.join(DRIVERS)})")


_MODEL_LOCK = threading.Lock()
_MODEL: Any = None


def _shared_motion_model() -> Any:
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            from stream_avatar.motion.learned import MotionModel

            _MODEL = MotionModel.load()
        return _MODEL


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA device is usable, else ``"cpu"``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_renderer(avatar: Any, device: str = "auto") -> Any:
    """The renderer for one avatar (the only place outside render/ that knows its class)."""
    from stream_avatar.render.renderer import RendererWrapper

    return RendererWrapper(avatar.tensors, device=resolve_device(device))


def build_engine(
    avatar: Any,
    *,
    driver: str = DEFAULT_DRIVER,
    fps: int = 25,
    max_buffer_s: float = 2.0,
    device: str = "auto",
    seed: int = 0,
    emotion: Mapping[str, float] | None = None,
    infer_emotion: bool = True,
    emotion_prior_neutral: float | None = None,
    disclosure: Any = "default",
    watermark: Any = "default",
    **engine_kwargs: Any,
) -> AvatarEngine:
    """An engine with the real pieces for one avatar (``stream_avatar.avatar.store.Avatar``).

    Renderer: RendererWrapper(avatar.tensors, device); driver by name; IdleLife(fps, seed); an
    EmotionLayer starting at ``emotion`` (weights from ``emotion.parse``, ``auto`` included; None:
    neutral); the shipped emotion model for ``auto`` (``infer_emotion``; 25 fps only, the rate it
    was trained at), reading the voice with ``emotion_prior_neutral`` as the prior share of neutral
    (None: the model's own). ``disclosure``: the visible "AI-generated" badge composited into every frame:
    "default" (the default badge, on), a ``DisclosureBadge`` (built once at the edge from the
    configuration: ``stream_avatar.provenance.disclosure.make_badge``), or None (off; the caller
    logged that choice). ``watermark``: the invisible mark of this instance, the avatar's id and the
    time in every frame after the badge: "default" (on; the instance is the host name) or a
    ``WatermarkConfig`` (off is logged: ``provenance.watermark.make_watermarker``). Extra keyword
    arguments go to AvatarEngine (max_output_frames, max_batch, warn_when_behind).
    """
    from stream_avatar.emotion.facs import EmotionLayer
    from stream_avatar.motion.idle import IdleLife, combine

    estimator = make_emotion_estimator(fps, emotion_prior_neutral) if infer_emotion else None
    if isinstance(disclosure, str):
        if disclosure != "default":
            raise ValueError(f"disclosure must be 'default', a badge or None, got {disclosure!r}")
        from stream_avatar.provenance.disclosure import DisclosureBadge

        disclosure = DisclosureBadge()
    from stream_avatar.provenance.watermark import make_watermarker

    wm_config = None if isinstance(watermark, str) and watermark == "default" else watermark
    marker = make_watermarker(wm_config, str(getattr(avatar, "id", "")))

    return AvatarEngine(
        build_renderer(avatar, device),
        make_driver(driver, fps=fps, seed=seed),
        IdleLife(fps=fps, seed=seed),
        fps=fps,
        max_buffer_s=max_buffer_s,
        combine=combine,
        emotion=EmotionLayer(fps, emotion),
        emotion_estimator=estimator,
        disclosure=disclosure,
        watermark=marker,
        **engine_kwargs,
    )


_EMOTION_MODEL: Any = None


def make_emotion_estimator(fps: int = 25, prior_neutral: float | None = None) -> Any:
    """An ``EmotionStream`` over the shipped emotion model (loaded once per process and shared: the
    weights are read-only, each stream keeps its own window), reading the voice with ``prior_neutral``
    as the prior share of neutral (None: the model's voice prior). None, with a warning, when the
    model is missing or ``fps`` is not the model's 25."""
    global _EMOTION_MODEL
    from stream_avatar.emotion.inference import (
        EmotionModel,
        EmotionStream,
        MissingModelError,
        prior_with_neutral,
    )

    if fps != 25:
        logger.warning("voice emotion needs 25 fps; auto shows neutral", extra={"fps": fps})
        return None
    with _MODEL_LOCK:
        if _EMOTION_MODEL is None:
            try:
                _EMOTION_MODEL = EmotionModel.load()
            except MissingModelError as exc:
                logger.warning("no emotion model; auto shows neutral", extra={"reason": str(exc)})
                return None
    prior = None if prior_neutral is None else prior_with_neutral(prior_neutral)
    return EmotionStream(_EMOTION_MODEL, prior=prior)

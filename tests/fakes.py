"""Test doubles for the engine's collaborators (renderer, driver, idle, resampler) and frame factories.

They follow the interfaces in stream_avatar.session.engine (Renderer, Driver, Idle, Resampler) and
make the engine's behaviour readable from its output: FakeRenderer draws solid frames whose red
channel is round(jawOpen * 255), so a test can read the mouth straight off a pixel.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_avatar.motion import rig as rig_mod

JAW = rig_mod.index("jawOpen")
BLINK = rig_mod.index("eyeBlinkLeft")
# The consent record tests enroll portraits with (the shipped public-domain photo and images made
# from it): enrollment refuses a portrait without one.
TEST_CONSENT = "test fixture: synthetic/public-domain portrait, for automated tests"


def jaw_from_frame(frame: np.ndarray) -> float:
    """jawOpen encoded by FakeRenderer in a (H, W, 3) frame."""
    return float(frame[0, 0, 0]) / 255.0


@dataclass(frozen=True)
class FakeMotionFrame:
    rig: np.ndarray
    speaking: bool


class FakeRenderer:
    """render(rigs (B, RIG_SIZE) or (RIG_SIZE,)) -> (B, H, W, 3) uint8 solid frames.

    Colour: R = round(jawOpen * 255), G = round(eyeBlinkLeft * 255), B = 128.
    gate: if given, every render call waits for it to be set (lets a test hold the worker busy
      deterministically, without sleeps). Records the threads it ran on and the batch sizes.
    """

    def __init__(self, size: int = 32, gate: threading.Event | None = None) -> None:
        self.size = (size, size)
        self.gate = gate
        self.threads: set[int] = set()
        self.batches: list[int] = []
        self.entered = threading.Event()  # set once a render call has started

    def render(self, rig: np.ndarray) -> np.ndarray:
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10.0), "test gate never opened"
        rigs = np.asarray(rig, np.float32).reshape(-1, rig_mod.RIG_SIZE)
        self.batches.append(len(rigs))
        w, h = self.size
        out = np.empty((len(rigs), h, w, 3), np.uint8)
        out[..., 0] = np.round(rigs[:, JAW] * 255).astype(np.uint8)[:, None, None]
        out[..., 1] = np.round(rigs[:, BLINK] * 255).astype(np.uint8)[:, None, None]
        out[..., 2] = 128
        return out


class FakeDriver:
    """Energy-driven jaw with attack/release smoothing: a stand-in for DSPMouthDriver.

    push(samples16k) -> one FakeMotionFrame per completed 16000/fps block; jawOpen follows
    clip(8 * rms) with fast attack and release; speaking = rms > 0.01. clear() drops the partial
    block (the smoothed jaw then decays on the following silent frames).
    """

    name = "fake"

    def __init__(self, fps: int = 25) -> None:
        self.spf = 16000 // fps
        self._partial = np.zeros(0, np.float32)
        self._jaw = 0.0
        self.clears = 0
        self.threads: set[int] = set()
        self.samples_seen = 0

    def push(self, samples: np.ndarray) -> list[FakeMotionFrame]:
        self.threads.add(threading.get_ident())
        samples = np.asarray(samples, np.float32)
        self.samples_seen += samples.size
        buf = np.concatenate([self._partial, samples])
        n = buf.size // self.spf
        self._partial = buf[n * self.spf :]
        frames = []
        for block in buf[: n * self.spf].reshape(n, self.spf):
            rms = float(np.sqrt(np.mean(block.astype(np.float64) ** 2)))
            target = min(1.0, 8.0 * rms)
            self._jaw += (0.7 if target > self._jaw else 0.6) * (target - self._jaw)
            rig = rig_mod.zeros()
            rig[JAW] = self._jaw
            frames.append(FakeMotionFrame(rig, rms > 0.01))
        return frames

    def clear(self) -> None:
        self._partial = np.zeros(0, np.float32)
        self.clears += 1


class FakeIdle:
    """Idle motion that is all zeros except a blink every ``blink_every`` frames."""

    def __init__(self, blink_every: int = 50) -> None:
        self.blink_every = blink_every
        self.count = 0

    def next(self, speaking: bool) -> np.ndarray:
        rig = rig_mod.zeros()
        if self.blink_every and self.count % self.blink_every == self.blink_every - 1:
            rig[BLINK] = 1.0
        self.count += 1
        return rig


class FakeResampler:
    """Streaming linear-interpolation resampler; chunking-invariant, so offline == streaming exactly.

    Output sample k sits at input position k * in_rate / out_rate; it is produced once the input
    sample after that position has arrived. flush() emits the rest, holding the last sample.
    The total output length is ceil(n_in * out_rate / in_rate).
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int = 16000) -> None:
        self.in_rate = in_rate_hz
        self.out_rate = out_rate_hz
        self._buf = np.zeros(0, np.float64)
        self._offset = 0  # input index of _buf[0]
        self._k = 0  # next output sample index

    def _emit(self, final: bool) -> np.ndarray:
        total_in = self._offset + self._buf.size
        if final:
            k_end = -(-total_in * self.out_rate // self.in_rate)
        else:  # positions strictly below total_in - 1 have both neighbours
            k_end = ((total_in - 1) * self.out_rate - 1) // self.in_rate + 1 if total_in > 1 else 0
        ks = np.arange(self._k, max(self._k, k_end))
        pos = ks * self.in_rate / self.out_rate - self._offset
        out = np.interp(pos, np.arange(self._buf.size), self._buf) if self._buf.size else np.zeros(ks.size)
        self._k += ks.size
        # Keep from the sample left of the next output position on.
        keep_from = int(self._k * self.in_rate // self.out_rate) - self._offset
        keep_from = max(0, min(keep_from, self._buf.size - 1))
        self._buf = self._buf[keep_from:]
        self._offset += keep_from
        return out.astype(np.float32)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, np.asarray(chunk, np.float64)])
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        if self._buf.size == 0:
            return np.zeros(0, np.float32)
        out = self._emit(final=True)
        self._buf = np.zeros(0, np.float64)
        return out


def operator_probabilities(weights: Mapping[str, float]) -> dict[str, float]:
    """Operator emotion weights as probabilities over facs.EMOTIONS: each term's intensity (scaled to
    sum <= 1), the rest neutral. ``{"happy": 0.8}`` -> happy 0.8, neutral 0.2, others 0."""
    from stream_avatar.emotion.facs import EMOTIONS

    terms = {k: float(v) for k, v in weights.items() if k in EMOTIONS and k != "neutral"}
    scale = 1.0 / max(1.0, sum(terms.values()))
    probs = {name: terms.get(name, 0.0) * scale for name in EMOTIONS}
    probs["neutral"] = 1.0 - sum(probs.values())
    return probs


class EmotionTaggedEngine:
    """Wraps an AvatarEngine so that every frame carries ``OutputItem.emotion``: the engine's own when
    it sets one, else ``operator_probabilities`` of its current emotion. Everything else is delegated."""

    def __init__(self, engine: Any) -> None:
        self.inner = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __aiter__(self) -> EmotionTaggedEngine:
        self.inner.__aiter__()
        return self

    async def __anext__(self) -> Any:
        item = await self.inner.__anext__()
        if item.emotion is not None:
            return item
        return dataclasses.replace(item, emotion=operator_probabilities(self.inner.emotion))


def fake_engine_parts(size: int = 32, fps: int = 25, gate: threading.Event | None = None):
    """(renderer, driver, idle) fakes for AvatarEngine."""
    return FakeRenderer(size, gate), FakeDriver(fps), FakeIdle()


def tone(duration_s: float, sample_rate_hz: int, freq_hz: float = 220.0, amp: float = 0.5) -> np.ndarray:
    """A float32 sine, (round(duration_s * rate),)."""
    t = np.arange(round(duration_s * sample_rate_hz)) / sample_rate_hz
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)


def assert_timeline_tiles(samples: np.ndarray, phonemes: Sequence[Any], pause: str) -> None:
    """A synthesizer's phone timeline (items with symbol/start/end in samples) covers the 16 kHz audio
    exactly: first at 0, last at its length, no gaps, no empty spans, pauses merged."""
    n = samples.shape[0]
    assert samples.dtype == np.float32 and n > 8000
    assert phonemes[0].start == 0 and phonemes[-1].end == n
    assert all(p.start < p.end for p in phonemes)
    assert all(a.end == b.start for a, b in itertools.pairwise(phonemes))
    assert not any(a.symbol == b.symbol == pause for a, b in itertools.pairwise(phonemes))

"""Admission control: a new session is let in only when the measured load leaves room for it.

A fixed session count cannot say what a machine carries: one session's cost depends on the frame
size, the device, the drivers, the encoder and the machine. Measured on a 2-core machine before this
existed: 4 sessions at 512² (the old fixed limit) all fell to 17 fps with 74 % late frames. So the
server measures, once a second:

- ``cores_used``: busy CPU time per wall second of the whole machine (``/proc/stat``: what other
  processes take is not ours to give; on systems without it, this process's CPU time);
- per-session cost: ``(cores_used - idle_cores) / streaming`` over the sessions whose frames are
  flowing, smoothed (an exponential average); ``idle_cores`` is what the process uses with no
  session streaming (the event loop, idle timers);
- health: the share of late frames of each streaming session over the last second, and how late
  the sampler itself woke up (event-loop lag: a loop that is behind delays every socket).

A new session is refused (``Refusal``: HTTP 503 with an ``error`` of code ``busy``, the reason in
the message) when the hard cap ``max_sessions`` is reached; when ``idle + (sessions + 1) × cost``
would exceed ``cpu_fraction`` of the cores this process may run on; or when the running sessions are
already unhealthy (more than ``max_late_ratio`` late frames in the last second, or the loop lagging
by more than ``max_loop_lag_s``). A viewer of a running stream (``watch``) costs an encode, not a
render: viewers have their own cap (``max_viewers``) and, beyond the first, are refused only when
the running streams are unhealthy (the same two bounds) or when the machine's busy CPU plus one
viewer's encode (measured by ``calibrate``) would pass the budget; what they cost shows in the
machine's measured load, which the next session's admission reads. Before any session has
streamed, the cost is ``prior_cores`` (measured at start by ``calibrate``, or given); once
sessions stream, the larger of the measured cost and half the prior (a quiet session is cheap,
but speech makes it cost more again).

The clock and the CPU-time source are injectable, so the policy is tested without load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = [
    "Admission",
    "AdmissionSettings",
    "Refusal",
    "SessionLoad",
    "available_cores",
    "busy_cpu_seconds",
    "calibrate",
]


_CLOCK_TICKS = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def busy_cpu_seconds() -> float:
    """CPU-seconds the machine has spent busy (all cores; /proc/stat's first line, everything but
    idle and iowait), or this process's CPU time where /proc/stat cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return time.process_time()
    if not fields or fields[0] != "cpu":
        return time.process_time()
    ticks = [int(x) for x in fields[1:]]
    busy = sum(ticks[:8]) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
    return busy / _CLOCK_TICKS


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; cgroup quotas are not read)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class AdmissionSettings:
    """max_sessions: hard cap. cpu_fraction: share of the cores sessions may use in all (headroom
    for the encoders' bursts and the system). prior_cores: one session's cost before any is
    measured (None: ``calibrate`` or the first session's measurement). max_late_ratio /
    max_loop_lag_s: health bounds of the running sessions. cores: None = ``available_cores()``."""

    max_sessions: int = 4
    # 0.6: on 2 cores two 512² sessions (with their clients) kept 1.25-1.31 cores busy and ran 1.0-2.2 %
    # late frames, one at 0.81 cores ran 0.68 % (benchmarks/bench_e2e.py --sessions 4): bursts of render
    # and encode need the headroom.
    cpu_fraction: float = 0.6
    max_viewers: int = 16
    prior_cores: float | None = None
    max_late_ratio: float = 0.01
    max_loop_lag_s: float = 0.1
    cores: int | None = None
    measured: bool = True  # False: the hard cap only (tests that must not depend on the machine's load)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.max_viewers < 0:
            raise ValueError(f"max_viewers must be >= 0, got {self.max_viewers}")
        if not 0.05 <= self.cpu_fraction <= 1.0:
            raise ValueError(f"cpu_fraction must lie in 0.05..1, got {self.cpu_fraction}")
        if self.prior_cores is not None and not self.prior_cores > 0:
            raise ValueError(f"prior_cores must be positive, got {self.prior_cores}")


@dataclass(frozen=True)
class SessionLoad:
    """One session as the sampler sees it: is its media flowing, ticks and late ticks so far."""

    key: str
    streaming: bool
    ticks: int
    late: int


class Refusal(Exception):
    """A session cannot be admitted now; ``str()`` says why (sent to the client)."""


class Admission:
    """Measures the load (``sample``, once a second from ``run``) and decides (``check``)."""

    SMOOTHING = 0.3  # weight of the newest per-session cost sample

    def __init__(
        self,
        settings: AdmissionSettings,
        sessions: Callable[[], Iterable[SessionLoad]],
        *,
        cpu_time: Callable[[], float] = busy_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.cores = settings.cores or available_cores()
        self._sessions = sessions
        self._cpu_time = cpu_time
        self._clock = clock
        self.prior_cores = settings.prior_cores
        self.viewer_cores: float | None = None  # one viewer's encode, measured by calibrate
        self.cost_cores: float | None = None  # measured per streaming session
        self.idle_cores = 0.0
        self._idle_seen = False
        self.cores_used = 0.0
        self.late_ratio = 0.0
        self.loop_lag_s = 0.0
        self.refused = 0
        self._last: tuple[float, float] | None = None
        self._ticks: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------------------ measuring

    def sample(self, loop_lag_s: float = 0.0) -> None:
        """One measurement (call about once a second)."""
        now, cpu = self._clock(), self._cpu_time()
        loads = list(self._sessions())
        if self._last is not None and now > self._last[0]:
            self.cores_used = max(0.0, (cpu - self._last[1]) / (now - self._last[0]))
            streaming = [s for s in loads if s.streaming]
            if not streaming:
                if not loads:  # nothing connected at all: this is the idle floor
                    w = self.SMOOTHING if self._idle_seen else 1.0
                    self.idle_cores += w * (self.cores_used - self.idle_cores)
                    self._idle_seen = True
            else:
                per = max(0.0, self.cores_used - self.idle_cores) / len(streaming)
                self.cost_cores = (
                    per
                    if self.cost_cores is None
                    else self.cost_cores + self.SMOOTHING * (per - self.cost_cores)
                )
        self._last = (now, cpu)
        ticks = late = 0
        seen: dict[str, tuple[int, int]] = {}
        for s in loads:
            if not s.streaming:
                continue
            seen[s.key] = (s.ticks, s.late)
            t0, l0 = self._ticks.get(s.key, (s.ticks, s.late))
            if s.ticks >= t0:
                ticks += s.ticks - t0
                late += max(0, s.late - l0)
        self._ticks = seen
        self.late_ratio = late / ticks if ticks else 0.0
        self.loop_lag_s = max(0.0, loop_lag_s)

    def session_cost(self) -> float | None:
        """Estimated cores one more session needs (None: nothing measured and no prior)."""
        if self.cost_cores is None:
            return self.prior_cores
        if self.prior_cores is None:
            return self.cost_cores
        return max(self.cost_cores, 0.5 * self.prior_cores)

    # ------------------------------------------------------------------------------ deciding

    def check(self, sessions: int) -> None:
        """Raise Refusal when a session beyond the ``sessions`` already open cannot be carried."""
        reason = self.reason(sessions)
        if reason is not None:
            self.refused += 1
            logger.warning("session refused", extra={"reason": reason, "sessions": sessions})
            raise Refusal(reason)

    def reason(self, sessions: int) -> str | None:
        """Why one more session beyond ``sessions`` would be refused now (None: it would be let in)."""
        s = self.settings
        reason = None
        budget = s.cpu_fraction * self.cores
        cost = self.session_cost()
        if sessions >= s.max_sessions:
            reason = f"the server is at its session limit ({s.max_sessions})"
        elif not s.measured:
            pass
        elif sessions > 0 and self.late_ratio > s.max_late_ratio:
            reason = f"the running sessions are already behind ({self.late_ratio:.0%} late frames)"
        elif sessions > 0 and self.loop_lag_s > s.max_loop_lag_s:
            reason = f"the server is overloaded (event loop {self.loop_lag_s * 1000:.0f} ms behind)"
        elif sessions > 0 and cost is not None and self.idle_cores + (sessions + 1) * cost > budget:
            reason = (
                f"the measured load cannot carry another session: {sessions} use about "
                f"{sessions * cost:.2f} of {self.cores} cores, one more needs {cost:.2f}, "
                f"the budget is {budget:.2f}"
            )
        return reason

    def viewer_reason(self, viewers: int) -> str | None:
        """Why one more viewer beyond ``viewers`` would be refused now (None: it would be let in)."""
        s = self.settings
        if viewers >= s.max_viewers:
            return f"the server is at its viewer limit ({s.max_viewers})"
        if viewers == 0:  # a stream nobody watches is of no use: the first viewer always comes in
            return None
        budget = s.cpu_fraction * self.cores
        if s.measured and self.viewer_cores is not None and self.cores_used + self.viewer_cores > budget:
            return (
                f"the measured load cannot carry another viewer: {self.cores_used:.2f} of {self.cores} cores"
                f" busy, a viewer needs {self.viewer_cores:.2f}, the budget is {budget:.2f}"
            )
        if s.measured and self.late_ratio > s.max_late_ratio:
            return f"the running streams are already behind ({self.late_ratio:.0%} late frames)"
        if s.measured and self.loop_lag_s > s.max_loop_lag_s:
            return f"the server is overloaded (event loop {self.loop_lag_s * 1000:.0f} ms behind)"
        return None

    def check_viewer(self, viewers: int) -> None:
        reason = self.viewer_reason(viewers)
        if reason is not None:
            self.refused += 1
            logger.warning("viewer refused", extra={"reason": reason, "viewers": viewers})
            raise Refusal(reason)

    def snapshot(self) -> dict[str, float | int | None]:
        cost = self.session_cost()
        return {
            "cores": self.cores,
            "cores_used": round(self.cores_used, 3),
            "idle_cores": round(self.idle_cores, 3),
            "session_cost_cores": None if cost is None else round(cost, 3),
            "late_ratio": round(self.late_ratio, 4),
            "loop_lag_ms": round(self.loop_lag_s * 1000.0, 1),
            "refused": self.refused,
        }

    async def run(self, interval_s: float = 1.0) -> None:
        """Sample every ``interval_s`` until cancelled; the wake-up delay is the loop lag."""
        while True:
            due = time.monotonic() + interval_s
            await asyncio.sleep(interval_s)
            self.sample(loop_lag_s=time.monotonic() - due)


def calibrate(work: Callable[[], None], frames: int, fps: int) -> float:
    """Cores one session needs by this measurement: ``work()`` makes ``frames`` frames (render,
    motion, encode); its CPU time per frame × fps. The first call is not counted (warm-up)."""
    work()
    t0 = time.process_time()
    work()
    cpu = time.process_time() - t0
    return max(1e-3, cpu / max(1, frames) * fps)

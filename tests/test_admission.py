"""Admission control's policy (stream_avatar.server.admission), on a fake clock and CPU-time source."""

from __future__ import annotations

import pytest

from stream_avatar.server.admission import Admission, AdmissionSettings, Refusal, SessionLoad, calibrate


class Machine:
    """A fake clock + process CPU time, and the sessions the sampler sees."""

    def __init__(self) -> None:
        self.t = 0.0
        self.cpu = 0.0
        self.loads: list[SessionLoad] = []

    def advance(self, seconds: float, cores_busy: float) -> None:
        self.t += seconds
        self.cpu += seconds * cores_busy

    def admission(self, **kw: object) -> Admission:
        settings = AdmissionSettings(**{"cores": 2, "max_sessions": 8, "cpu_fraction": 0.8, **kw})  # type: ignore[arg-type]
        return Admission(settings, lambda: self.loads, cpu_time=lambda: self.cpu, clock=lambda: self.t)


def streaming(n: int, ticks: int = 0, late: int = 0) -> list[SessionLoad]:
    return [SessionLoad(f"s{i}", True, ticks, late) for i in range(n)]


def test_the_first_session_is_let_in_with_nothing_measured() -> None:
    m = Machine()
    a = m.admission()
    assert a.session_cost() is None
    a.check(0)


def test_the_prior_cost_bounds_sessions_before_any_streams() -> None:
    m = Machine()
    a = m.admission(prior_cores=0.5)  # budget 0.8 x 2 = 1.6 cores: three sessions fit, not four
    a.check(1)
    a.check(2)
    with pytest.raises(Refusal, match=r"cannot carry another session.*needs 0\.50.*budget is 1\.60"):
        a.check(3)
    assert a.refused == 1


def test_the_measured_cost_per_streaming_session_decides() -> None:
    m = Machine()
    a = m.admission(prior_cores=0.2)
    a.sample()
    m.advance(1.0, 0.1)  # nothing connected: the idle floor
    a.sample()
    m.loads = streaming(2)
    for _ in range(20):
        m.advance(1.0, 0.1 + 2 * 0.6)  # each streaming session really costs 0.6 cores
        a.sample()
    assert a.session_cost() == pytest.approx(0.6, abs=0.02)
    assert a.idle_cores == pytest.approx(0.1)
    with pytest.raises(Refusal, match="cannot carry"):
        a.check(2)  # 0.1 + 3 x 0.6 > 1.6
    a.check(1)


def test_a_quiet_session_does_not_make_the_estimate_drop_below_half_the_prior() -> None:
    m = Machine()
    a = m.admission(prior_cores=0.8)
    a.sample()
    m.loads = streaming(1)
    for _ in range(20):
        m.advance(1.0, 0.05)
        a.sample()
    assert a.session_cost() == pytest.approx(0.4)


def test_late_frames_or_a_lagging_loop_refuse_newcomers_but_not_the_first() -> None:
    m = Machine()
    a = m.admission(prior_cores=0.1)
    m.loads = streaming(2, ticks=0, late=0)
    a.sample()
    m.advance(1.0, 0.3)
    m.loads = [SessionLoad("s0", True, 25, 0), SessionLoad("s1", True, 25, 3)]  # 3 of 50 late
    a.sample()
    assert a.late_ratio == pytest.approx(0.06)
    with pytest.raises(Refusal, match="already behind"):
        a.check(2)
    a.check(0)  # nothing else runs: the first is let in
    m.advance(1.0, 0.3)
    m.loads = [SessionLoad("s0", True, 50, 0), SessionLoad("s1", True, 50, 3)]  # none late this second
    a.sample(loop_lag_s=0.25)
    assert a.late_ratio == 0.0
    with pytest.raises(Refusal, match="event loop 250 ms behind"):
        a.check(2)
    a.sample(loop_lag_s=0.0)
    a.check(2)


def test_viewers_have_their_own_cap_and_are_refused_only_when_streams_are_behind() -> None:
    m = Machine()
    a = m.admission(prior_cores=0.9, max_sessions=1, max_viewers=3)
    a.sample()
    m.advance(1.0, 1.5)  # the machine is busy: no room for another session ...
    m.loads = [SessionLoad("s0", True, 25, 0)]
    a.sample()
    with pytest.raises(Refusal):
        a.check(1)
    for n in range(3):  # ... but viewers (an encode each) come in while the stream keeps up
        a.check_viewer(n)
    with pytest.raises(Refusal, match=r"viewer limit \(3\)"):
        a.check_viewer(3)
    m.advance(1.0, 1.5)
    m.loads = [SessionLoad("s0", True, 50, 2)]  # 2 of 25 late in the last second
    a.sample()
    with pytest.raises(Refusal, match="streams are already behind"):
        a.check_viewer(1)
    a.check_viewer(0)  # the first viewer is let in even so: an unwatched stream is of no use
    m.advance(1.0, 1.5)
    m.loads = [SessionLoad("s0", True, 75, 2)]  # on time again, but 1.5 of 2 cores busy
    a.sample()
    a.check_viewer(1)
    a.viewer_cores = 0.2  # one more encode would pass the 1.6-core budget
    with pytest.raises(Refusal, match=r"cannot carry another viewer.*needs 0\.20.*budget is 1\.60"):
        a.check_viewer(1)


def test_the_hard_cap_holds_with_measurement_off() -> None:
    m = Machine()
    a = m.admission(max_sessions=2, measured=False, prior_cores=5.0)
    a.check(1)  # the prior alone would refuse this; measurement is off
    with pytest.raises(Refusal, match=r"session limit \(2\)"):
        a.check(2)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        AdmissionSettings(cpu_fraction=0.0)
    with pytest.raises(ValueError):
        AdmissionSettings(max_sessions=0)
    with pytest.raises(ValueError):
        AdmissionSettings(prior_cores=-1.0)


def test_calibrate_measures_cpu_time_per_frame_times_fps() -> None:
    def work() -> None:  # ~busy CPU for a moment
        x = 0
        for i in range(200_000):
            x += i * i

    cores = calibrate(work, frames=10, fps=25)
    assert 0.0 < cores < 1000.0


def test_mic_latency_stays_true_when_the_engine_drops_input_on_overload() -> None:
    from stream_avatar.server.media import MicLatency

    lat = MicLatency(fps=25)
    for k in range(200):  # 20 ms packets, arriving in real time from t = 0
        lat.mark(0.02, arrival=0.02 * (k + 1))
    # The engine dropped 2 s of the oldest input; the frame it hands out at t = 4.05 s is made of the
    # audio that ended at 4.0 s (frame 49 of what it kept: 2 s skipped + 50 frames x 40 ms).
    assert lat.frame_latency_s(49, handed_out=4.05, skipped_s=2.0) == pytest.approx(0.05)
    # Without the skipped input the same frame would be taken for audio 2 s older.
    lat2 = MicLatency(fps=25)
    for k in range(200):
        lat2.mark(0.02, arrival=0.02 * (k + 1))
    assert lat2.frame_latency_s(49, handed_out=4.05) == pytest.approx(2.05)

"""DSP mouth driver and idle life: real espeak-ng speech in, rig frames out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from stream_avatar.motion import rig
from stream_avatar.motion.dsp_driver import DSPMouthDriver
from stream_avatar.motion.idle import IdleLife, combine
from tests.conftest import SpeechBursts

SPF = 640  # samples per frame at 25 fps
JAW = rig.index("jawOpen")
FUNNEL = rig.index("mouthFunnel")
STRETCH = rig.index("mouthStretchLeft")
BLINK = rig.index("eyeBlinkLeft")


def _frame_ends(n_frames: int) -> np.ndarray:
    return (np.arange(n_frames) + 1) * SPF


def _masks(bursts: SpeechBursts, n_frames: int, release_s: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(in-speech, in-silence) frame masks; silence excludes ``release_s`` after each burst."""
    ends = _frame_ends(n_frames)
    speech = np.zeros(n_frames, bool)
    silence = np.ones(n_frames, bool)
    for a, b in bursts.bursts:
        speech |= (ends > a) & (ends <= b)
        silence &= ~((ends > a) & (ends <= b + int(release_s * bursts.sample_rate_hz)))
    return speech, silence


def _jaw(frames: list) -> np.ndarray:
    return np.array([f.rig[JAW] for f in frames])


def test_mouth_opens_on_speech_and_closes_in_silence(speech_bursts: SpeechBursts) -> None:
    frames = DSPMouthDriver().push(speech_bursts.samples)
    assert len(frames) == speech_bursts.samples.size // SPF
    jaw = _jaw(frames)
    speech, silence = _masks(speech_bursts, len(frames))
    assert jaw[speech].mean() > 0.3, "the mouth barely moves during speech"
    assert np.percentile(jaw[speech], 90) > 0.5, "the mouth never opens wide during speech"
    assert jaw[silence].max() < 0.05, "the mouth is open during silence"
    # It closes within 300 ms of the end of every burst (160 ms VAD hangover + release).
    ends = _frame_ends(len(frames))
    for _, b in speech_bursts.bursts:
        after = (ends > b + int(0.3 * speech_bursts.sample_rate_hz)) & (ends < b + 16000)
        assert jaw[after].max() < 0.05
    # Speech is not a constant open mouth: syllables open and close it.
    assert jaw[speech].std() > 0.1
    # Every rig value stays in range and only the mouth channels and the nods move.
    stack = np.stack([f.rig for f in frames])
    assert np.array_equal(rig.clamp(stack), stack)
    moved = {rig.RIG_NAMES[i] for i in np.flatnonzero(np.abs(stack).max(axis=0) > 0)}
    mouth = {"jawOpen", "mouthClose", "mouthFunnel", "mouthStretchLeft", "mouthStretchRight"}
    assert moved <= mouth | {"headPitch", "headYaw"}


def test_speech_brings_nods_and_silence_none(speech_bursts: SpeechBursts) -> None:
    driver = DSPMouthDriver(seed=3)
    frames = driver.push(speech_bursts.samples)
    pitch = np.array([f.rig[rig.index("headPitch")] for f in frames])
    yaw = np.array([f.rig[rig.index("headYaw")] for f in frames])
    # Every burst starts with a nod (chin down, 0.8-2 degrees) that peaks during the burst.
    ends = _frame_ends(len(frames))
    for a, b in speech_bursts.bursts:
        inside = (ends > a) & (ends <= b)
        assert 0.6 < pitch[inside].max() <= 2.0 * 3, (a, pitch[inside].max())
    assert len(driver.nod_starts) >= len(speech_bursts.bursts)
    # Smooth (no jumps at 25 fps), small, and gone in the middle of long silences.
    assert np.abs(np.diff(pitch)).max() < 0.6 and np.abs(yaw).max() < 2.0
    first_silence = speech_bursts.silences[0]
    assert np.abs(pitch[ends <= first_silence[1]]).max() == 0.0
    # Deterministic under a seed.
    again = DSPMouthDriver(seed=3).push(speech_bursts.samples)
    np.testing.assert_array_equal(np.stack([f.rig for f in again]), np.stack([f.rig for f in frames]))


def test_speaking_flag_follows_the_vad(speech_bursts: SpeechBursts) -> None:
    frames = DSPMouthDriver().push(speech_bursts.samples)
    speaking = np.array([f.speaking for f in frames])
    speech, silence = _masks(speech_bursts, len(frames))
    assert speaking[speech].mean() > 0.9
    assert speaking[silence].mean() < 0.1


def test_chunking_does_not_change_the_output(speech_bursts: SpeechBursts) -> None:
    x = speech_bursts.samples[: 3 * 16000]
    whole = DSPMouthDriver().push(x)
    driver = DSPMouthDriver()
    rng = np.random.default_rng(0)
    chunked: list = []
    pos = 0
    while pos < x.size:
        n = int(rng.integers(1, 1500))
        chunked += driver.push(x[pos : pos + n])
        pos += n
    assert len(chunked) == len(whole)
    np.testing.assert_array_equal(np.stack([f.rig for f in chunked]), np.stack([f.rig for f in whole]))


def test_causal_a_prefix_gives_the_same_frames(speech_bursts: SpeechBursts) -> None:
    x = speech_bursts.samples
    full = DSPMouthDriver().push(x)
    cut = 57 * SPF + 123
    prefix = DSPMouthDriver().push(x[:cut])
    assert len(prefix) == 57
    np.testing.assert_array_equal(np.stack([f.rig for f in prefix]), np.stack([f.rig for f in full[:57]]))


def test_loudness_is_normalised(speech_bursts: SpeechBursts) -> None:
    loud = _jaw(DSPMouthDriver().push(speech_bursts.samples))
    quiet = _jaw(DSPMouthDriver().push(speech_bursts.samples * 0.1))  # 20 dB quieter microphone
    speech, _ = _masks(speech_bursts, loud.size)
    assert abs(quiet[speech].mean() - loud[speech].mean()) < 0.1
    assert np.corrcoef(quiet, loud)[0, 1] > 0.9


def test_int16_input_matches_float(speech_bursts: SpeechBursts) -> None:
    x = speech_bursts.samples[:32000]
    as_int = np.round(x * 32767).astype(np.int16)
    a = _jaw(DSPMouthDriver().push(x))
    b = _jaw(DSPMouthDriver().push(as_int))
    np.testing.assert_allclose(a, b, atol=0.02)


def test_rounded_vowels_funnel_and_spread_vowels_stretch(espeak_synth: Callable[..., np.ndarray]) -> None:
    def mean_of(text: str, index: int) -> float:
        x = np.concatenate([np.zeros(8000, np.float32), espeak_synth(text)])
        x = x + np.random.default_rng(0).standard_normal(x.size).astype(np.float32) * 1e-3
        return float(np.mean([f.rig[index] for f in DSPMouthDriver().push(x)]))

    rounded, spread = "who knew you too", "see me eat cheese"
    assert mean_of(rounded, FUNNEL) > 2 * mean_of(spread, FUNNEL)
    assert mean_of(spread, STRETCH) > 1.5 * mean_of(rounded, STRETCH)


def test_clear_decays_the_mouth_instead_of_snapping(speech_bursts: SpeechBursts) -> None:
    driver = DSPMouthDriver()
    a, b = speech_bursts.bursts[0]
    frames = driver.push(speech_bursts.samples[: (a + b) // 2])
    assert frames[-1].rig[JAW] > 0.05 or max(f.rig[JAW] for f in frames[-5:]) > 0.05
    driver.clear()
    silence = (np.random.default_rng(3).standard_normal(16000) * 1e-3).astype(np.float32)
    after = _jaw(driver.push(silence))
    assert after.size == 25
    assert after[-1] < 0.01
    assert np.all(np.diff(after) <= 1e-6), "the mouth should only close after clear()"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fps"):
        DSPMouthDriver(fps=0)
    with pytest.raises(ValueError, match="aggressiveness"):
        DSPMouthDriver(vad_aggressiveness=7)
    assert DSPMouthDriver().push(np.zeros(0, np.float32)) == []


# ----------------------------------------------------------------------------------------- idle life


def _idle_stream(seed: int, seconds: float, speaking: bool = False, fps: int = 25) -> np.ndarray:
    idle = IdleLife(fps=fps, seed=seed)
    return np.stack([idle.next(speaking) for _ in range(int(seconds * fps))])


def test_idle_is_deterministic_under_a_seed() -> None:
    np.testing.assert_array_equal(_idle_stream(5, 20), _idle_stream(5, 20))
    assert not np.array_equal(_idle_stream(5, 20), _idle_stream(6, 20))
    idle = IdleLife(seed=5)
    first = np.stack([idle.next(False) for _ in range(100)])
    idle.reset()
    np.testing.assert_array_equal(np.stack([idle.next(False) for _ in range(100)]), first)


def test_blinks_follow_human_statistics() -> None:
    fps = 25
    idle = IdleLife(fps=fps, seed=11)
    minutes = 10
    seq = np.stack([idle.next(False) for _ in range(minutes * 60 * fps)])
    starts = np.asarray(idle.blink_starts_s)
    gaps = np.diff(starts)
    # Spontaneous blinking: mean interval ~3-4 s, right-skewed (median below the mean), never
    # machine-regular, never two events closer than the minimum interval.
    assert 3.0 <= gaps.mean() <= 4.0, gaps.mean()
    assert np.median(gaps) < gaps.mean() and gaps.std() > 1.0
    assert gaps.min() >= IdleLife.BLINK_MIN_INTERVAL_S and gaps.max() <= IdleLife.BLINK_MAX_INTERVAL_S
    durations = np.asarray(idle.blink_durations_s)
    assert durations.min() >= 0.10 and durations.max() <= 0.15
    doubles = (durations.size - starts.size) / starts.size
    assert 0.05 <= doubles <= 0.3, doubles
    blink = seq[:, BLINK]
    np.testing.assert_array_equal(blink, seq[:, rig.index("eyeBlinkRight")])
    # Each blink event closes the eye (> 0.8 in some frame) and is short: closed frames come in runs
    # of at most 4 frames (150 ms + the frame grid), double blinks being two such runs.
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, (blink > 0.05).astype(int), 0])).reshape(-1, 2), axis=1)
    assert runs.max() <= 4
    for s in starts:
        k = int(s * fps)
        assert blink[k : k + 4].max() > 0.7
    assert (blink > 0.05).mean() < 0.15  # the eyes are open most of the time


def test_head_sway_and_breathing_are_small_smooth_and_never_frozen() -> None:
    seq = _idle_stream(3, 60)
    head = seq[:, [rig.index("headYaw"), rig.index("headPitch"), rig.index("headRoll")]]
    assert np.abs(head).max() < 2.5  # degrees: a slight sway, not a nod
    assert np.abs(np.diff(head, axis=0)).max() < 0.2  # smooth at 25 fps
    # Never frozen: every second of the minute has some head motion.
    per_second = np.abs(np.diff(head, axis=0)).reshape(-1)[: 59 * 25 * 3].reshape(59, -1).max(axis=1)
    assert per_second.min() > 1e-3
    shift = seq[:, [rig.index("headX"), rig.index("headY")]]
    assert 0.1 < np.abs(shift).max() < 2.0  # mm: the head's position drifts a little
    assert np.abs(np.diff(shift, axis=0)).max() < 0.05
    look = [i for i, name in enumerate(rig.RIG_NAMES) if name.startswith("eyeLook")]
    others = np.delete(
        seq, [BLINK, rig.index("eyeBlinkRight"), *look, *list(range(rig.NUM_BLENDSHAPES, rig.RIG_SIZE))], 1
    )
    assert not others.any()


def test_idle_gaze_shifts_are_small_quick_and_irregular() -> None:
    fps = 25
    idle = IdleLife(fps=fps, seed=7)
    seq = np.stack([idle.next(False) for _ in range(120 * fps)])
    look = {name: seq[:, rig.index(name)] for name in rig.BLENDSHAPES if name.startswith("eyeLook")}
    h = look["eyeLookOutLeft"] - look["eyeLookInLeft"]  # toward the image's right
    assert np.allclose(h, look["eyeLookInRight"] - look["eyeLookOutRight"])  # both eyes together
    v = look["eyeLookUpLeft"] - look["eyeLookDownLeft"]
    assert np.abs(h).max() <= 0.6 + 1e-6 and np.abs(v).max() <= 0.4 + 1e-6 and np.abs(h).max() > 0.2
    shifts = np.diff(idle.gaze_shifts_s)
    assert shifts.min() >= 0.8 and shifts.max() <= 4.0 and 30 <= len(idle.gaze_shifts_s) <= 150
    # Saccades: most of a jump happens within two frames, then the eyes hold still.
    speed = np.hypot(np.diff(h), np.diff(v))
    assert (speed > 0.01).mean() < 0.25


def test_sway_grows_while_speaking() -> None:
    silent = _idle_stream(4, 30, speaking=False)[:, rig.index("headYaw")]
    speaking = _idle_stream(4, 30, speaking=True)[:, rig.index("headYaw")]
    assert np.abs(speaking).max() > np.abs(silent).max()


def test_combine_adds_and_clamps() -> None:
    driver = rig.from_dict({"jawOpen": 0.9, "headYaw": 14.0})
    idle = rig.from_dict({"jawOpen": 0.5, "eyeBlinkLeft": 0.4, "headYaw": 3.0})
    out = combine(driver, idle)
    assert out.dtype == np.float32
    assert out[JAW] == 1.0
    assert out[BLINK] == pytest.approx(0.4)
    assert out[rig.index("headYaw")] == rig.HEAD_LIMIT_DEG

"""The learned audio-to-motion driver: streaming equals whole-clip, bounded lookahead, checkpoints,
training smoke run, and the shipped weights against the DSP driver on real speech."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stream_avatar.audio.features import SAMPLE_RATE_HZ
from stream_avatar.motion import rig
from stream_avatar.motion.audio2motion import Audio2MotionNet, ModelConfig
from stream_avatar.motion.learned import (
    DEFAULT_MODEL_DIR,
    LearnedMouthDriver,
    LevelNormalizer,
    ModelNotFoundError,
    MotionModel,
)

SR = 16000
JAW = rig.index("jawOpen")


def _random_model(seed: int = 0, **kw: object) -> MotionModel:
    """An untrained net with weights large enough that every input row matters."""
    torch.manual_seed(seed)
    net = Audio2MotionNet(ModelConfig(channels=32, dilations=(1, 2, 4, 8), **kw))  # type: ignore[arg-type]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return MotionModel(net)


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonic tone with noise bursts: varying spectrum and level, no espeak needed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 2
    noise = rng.standard_normal(t.size) * (np.sin(2 * np.pi * 1.3 * t) > 0.6)
    return (0.3 * env * voiced + 0.05 * noise + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)


def _run(driver: LearnedMouthDriver, audio: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, i, j = [], 0, 0
    while i < audio.size:
        n = sizes[j % len(sizes)]
        out += driver.push(audio[i : i + n])
        i, j = i + n, j + 1
    out += driver.flush()
    return np.stack([f.rig for f in out])


@pytest.mark.parametrize("sizes", [[1], [7, 333, 1600, 1, 16000], [160], [641, 5], [SR]])
def test_chunked_equals_whole_clip(sizes: list[int]) -> None:
    model = _random_model()
    audio = _speechlike(1.3 if sizes == [1] else 3.0)
    whole = _run(LearnedMouthDriver(model=model), audio, [audio.size])
    chunked = _run(LearnedMouthDriver(model=model), audio, sizes)
    assert whole.shape == chunked.shape == (audio.size // 640, rig.RIG_SIZE)
    assert np.abs(whole - chunked).max() < 1e-4


def test_one_frame_per_640_samples_and_flush() -> None:
    driver = LearnedMouthDriver(model=_random_model())
    frames = driver.push(np.zeros(640 * 10, np.float32))
    assert len(frames) == 9  # the 10th waits for 40 ms of lookahead
    assert len(driver.flush()) == 1
    assert driver.flush() == []


@pytest.mark.parametrize("lookahead_rows", [0, 2, 4])
def test_lookahead_is_bounded(lookahead_rows: int) -> None:
    """Changing audio more than the lookahead past a frame's end changes nothing in that frame."""
    model = _random_model(lookahead_rows=lookahead_rows)
    audio = _speechlike(3.0, seed=1)
    k = 40  # frame 40 ends at sample 41 * 640
    cut = (k + 1) * 640 + lookahead_rows * 160
    alt = _speechlike(3.0, seed=2) * 3.0
    other = audio.copy()
    other[cut:] = alt[cut:]
    a = _run(LearnedMouthDriver(model=model), audio, [320])
    b = _run(LearnedMouthDriver(model=model), other, [320])
    assert np.abs(a[: k + 1] - b[: k + 1]).max() == 0.0
    # ... and the model really does listen: one row earlier than the cut changes that frame.
    other2 = audio.copy()
    other2[cut - 160 :] = alt[cut - 160 :]
    c = _run(LearnedMouthDriver(model=model), other2, [320])
    assert np.abs(a[k] - c[k]).max() > 0.0


def test_level_normalizer_ignores_gain() -> None:
    from stream_avatar.audio.features import extract_features

    audio = _speechlike(2.0)
    quiet = extract_features(audio * 0.05)
    a = LevelNormalizer().push(extract_features(audio))
    b = LevelNormalizer().push(quiet)
    above_floor = quiet > -15.0  # well above log(EPS) = -23, where the floor inside the log matters
    assert above_floor.mean() > 0.5
    assert np.abs(a - b)[above_floor].max() < 1e-2


def test_background_column_reads_the_noise_level_under_the_speech_whatever_the_gain() -> None:
    """The background column sits about the SNR below the peak (so a pause in noise reads apart from
    a quiet consonant), far lower on clean speech, and a gain on the input does not move it."""
    from stream_avatar.audio.features import extract_features

    audio = _speechlike(3.0)
    rms = float(np.sqrt(np.mean(audio[np.abs(audio) > 0.01] ** 2)))
    noise = np.random.default_rng(1).standard_normal(audio.size).astype(np.float32)
    to_db = 10.0 / np.log(10.0)
    levels = {}
    for snr in (20.0, 10.0, 0.0):
        noisy = audio + noise * rms * 10.0 ** (-snr / 20.0)
        col = LevelNormalizer(background=True).push(extract_features(noisy))
        assert col.shape[1] == LevelNormalizer(background=True).n_out == LevelNormalizer().n_out + 1
        levels[snr] = float(col[100:, -1].mean()) * to_db  # after the first second
        quiet = LevelNormalizer(background=True).push(extract_features(noisy * 0.05))
        assert np.abs(quiet[100:, -1] - col[100:, -1]).max() < 1e-2
    for snr, level in levels.items():
        assert -snr - 8.0 < level < -snr + 2.0, levels
    clean = LevelNormalizer(background=True).push(extract_features(audio))[100:, -1].mean() * to_db
    assert clean < levels[20.0] - 15.0


def test_configs_saved_before_the_background_column_load_without_it() -> None:
    old = {k: v for k, v in ModelConfig().to_json().items() if k != "background"}
    old["n_input"] = 81
    cfg = ModelConfig.from_json(old)
    assert not cfg.background and cfg.n_input == 81
    assert ModelConfig.from_json(ModelConfig().to_json()) == ModelConfig()
    with pytest.raises(ValueError, match="n_input"):
        ModelConfig.from_json({**ModelConfig().to_json(), "n_input": 81})


def test_configs_saved_before_the_peak_tracker_settings_load_with_the_old_rates() -> None:
    new_keys = ("peak_decay_db_per_s", "peak_attack")
    old = {k: v for k, v in ModelConfig().to_json().items() if k not in new_keys}
    cfg = ModelConfig.from_json(old)
    assert cfg.peak_decay_db_per_s == LevelNormalizer.DECAY_DB_PER_S == 4.0
    assert cfg.peak_attack == LevelNormalizer.ATTACK == 0.3
    cfg = ModelConfig(peak_decay_db_per_s=8.0, peak_attack=0.25)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="peak_decay"):
        ModelConfig(peak_decay_db_per_s=0.0)
    with pytest.raises(ValueError, match="peak_attack"):
        ModelConfig(peak_attack=1.5)


def test_peak_tracker_runs_at_the_configured_rates() -> None:
    """After a loud row, 1 s of rows 30 dB lower: the peak falls by the decay rate times 1 s; one row
    louder than the peak closes the attack's share of the gap."""
    to_db = 10.0 / np.log(10.0)
    rows = np.zeros((101, LevelNormalizer().n_out), np.float32)
    rows[1:] -= 30.0 / to_db
    for rate in (4.0, 8.0):
        norm = LevelNormalizer(decay_db_per_s=rate)
        norm.push(rows)
        assert abs(-norm.peak * to_db - rate) < 1e-6
    for attack in (0.3, 0.25):
        norm = LevelNormalizer(attack=attack)
        norm.push(rows[:1])
        norm.push(rows[:1] + 1.0)
        assert abs(norm.peak - attack) < 1e-6
    default = LevelNormalizer(background=True)
    assert (default.decay_db_per_s, default.attack) == (4.0, 0.3)
    # The driver normalises with the rates in its model's config.
    driver = LearnedMouthDriver(model=_random_model(peak_decay_db_per_s=8.0, peak_attack=0.25))
    assert (driver._norm.decay_db_per_s, driver._norm.attack) == (8.0, 0.25)


def test_clear_forgets_audio_but_keeps_the_level_and_reset_forgets_all() -> None:
    model = _random_model()
    audio = _speechlike(2.0)
    fresh = _run(LearnedMouthDriver(model=model), audio, [640])
    driver = LearnedMouthDriver(model=model)
    driver.push(_speechlike(1.0, seed=5) * 0.1)
    peak, background = driver._norm.peak, driver._norm.floor
    driver.clear()
    assert (driver._norm.peak, driver._norm.floor) == (peak, background)  # same speaker, same room
    assert driver.flush() == []  # frames waiting for lookahead are dropped
    driver.reset()
    again = _run(driver, audio, [640])
    assert np.abs(fresh - again).max() < 1e-6


def test_after_an_interrupt_the_first_frame_needs_no_lookahead() -> None:
    """The gate shuts the first frame after clear() anyway: it comes with its own 40 ms, at rest; the
    lookahead is taken back before the next one, and then frames follow at the usual offset."""
    model = _random_model()
    driver = LearnedMouthDriver(model=model)
    driver.push(_speechlike(1.0, seed=5))
    driver.clear()
    spf, la = SAMPLE_RATE_HZ // driver.fps, driver.lookahead_rows * 160
    audio = _speechlike(1.0, seed=6)
    first = driver.push(audio[:spf])
    assert len(first) == 1 and np.all(first[0].rig == 0.0) and not first[0].speaking
    assert driver.push(audio[spf : 2 * spf + la - 1]) == []  # frame 1 waits for its lookahead
    assert len(driver.push(audio[2 * spf + la - 1 : 2 * spf + la])) == 1
    # A fresh driver (no interrupt) has no early frame.
    assert LearnedMouthDriver(model=model).push(audio[:spf]) == []


def test_emotion_vector_is_checked_and_used() -> None:
    model = _random_model()
    driver = LearnedMouthDriver(model=model)
    with pytest.raises(ValueError, match="emotion vector"):
        driver.set_emotion([1.0, 2.0])
    with torch.no_grad():  # FiLM starts at zero: give it weights so the vector matters
        for block in model.net.blocks:
            block.film.weight.normal_(0, 0.5)
    audio = _speechlike(1.5)
    neutral = _run(LearnedMouthDriver(model=model), audio, [640])
    d = LearnedMouthDriver(model=model)
    d.set_emotion(np.eye(8, dtype=np.float32)[2])
    angry = _run(d, audio, [640])
    assert np.abs(neutral - angry).max() > 1e-3


def test_checkpoint_round_trip(tmp_path) -> None:
    model = _random_model(lookahead_rows=2)
    model.save(tmp_path / "m", meta={"note": "test"})
    back = MotionModel.load(tmp_path / "m")
    assert back.config == model.config and back.meta["note"] == "test"
    audio = _speechlike(1.0)
    a = _run(LearnedMouthDriver(model=model), audio, [640])
    b = _run(LearnedMouthDriver(model=back), audio, [640])
    assert np.array_equal(a, b)
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["model"]["lookahead_rows"] == 2


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="train one"):
        MotionModel.load(tmp_path)


def test_bad_lookahead_is_refused() -> None:
    with pytest.raises(ValueError, match="lookahead"):
        ModelConfig(lookahead_rows=5)


@pytest.mark.slow
def test_training_smoke_and_resume(tiny_dataset, tmp_path) -> None:
    """A few steps train, checkpoint, resume to the same weights as an uninterrupted run."""
    from stream_avatar.train.motion import TrainConfig, load_checkpoint, train

    small = ModelConfig(channels=16, dilations=(1, 2))
    cfg = TrainConfig(steps=4, batch=2, crop_s=1.0, checkpoint_every=2, eval_every=2, warmup=1)
    straight = train(tiny_dataset, tmp_path / "a", cfg, small, log=lambda m: None)
    # Interrupted after 2 steps (checkpoint), then resumed to 4.
    train(
        tiny_dataset, tmp_path / "b", TrainConfig(**{**cfg.__dict__, "steps": 2}), small, log=lambda m: None
    )
    assert load_checkpoint(tmp_path / "b")[2]["step"] == 2
    resumed = train(tiny_dataset, tmp_path / "b", cfg, small, log=lambda m: None)
    for (k, v), (_, w) in zip(
        straight.net.state_dict().items(), resumed.net.state_dict().items(), strict=True
    ):
        assert torch.allclose(v, w, atol=1e-6), k
    assert MotionModel.load(tmp_path / "b").config == small


def test_random_eq_is_a_smooth_bounded_gain_and_keeps_the_energy_column_true() -> None:
    from stream_avatar.audio.features import EPS, N_MELS
    from stream_avatar.train.motion import _BAND_WEIGHT, random_eq

    rng = np.random.default_rng(0)
    mel = rng.uniform(1e-6, 1e-2, (50, N_MELS))
    rows = np.concatenate([np.log(mel + EPS), np.log(mel @ _BAND_WEIGHT)[:, None]], axis=1).astype(np.float32)
    for seed in range(5):
        out = random_eq(rows, np.random.default_rng(seed))
        gain_db = 10.0 * (out[:, :N_MELS] - rows[:, :N_MELS]) / np.log(10.0)
        assert np.allclose(gain_db, gain_db[0], atol=0.05)  # the same gain at every row
        assert np.abs(gain_db).max() <= 9.5 and np.abs(np.diff(gain_db[0])).max() < 1.0  # bounded, smooth
        # The energy column is the log of the band-weighted power of the new mel rows.
        energy = np.log(np.exp(out[:, :N_MELS].astype(np.float64)) @ _BAND_WEIGHT)
        assert np.allclose(out[:, N_MELS], energy, atol=1e-3)


def test_delta_loss_penalises_jitter_the_target_does_not_have() -> None:
    from stream_avatar.train.motion import TrainConfig, loss_fn

    torch.manual_seed(0)
    net = Audio2MotionNet(ModelConfig(channels=16, dilations=(1, 2)))
    n = 10
    rows = 4 * n + net.config.lookahead_rows
    batch = {
        "x": torch.randn(2, net.config.n_input, rows),
        "emotion": torch.zeros(2, net.config.emotion_dim),
        "mouth": torch.full((2, n, 9), 0.5),
        "viseme": torch.zeros(2, n, dtype=torch.long),
        "pitch": torch.zeros(2, n),
        "brow": torch.zeros(2, n),
        "brow_mask": torch.zeros(2, n),
        "mask": torch.ones(2, n),
    }
    _, parts = loss_fn(net, batch, TrainConfig())
    jitter = dict(batch, mouth=batch["mouth"] + 0.2 * (torch.arange(n) % 2)[None, :, None])
    _, parts_j = loss_fn(net, jitter, TrainConfig())
    assert parts_j["delta"] > parts["delta"] + 0.03  # the target jumps by 0.2 every frame


def test_shipped_weights_load() -> None:
    if not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        pytest.fail(f"the shipped motion model is missing from {DEFAULT_MODEL_DIR}")
    model = MotionModel.load()
    assert model.config.lookahead_rows <= 4
    size = sum(p.numel() for p in model.net.parameters()) * 4
    assert size < 8e6, "shipped weights should stay a few MB"


def test_shipped_model_beats_dsp_on_real_speech() -> None:
    from stream_avatar.data import realspeech
    from stream_avatar.eval.motion import pearson, predict_jaw, real_clips

    try:
        realspeech.load_clips()
    except realspeech.MissingPackageError as exc:
        pytest.skip(f"real-speech audio not installed: {exc}")
    from stream_avatar.motion.dsp_driver import DSPMouthDriver

    clips = [c for c in real_clips() if c.group == "real"]
    assert len(clips) >= 5
    model = MotionModel.load()
    learned = np.mean(
        [pearson(predict_jaw(lambda: LearnedMouthDriver(model=model), c.audio), c.target) for c in clips]
    )
    dsp = np.mean([pearson(predict_jaw(DSPMouthDriver, c.audio), c.target) for c in clips])
    assert learned > dsp + 0.05, (learned, dsp)
    assert learned > 0.6


def test_cpu_streaming_step_matches_the_torch_module() -> None:
    """The numpy streaming step (CPU) computes what Audio2MotionNet.forward computes."""
    from stream_avatar.audio.features import extract_features
    from stream_avatar.motion.learned import normalize_features

    model = _random_model()
    with torch.no_grad():
        for block in model.net.blocks:
            block.film.weight.normal_(0, 0.5)
    model = MotionModel(model.net)  # rebuild the numpy weights after the edit
    rows = normalize_features(extract_features(_speechlike(2.0)), model.config.background)
    emo = np.linspace(0, 1, 8).astype(np.float32)
    with torch.inference_mode():
        ref = model.net(torch.from_numpy(rows.T[None].copy()), torch.from_numpy(emo[None]))[0][0].T.numpy()
    state = None
    parts = []
    for i in range(0, rows.shape[0], 3):
        out, state = model.stream(rows[i : i + 3], emo, state)
        parts.append(out)
    assert np.abs(np.concatenate(parts) - ref).max() < 1e-4

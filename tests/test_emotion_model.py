"""The emotion stage: embedder + bank + discriminator (model, streaming, training, engine wiring)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from stream_avatar.emotion import facs
from stream_avatar.emotion.features import (
    BANDS,
    BASELINE_COLUMNS,
    SAMPLES_PER_FRAME,
    TOKEN_DIM,
    FrameTokens,
    SpeakerBaseline,
    clip_tokens,
    voiced_sums,
)
from stream_avatar.emotion.inference import (
    CONFIDENT_P,
    UNIFORM_NEUTRAL,
    VOICE_PRIOR_NEUTRAL,
    EmotionModel,
    EmotionStream,
    Estimate,
    clip_estimates,
    prior_with_neutral,
)
from stream_avatar.emotion.model import Discriminator, EmotionConfig, EmotionNet
from stream_avatar.motion import rig


def _random_model(seed: int = 0) -> EmotionModel:
    torch.manual_seed(seed)
    cfg = EmotionConfig()
    return EmotionModel(EmotionNet(cfg), Discriminator(cfg))


def _voiced(seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A buzzy vowel-like signal with syllable-rate loudness and pitch movement (voiced to the tracker)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * x * env + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def test_frame_tokens_stream_equals_whole_clip_and_pitch_is_read() -> None:
    audio = _voiced(1.5, f0=160.0)
    whole = clip_tokens(audio)
    s = FrameTokens()
    parts = [s.push(audio[i : i + 517]) for i in range(0, audio.size, 517)]
    streamed = np.concatenate(parts)
    assert whole.shape == (audio.size // SAMPLES_PER_FRAME, TOKEN_DIM)
    assert np.abs(whole - streamed[: whole.shape[0]]).max() < 1e-5
    voiced = whole[:, -1] > 0
    assert voiced.mean() > 0.8
    f0 = 150.0 * 2.0 ** np.median(whole[voiced, -2])
    assert abs(f0 - 160.0) < 10.0, f0


def test_streaming_equals_whole_clip_inference() -> None:
    model = _random_model()
    audio = np.concatenate([_voiced(3.2, seed=1), np.zeros(8000, np.float32), _voiced(1.0, f0=220, seed=2)])
    whole = clip_estimates(model, audio)
    stream = EmotionStream(model)
    got: list[Estimate] = []
    for i in range(0, audio.size, 333):
        got += stream.push(audio[i : i + 333])
    assert len(got) == len(whole) == audio.size // SAMPLES_PER_FRAME
    assert stream.updates > 5
    diff = max(float(np.abs(a.probs - b.probs).max()) for a, b in zip(got, whole, strict=True))
    diff_mu = max(float(np.abs(a.mu - b.mu).max()) for a, b in zip(got, whole, strict=True))
    assert diff < 1e-4 and diff_mu < 1e-4, (diff, diff_mu)
    # Silence says nothing: the first frames (before enough voiced speech) are neutral.
    assert got[0].label == "neutral" and got[0].intensity == 0.0


def _tokens(n: int, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.normal(0.0, 1.0, (n, TOKEN_DIM)).astype(np.float32)
    t[:, -1] = np.where(rng.random(n) < 0.6, 0.8, 0.0)
    t[:, BASELINE_COLUMNS] += offset
    t[t[:, -1] == 0, BANDS + 2] = 0.0
    return t


def test_speaker_baseline_streams_and_maps_a_voice_onto_the_population() -> None:
    mean, std = np.zeros(BASELINE_COLUMNS.size), np.ones(BASELINE_COLUMNS.size)
    # A voice 2 units above the population on every column, twice as spread.
    tokens = _tokens(3000, 0)
    tokens[:, BASELINE_COLUMNS] = tokens[:, BASELINE_COLUMNS] * 2.0 + 2.0
    tokens[tokens[:, -1] == 0, BANDS + 2] = 0.0
    whole = SpeakerBaseline(mean, std, 50).apply(tokens)
    b = SpeakerBaseline(mean, std, 50)
    chunked = np.concatenate(
        [b.apply(tokens[i : i + 7]) for i in range(0, len(tokens), 7)] + [b.apply(tokens[:0])]
    )
    assert np.abs(whole - chunked).max() < 1e-5
    late = whole[1500:]
    voiced = late[:, -1] > 0
    cols = late[voiced][:, BASELINE_COLUMNS]
    assert np.abs(cols.mean(axis=0)).max() < 0.15 and np.abs(cols.std(axis=0) - 1.0).max() < 0.15
    assert np.all(whole[~(whole[:, -1] > 0), BANDS + 2] == 0.0)  # no pitch where unvoiced
    # The first frame is read against the population alone; other columns pass through.
    assert np.allclose(whole[0, BASELINE_COLUMNS], tokens[0, BASELINE_COLUMNS])
    others = [c for c in range(TOKEN_DIM) if c not in set(BASELINE_COLUMNS.tolist())]
    assert np.array_equal(whole[:, others], tokens[:, others])
    # Statistics heard before (a session's earlier clips) fold in as if streamed.
    first, second = tokens[:1000], tokens[1000:2000]
    primed = SpeakerBaseline(mean, std, 50)
    primed.add(*voiced_sums(first))
    assert np.abs(primed.apply(second) - whole[1000:2000]).max() < 1e-4
    with pytest.raises(ValueError):
        SpeakerBaseline(mean[:3], std[:3], 50)
    with pytest.raises(ValueError):
        SpeakerBaseline(mean, std * 0.0, 50)
    with pytest.raises(ValueError):
        SpeakerBaseline(mean, std, 0)


def _baseline_model(seed: int = 0) -> EmotionModel:
    torch.manual_seed(seed)
    cfg = EmotionConfig()
    n = BASELINE_COLUMNS.size
    meta = {"inference": {"speaker_baseline": {"prior_frames": 50.0, "mean": [0.0] * n, "std": [0.5] * n}}}
    return EmotionModel(EmotionNet(cfg), Discriminator(cfg), meta)


def test_a_session_baseline_carries_from_clip_to_clip() -> None:
    model = _baseline_model()
    one, two = _voiced(2.4, f0=120.0, seed=3), _voiced(2.4, f0=240.0, seed=4)
    stream = EmotionStream(model)
    got: list[Estimate] = []
    audio = np.concatenate([one, two])
    for i in range(0, audio.size, 700):
        got += stream.push(audio[i : i + 700])
    session = model.new_baseline()
    whole = clip_estimates(model, audio)
    first = clip_estimates(model, one, baseline=session)
    second = clip_estimates(model, two, baseline=session)
    diff = max(float(np.abs(a.mu - b.mu).max()) for a, b in zip(got, whole, strict=True))
    assert diff < 1e-4
    # A session's first clip offline is the stream's start; its second, read with the baseline the
    # first left, is the stream's end (up to the level tracker, which restarts with a clip) and not
    # what a fresh session reads.
    assert len(first) == one.size // SAMPLES_PER_FRAME
    assert max(float(np.abs(a.mu - b.mu).max()) for a, b in zip(first, got, strict=False)) < 1e-4
    fresh = clip_estimates(model, two)
    carried = float(np.abs(second[-1].mu - got[-1].mu).max())
    assert carried < 0.5 * float(np.abs(fresh[-1].mu - got[-1].mu).max()), carried
    # A malformed baseline is refused when the model loads, not at a stream's first frame.
    with pytest.raises(ValueError):
        EmotionModel(
            model.net,
            model.disc,
            {"inference": {"speaker_baseline": {"prior_frames": 50, "mean": [0.0], "std": [1.0]}}},
        )


def test_gradients_flow_through_the_vq_straight_through() -> None:
    torch.manual_seed(0)
    cfg = EmotionConfig()
    net = EmotionNet(cfg)
    audio = torch.randn(4, cfg.window_frames, cfg.token_dim)
    mask = torch.ones(4, cfg.window_frames, dtype=torch.bool)
    rigs = torch.zeros(4, cfg.window_frames, cfg.rig_dim)
    nomask = torch.zeros_like(mask)
    mu, _ = net.embedder(audio, mask, rigs, nomask)
    out = net.bank(mu)
    # The forward value of the quantised query is the prototype itself ...
    q_st_minus_proto = out.vector - net.bank.mix(torch.cat([net.bank.prototypes[out.code], out.vector], -1))
    assert q_st_minus_proto.shape == out.vector.shape
    # ... and a loss on the bank's emotion vector alone reaches the embedder (straight-through).
    net.zero_grad()
    out.vector.pow(2).sum().backward(retain_graph=True)
    grads = [p.grad for p in net.embedder.head.parameters()]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # The commitment loss moves both the prototypes and the query.
    net.zero_grad()
    out.commit_loss.backward()
    assert net.bank.prototypes.grad is not None and float(net.bank.prototypes.grad.abs().sum()) > 0
    assert net.embedder.head.weight.grad is not None and float(net.embedder.head.weight.grad.abs().sum()) > 0


def test_either_modality_alone_works() -> None:
    model = _random_model()
    cfg = model.config
    rigs = np.random.default_rng(0).uniform(0, 0.3, (2, cfg.window_frames, rig.RIG_SIZE)).astype(np.float32)
    audio = np.random.default_rng(1).normal(0, 0.3, (2, cfg.window_frames, TOKEN_DIM)).astype(np.float32)
    for a, v in ((audio, None), (None, rigs), (audio, rigs)):
        est = model.estimate_windows(a, v)
        assert len(est) == 2 and all(
            np.isfinite(e.probs).all() and abs(e.probs.sum() - 1) < 1e-5 for e in est
        )


def test_checkpoint_round_trip(tmp_path) -> None:
    model = _random_model(3)
    model.save(tmp_path, meta={"note": "test"})
    again = EmotionModel.load(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["note"] == "test"
    audio = _voiced(2.5, seed=4)
    a, b = clip_estimates(model, audio), clip_estimates(again, audio)
    assert max(float(np.abs(x.probs - y.probs).max()) for x, y in zip(a, b, strict=True)) == 0.0
    windows = np.zeros((1, 40, rig.RIG_SIZE), np.float32)
    assert np.array_equal(model.discriminate(windows), again.discriminate(windows))


def test_voice_prior_reweights_the_voice_only(tmp_path) -> None:
    """The bank's posteriors (uniform training prior) re-weighted to the voice prior: p_i * prior_i,
    renormalised; streaming and whole-clip agree with it; rigs (reference clips) keep the uniform
    prior; the prior is saved in the config and read back; a bad share is refused."""
    model = _random_model(6)
    assert np.allclose(model.voice_prior, 0.125)  # no "inference" in the meta: the training prior
    model.save(tmp_path, meta={"inference": {"voice_prior_neutral": 0.5}})
    shifted = EmotionModel.load(tmp_path)
    prior = shifted.voice_prior
    assert (
        prior[0] == pytest.approx(0.5)
        and np.allclose(prior[1:], 0.5 / 7)
        and prior.sum() == pytest.approx(1.0)
    )
    audio = _voiced(3.0, seed=7)
    plain = clip_estimates(shifted, audio, prior=prior_with_neutral(UNIFORM_NEUTRAL))
    voice = clip_estimates(shifted, audio)
    assert any(e.probs[0] < 1.0 for e in plain)
    for a, b in zip(plain, voice, strict=True):
        expected = a.probs * prior / np.sum(a.probs * prior)
        assert np.abs(b.probs - expected).max() < 1e-5
        assert b.probs[0] >= a.probs[0] - 1e-6 and a.intensity == b.intensity
    stream = EmotionStream(shifted)
    got: list[Estimate] = []
    for i in range(0, audio.size, 640):
        got += stream.push(audio[i : i + 640])
    assert max(float(np.abs(x.probs - y.probs).max()) for x, y in zip(got, voice, strict=True)) < 1e-4
    rigs = np.random.default_rng(0).uniform(0, 0.5, (2, 30, rig.RIG_SIZE)).astype(np.float32)
    a, b = model.estimate_windows(None, rigs), shifted.estimate_windows(None, rigs)
    assert all(np.abs(x.probs - y.probs).max() < 1e-6 for x, y in zip(a, b, strict=True))
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="prior share of neutral"):
            prior_with_neutral(bad)


def test_shipped_model_reads_the_voice_with_the_voice_prior(shipped: EmotionModel) -> None:
    assert shipped.meta["inference"]["voice_prior_neutral"] == VOICE_PRIOR_NEUTRAL
    assert shipped.voice_prior[0] == pytest.approx(VOICE_PRIOR_NEUTRAL)


def test_engine_emotion_estimator_takes_the_configured_prior(shipped: EmotionModel) -> None:
    from stream_avatar.session.engine import make_emotion_estimator

    assert make_emotion_estimator(25).prior[0] == pytest.approx(VOICE_PRIOR_NEUTRAL)
    assert make_emotion_estimator(25, 0.3).prior[0] == pytest.approx(0.3)
    assert make_emotion_estimator(25, 0.3).prior[1:] == pytest.approx([0.1] * 7)


def test_estimate_shows_an_emotion_only_when_confident() -> None:
    probs = np.full(8, 0.125, np.float32)
    diffuse = Estimate(probs, 0.8, np.zeros(16), np.zeros(16))
    assert diffuse.weights() == {} and not diffuse.motion_vector().any()
    p = np.zeros(8, np.float32)
    p[facs.EMOTIONS.index("sad")] = CONFIDENT_P + 0.1
    p[0] = 1 - p.sum()
    sure = Estimate(p, 0.6, np.zeros(16), np.zeros(16))
    assert sure.weights() == {"sad": pytest.approx(0.6)}
    assert sure.motion_vector()[facs.EMOTIONS.index("sad")] == pytest.approx(0.6)


def test_training_smoke_and_resume_equals_uninterrupted(tiny_dataset, tmp_path) -> None:
    from stream_avatar.train.emotion import TrainConfig, train

    small = EmotionConfig(d_model=32, heads=2, audio_layers=1, per_emotion=2, disc_channels=16)
    cfg = TrainConfig(
        steps=6, disc_steps=4, batch=8, checkpoint_every=5, eval_every=5, threads=1, response_frames=8
    )
    logs: list[str] = []
    full = train([tiny_dataset], tmp_path / "full", cfg, small, log=logs.append)
    assert (tmp_path / "full" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["inference"]["voice_prior_neutral"] == VOICE_PRIOR_NEUTRAL
    assert full.voice_prior[0] == VOICE_PRIOR_NEUTRAL
    base = saved["inference"]["speaker_baseline"]
    assert len(base["mean"]) == len(base["std"]) == BASELINE_COLUMNS.size
    assert base["prior_frames"] == cfg.baseline_frames and min(base["std"]) > 0
    assert EmotionModel.load(tmp_path / "full").new_baseline() is not None
    # Interrupted after 5 steps (a checkpoint), then resumed to the end.
    part = TrainConfig(**{**cfg.__dict__, "steps": 1})  # 4 + 1 = 5 steps: stops at the checkpoint
    train([tiny_dataset], tmp_path / "resumed", part, small, log=logs.append)
    resumed = train([tiny_dataset], tmp_path / "resumed", cfg, small, log=logs.append)
    assert any("resumed at step 5" in m for m in logs)
    for (k, a), (_, b) in zip(full.net.state_dict().items(), resumed.net.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


# ----------------------------------------------------------------------------- engine wiring


class _FixedEstimator:
    """Stands in for EmotionStream: a scripted estimate per frame (so the wiring is tested alone)."""

    def __init__(self, label: str, intensity: float = 0.9) -> None:
        p = np.zeros(8, np.float32)
        p[facs.EMOTIONS.index(label)] = 0.9
        p[0] += 0.1
        self.estimate = Estimate(p, intensity, np.zeros(16), np.zeros(16))

    def push(self, samples: np.ndarray) -> list[Estimate]:
        return [self.estimate] * (np.asarray(samples).size // SAMPLES_PER_FRAME)


async def _engine_rigs(spec: str, estimator) -> list:  # type: ignore[no-untyped-def]
    from stream_avatar.motion.dsp_driver import DSPMouthDriver
    from stream_avatar.motion.idle import IdleLife
    from stream_avatar.session.engine import AvatarEngine
    from tests.fakes import FakeRenderer

    engine = AvatarEngine(
        FakeRenderer(8),
        DSPMouthDriver(),
        IdleLife(seed=0),
        emotion=facs.EmotionLayer(25, facs.parse(spec)),
        emotion_estimator=estimator,
        warn_when_behind=False,
    )
    engine.start()
    await engine.feed(_voiced(2.0), 16000)
    engine.end_input()
    items = [item async for item in engine]
    await engine.aclose()
    return items


async def test_auto_follows_the_voice_and_operator_only_ignores_it() -> None:
    smile = rig.index("mouthSmileLeft")
    frown = rig.index("mouthFrownLeft")
    happy = await _engine_rigs("auto", _FixedEstimator("happy"))
    sad = await _engine_rigs("auto", _FixedEstimator("sad"))
    assert happy[-1].emotion["happy"] == pytest.approx(0.9) and sad[-1].emotion["sad"] == pytest.approx(0.9)
    assert happy[-1].rig[smile] > sad[-1].rig[smile] + 0.3
    assert sad[-1].rig[frown] > happy[-1].rig[frown] + 0.3
    # Operator only: the voice's estimate changes nothing.
    op_happy_voice = await _engine_rigs("angry:0.7", _FixedEstimator("happy"))
    op_no_voice = await _engine_rigs("angry:0.7", None)
    assert op_happy_voice[-1].emotion == {**{n: 0.0 for n in facs.EMOTIONS}, "angry": 0.7, "neutral": 0.3}
    for a, b in zip(op_happy_voice, op_no_voice, strict=True):
        assert np.array_equal(a.rig, b.rig)
    # A mix: the operator's share plus the voice's estimate on the rest.
    mixed = await _engine_rigs("auto+angry:0.3", _FixedEstimator("happy"))
    assert mixed[-1].emotion["angry"] == pytest.approx(0.3)
    assert mixed[-1].emotion["happy"] == pytest.approx(0.7 * 0.9, abs=1e-3)


# ------------------------------------------------------------------------ the shipped model


@pytest.fixture(scope="module")
def shipped() -> EmotionModel:
    return EmotionModel.load()


def _rendered_clip(avatar, speech: np.ndarray, spec: str, tmp_path, rig_out=None):  # type: ignore[no-untyped-def]
    """3 s of ``speech`` rendered on ``avatar`` with emotion ``spec`` (256 px MP4) → its path."""
    import wave

    from stream_avatar.config import WatermarkConfig
    from stream_avatar.offline import render_file

    wav = tmp_path / "speech.wav"
    pcm = np.clip(np.rint(np.asarray(speech[: 16000 * 3]) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    mp4 = tmp_path / f"{spec.split(':')[0]}.mp4"
    render_file(
        wav,
        mp4,
        avatar=avatar,
        size=256,
        rig_out=rig_out,
        progress=False,
        emotion=facs.parse(spec),
        device="cpu",
        # The invisible mark carries the render's time: off, so every run reads the same pixels.
        watermark=WatermarkConfig(enabled=False),
    )
    return mp4


@pytest.mark.slow
@pytest.mark.parametrize("emotion", facs.EMOTIONS)
def test_emotion_ref_on_a_rendered_clip_selects_its_emotion(
    emotion: str, shipped: EmotionModel, default_avatar, speech_16k, tmp_path
) -> None:
    """A clip rendered with emotion X, read back through face mesh → fitter → the visual branch, gives X
    (every emotion; neutral gives no weights); the rendered file's rig lines carry the frame's emotion
    probabilities."""
    from stream_avatar.capture.reference import clip_emotion

    rig_out = tmp_path / "rig.jsonl"
    spec = "neutral" if emotion == "neutral" else f"{emotion}:0.8"
    mp4 = _rendered_clip(default_avatar(256), speech_16k, spec, tmp_path, rig_out=rig_out)
    lines = [json.loads(line) for line in rig_out.read_text().splitlines()]
    level = 1.0 if emotion == "neutral" else 0.8
    assert lines and all(line["emotion"][emotion] == pytest.approx(level) for line in lines)
    weights = clip_emotion(mp4, model=shipped)
    assert list(weights) == ([] if emotion == "neutral" else [emotion]), weights


def test_neutral_image_errors(tmp_path) -> None:
    import cv2

    from stream_avatar.capture.reference import ReferenceError, neutral_landmarks

    with pytest.raises(ReferenceError, match=r"neutral image.*not an image"):
        neutral_landmarks(b"GIF89a but not really")
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(ReferenceError, match=r"neutral image wall\.png: no face found"):
        neutral_landmarks(blank)
    with pytest.raises(ReferenceError, match="neutral image"):
        neutral_landmarks(tmp_path / "missing.jpg")


@pytest.mark.slow
def test_emotion_ref_neutral_reads_a_stranger_against_their_own_face(
    shipped: EmotionModel, speech_16k, tmp_path
) -> None:
    """Hopper (closed mouth) rendered happy: against the default portrait's broadly smiling neutral face
    her smile reads as no smile at all; against her own photo (``neutral_image``) it reads happy."""
    from stream_avatar.avatar.store import AvatarStore
    from stream_avatar.capture.reference import clip_emotion
    from tests.fakes import TEST_CONSENT
    from tests.test_portraits import _hopper

    photo = _hopper(tmp_path)
    avatar = AvatarStore(tmp_path / "store").enroll(photo, size=256, consent=TEST_CONSENT)
    mp4 = _rendered_clip(avatar, speech_16k, "happy:0.8", tmp_path)
    assert list(clip_emotion(mp4, model=shipped, neutral_image=photo)) == ["happy"]
    assert "happy" not in clip_emotion(mp4, model=shipped)


def test_corpus_clips_train_the_audio_branch(tmp_path) -> None:
    """A CREMA-D folder (the reader's naming) becomes audio-only clips with the corpus's labels."""
    import wave

    from stream_avatar.train.emotion import load_corpus_clips

    audio_dir = tmp_path / "AudioWAV"
    audio_dir.mkdir()
    for name in ("1001_DFA_ANG_XX", "1002_IEO_SAD_LO", "1002_IEO_NEU_XX"):
        pcm = np.rint(_voiced(1.2, seed=len(name)) * 32767).astype("<i2")
        with wave.open(str(audio_dir / f"{name}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm.tobytes())
    clips = load_corpus_clips([tmp_path])
    got = sorted((c.speaker, facs.EMOTIONS[c.emotion], c.has_rigs) for c in clips)
    assert got == [
        ("crema-d:1001", "angry", False),
        ("crema-d:1002", "neutral", False),
        ("crema-d:1002", "sad", False),
    ]
    assert all(c.tokens.shape == (30, TOKEN_DIM) for c in clips)


def test_training_takes_a_given_fitter_response(tiny_dataset, tmp_path) -> None:
    """``make train-emotion`` passes the shipped response: it is used, none is measured or cached."""
    from stream_avatar.emotion.inference import DEFAULT_MODEL_DIR
    from stream_avatar.train.emotion import CHECKPOINT, TrainConfig, train

    small = EmotionConfig(d_model=32, heads=2, audio_layers=1, per_emotion=2, disc_channels=16)
    cfg = TrainConfig(steps=2, disc_steps=1, batch=4, checkpoint_every=100, eval_every=100, threads=1)
    shipped = DEFAULT_MODEL_DIR / "fitter_response.safetensors"
    logs: list[str] = []
    train([tiny_dataset], tmp_path / "m", cfg, small, log=logs.append, fitter_response=shipped)
    assert any(f"fitter response from {shipped}" in m for m in logs), logs
    assert not (tmp_path / "m" / CHECKPOINT / "fitter_response.safetensors").exists()


def test_batches_draw_emotions_equally_and_recorded_speech_shares_neutral() -> None:
    """Sampling weights: 1/8 per emotion however many clips each has; recorded (real, neutral) clips
    take their configured share of neutral; an emotion without recorded clips is all synthetic."""
    from stream_avatar.train.emotion import RECORDED, Clip, TrainConfig, sampling_weights

    def clip(emotion: int, synthesizer: str) -> Clip:
        z = np.zeros((10, 1), np.float32)
        return Clip(z, z, emotion, 0.5, "s", "en", synthesizer, "train")

    clips = (
        [clip(0, RECORDED)] * 30
        + [clip(0, "espeak")] * 5
        + [clip(e, "espeak") for e in range(1, 8) for _ in range(e)]
    )
    w = sampling_weights(clips, TrainConfig(recorded_neutral_share=0.25))
    emotions = np.array([c.emotion for c in clips])
    assert np.allclose([w[emotions == e].sum() for e in range(8)], 1 / 8)
    assert np.isclose(w[:30].sum(), 0.25 / 8) and np.isclose(w[30:35].sum(), 0.75 / 8)
    only_synthetic = sampling_weights(clips[30:], TrainConfig())
    assert np.allclose(only_synthetic[:5], 1 / 8 / 5)


def test_voice_quality_cues_are_training_targets_and_training_heads_are_not_saved(tmp_path) -> None:
    from safetensors import safe_open

    from stream_avatar.emotion.model import N_CUES
    from stream_avatar.train.emotion import clip_cues

    vq = {
        "tilt_db": -9.0,
        "breath": 0.04,
        "tremor": 0.4,
        "tremor_hz": 5.0,
        "tension": 0.0,
        "range_factor": 0.45,
    }
    cues = clip_cues({"voice_quality": vq})
    assert cues is not None and cues.shape == (N_CUES,)
    assert np.allclose(cues, [np.log(0.45), -0.9, 1.0, 0.4, 0.0], atol=1e-6)
    assert clip_cues({"prosody": {}}) is None
    cfg = EmotionConfig()
    net = EmotionNet(cfg, n_speakers=3)
    assert net.speaker_head is not None and net.cue_head is not None
    EmotionModel(net, Discriminator(cfg)).save(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "speaker_head" in k or "cue_head" in k]
    EmotionModel.load(tmp_path / "m")  # loads without the training heads


def test_eval_report_on_a_tiny_dataset(tiny_dataset, tmp_path) -> None:
    from stream_avatar.eval.emotion import evaluate_emotion, write_report

    _random_model(5).save(tmp_path / "model")
    report = evaluate_emotion([tiny_dataset], tmp_path / "model", per_split=6, real=False, log=lambda m: None)
    for split in ("test_speaker", "test_language"):
        e = report[split]
        assert e["utterances"] > 0 and 0.0 <= e["accuracy"] <= 1.0
        assert sum(map(sum, e["confusion"])) == e["utterances"]
        assert 0.0 <= e["discriminator_tracks"] <= 1.0
    sim = np.array(report["prototype_similarity"])
    assert sim.shape == (8, 8) and np.allclose(np.diag(sim), 1.0, atol=1e-3)
    files = write_report(report, tmp_path / "out")
    assert {f.name for f in files} >= {"emotion_eval.json", "emotion_eval.md"}
    assert "Confusion (test_speaker" in (tmp_path / "out" / "emotion_eval.md").read_text()


async def test_auto_probabilities_follow_the_voice_angry_vs_sad(shipped: EmotionModel) -> None:
    """Synthetic angry and sad speech of a held-out speaker, through the engine with ``auto``: the
    frames' emotion probabilities move with the voice (sad speech → more "sad"). The face itself does
    not change: no estimate here is confident enough (see CONFIDENT_P) — recorded, not hidden."""
    from stream_avatar.data.synth import DatasetConfig, Plan, _espeak_speakers, assign_splits, make_example
    from stream_avatar.motion.dsp_driver import DSPMouthDriver
    from stream_avatar.motion.idle import IdleLife
    from stream_avatar.session.engine import AvatarEngine
    from tests.fakes import FakeRenderer

    cfg = DatasetConfig(hours=0.01, languages=("en", "hi"), seed=0)
    speakers = _espeak_speakers(cfg)
    splits = assign_splits(speakers, cfg)
    speaker = next(s for s in speakers if splits[s.id] == "test_speaker")
    texts = [
        "I can not believe you did that again today.",
        "Please bring the documents to my office now.",
        "We were waiting for the train for an hour.",
    ]
    p_sad: dict[str, float] = {}
    for emotion in ("angry", "sad"):
        values = []
        for j, text in enumerate(texts):
            plan = Plan(j, 100 + j, text, speaker, emotion, 1.0, "test_speaker", False)
            audio = make_example(plan).audio.astype(np.float32) / 32768.0
            engine = AvatarEngine(
                FakeRenderer(8),
                DSPMouthDriver(),
                IdleLife(seed=0),
                emotion=facs.EmotionLayer(25, facs.parse("auto")),
                emotion_estimator=EmotionStream(shipped),
                warn_when_behind=False,
            )
            engine.start()

            async def feed(engine: AvatarEngine = engine, audio: np.ndarray = audio) -> None:
                await engine.feed(audio, 16000)  # more than the input buffer: fed while frames go out
                engine.end_input()

            feeder = asyncio.create_task(feed())
            items = [item async for item in engine]
            await feeder
            await engine.aclose()
            values += [it.emotion["sad"] for it in items[-25:]]
        p_sad[emotion] = float(np.mean(values))
    assert p_sad["sad"] > p_sad["angry"] + 0.1, p_sad

"""The synthetic dataset end to end: a few-second synth run, reproducible under a seed, split by speaker
and language, arrays aligned, every phoneme of every language mapped to a viseme, and emotion prosody
measured on the generated audio."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy", reason="the data engine needs the train extra: pip install -e .[train]")
espeak = pytest.importorskip("stream_avatar.data.espeak")

from stream_avatar.data import expressive, synth, visemes  # noqa: E402
from stream_avatar.data.synth import DatasetConfig, read_dataset, synthesize_dataset  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _needs_espeak() -> None:
    try:
        espeak.list_voices("en")
    except espeak.EspeakUnavailableError as exc:
        pytest.skip(f"espeak-ng library missing: {exc}")


SMALL = DatasetConfig(
    hours=25.0 / 3600.0,
    seed=7,
    languages=("en", "es", "hi"),
    speakers_per_language=4,
    test_speakers_per_language=1,
    val_speakers_per_language=1,
    holdout_language="hi",
    text_pool=12,
    shard_minutes=0.2,
    workers=1,
)


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.iterdir()):
        if path.name == "dataset.json":
            info = json.loads(path.read_text())
            info.pop("wall_s"), info.pop("realtime_factor"), info["config"].pop("workers")
            out[path.name] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
        else:
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "a"
    synthesize_dataset(root, SMALL)
    return root


def test_synth_run_is_reproducible_whatever_the_workers(dataset: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    again = tmp_path / "b"
    synthesize_dataset(again, replace(SMALL, workers=2))
    assert _digest(again) == _digest(dataset)
    other = tmp_path / "c"
    synthesize_dataset(other, replace(SMALL, seed=8))
    assert (other / "manifest.jsonl").read_bytes() != (dataset / "manifest.jsonl").read_bytes()


def test_layout_counts_and_splits(dataset: Path) -> None:
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["hours"] * 3600 >= SMALL.hours * 3600
    assert info["shards"] >= 2 and (dataset / "shard-00000.safetensors").is_file()
    assert info["unmapped_phonemes"] == {}  # every phoneme met had a viseme
    records = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == info["utterances"] >= 4
    speakers_by_split: dict[str, set[str]] = {}
    for r in records:
        speakers_by_split.setdefault(r["split"], set()).add(r["speaker"])
        assert r["emotion"] in expressive.PROSODY and 0.0 <= r["intensity"] <= 1.0
        assert (r["intensity"] == 0.0) == (r["emotion"] == "neutral")
        if r["language"] == "hi":
            assert r["split"] == "test_language"
        else:
            assert r["split"] != "test_language"
    splits = list(speakers_by_split.values())
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not a & b  # no speaker in two splits
    # the planned assignment holds the configured numbers per language
    speakers = synth.make_speakers(SMALL)
    assignment = synth.assign_splits(speakers, SMALL)
    for lang in ("en", "es"):
        got = [assignment[s.id] for s in speakers if s.language == lang and s.synthesizer == "espeak"]
        assert got.count("test_speaker") == 1 and got.count("val") == 1 and got.count("train") == 2


def test_arrays_line_up(dataset: Path) -> None:
    n = 0
    for utt in read_dataset(dataset):
        n += 1
        size = utt.audio.size
        assert utt.record["duration_s"] == pytest.approx(size / 16000, abs=1e-3)
        assert utt.targets.shape == (
            math.ceil(size / 640),
            len(json.loads((dataset / "dataset.json").read_text())["rig_names"]),
        )
        assert utt.features.shape[0] == size // 160
        assert np.isfinite(utt.targets).all() and np.isfinite(utt.features).all()
        starts = [s for _, s, _ in utt.phonemes]
        assert starts == sorted(starts) and all(0 <= s < e <= size for _, s, e in utt.phonemes)
        for sym, _, _ in utt.phonemes:
            visemes.viseme_of(sym)
    assert n >= 4


def test_every_phoneme_of_every_language_has_a_viseme() -> None:
    from stream_avatar.data.texts import phoneme_inventory

    missing = {}
    for lang in synth.DEFAULT_LANGUAGES:
        bad = []
        for sym in phoneme_inventory(lang):
            try:
                visemes.viseme_of(sym)
            except KeyError:
                bad.append(sym)
        if bad:
            missing[lang] = bad
    assert not missing, missing


def _f0_hz(x: np.ndarray, rate: int = 16000) -> float:
    """Median F0 over loud 40 ms windows by autocorrelation (60-400 Hz)."""
    win, hop = 640, 320
    lo, hi = rate // 400, rate // 60
    level = np.sqrt(np.mean(x**2))
    f0 = []
    for a in range(0, x.size - win, hop):
        w = x[a : a + win]
        if np.sqrt(np.mean(w**2)) < level:
            continue
        w = w - w.mean()
        ac = np.correlate(w, w, "full")[win - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            f0.append(rate / lag)
    return float(np.median(f0))


def test_emotion_prosody_differs_in_the_intended_direction() -> None:
    """Mean F0, speaking rate and loudness per emotion, measured on generated audio (not parameters)."""
    from stream_avatar.data.texts import sentences

    speaker = expressive.Speaker("en-00", "en", "en+m1", pitch=45, pitch_range=50, rate_wpm=170, volume=100)
    texts = sentences("en", 6, seed=1)
    measured: dict[str, np.ndarray] = {}
    for emo in ("angry", "neutral", "sad"):
        rows = []
        rng = np.random.default_rng(0)
        for text in texts:
            p = expressive.prosody_for(speaker, emo, 1.0, rng)
            utt = espeak.synthesize(
                text,
                speaker.voice,
                rate_wpm=p.rate_wpm,
                pitch=p.pitch,
                pitch_range=p.pitch_range,
                volume=p.volume,
            )
            speech = [ph for ph in utt.phonemes if ph.symbol != "_"]
            dur = (speech[-1].end - speech[0].start) / 16000
            loud = utt.samples[np.abs(utt.samples) > 1e-3]
            rows.append([_f0_hz(utt.samples), len(speech) / dur, 20 * np.log10(np.sqrt(np.mean(loud**2)))])
        measured[emo] = np.mean(rows, axis=0)
    summary = {k: v.round(1).tolist() for k, v in measured.items()}
    for k in range(3):  # F0, phonemes per second, loudness
        assert measured["angry"][k] > measured["neutral"][k] > measured["sad"][k], summary


def test_cli_data_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream_avatar import cli

    out = tmp_path / "ds"
    code = cli.main(
        [
            "data",
            "synth",
            "--hours",
            "0.002",
            "--out",
            str(out),
            "--languages",
            "en,es",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert Path(captured.out.strip()) == out.resolve()
    assert (out / "manifest.jsonl").read_text().strip()
    code = cli.main(["data", "synth", "--hours", "0.002", "--out", str(out), "--no-progress"])
    assert code == 2 and "not empty" in capsys.readouterr().err

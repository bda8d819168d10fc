"""Real recorded prompts as training data (stream_avatar.data.prompts).

The recordings and transcripts come from Debian packages (asterisk-core-sounds-en-g722,
asterisk-core-sounds-en) and the aligner is pocketsphinx; tests that need them skip visibly, naming
what to install. The transcript rules run anywhere.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream_avatar.data import prompts, visemes

SRC = prompts.ASTERISK_EN
HAVE_SOURCE = Path(SRC.audio_dir).is_dir() and Path(SRC.transcripts).is_file()
HAVE_POCKETSPHINX = importlib.util.find_spec("pocketsphinx") is not None
needs_source = pytest.mark.skipif(
    not (HAVE_SOURCE and HAVE_POCKETSPHINX),
    reason=f"needs apt-get install {SRC.package_audio} {SRC.package_text} and pip install pocketsphinx",
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Please press 1 to mute, 2 to exit.", "please press one to mute two to exit"),
        ("press * to toggle pause, press # to enter", "press star to toggle pause press pound to enter"),
        ("Call-Forward on No Answer.", "call forward on no answer"),
        ("letters/at: at [@]", "letters at at"),
        ('Dial 4 to a polite "don\'t call" menu', "dial four to a polite don't call menu"),
        ("ninety 90 and 162", "ninety ninety and one hundred and sixty two"),
    ],
)  # fmt: skip
def test_transcripts_become_aligner_words(text: str, expected: str) -> None:
    out, reason = prompts.normalize_transcript(text)
    assert (out, reason) == (expected, "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[ascending tones]", "nothing spoken"),
        ("(10 seconds of silence)", "non-speech note"),
        ("<beep ascending>", "non-speech note"),
        ("Please leave your message after the tone. (simple tone sound plays)", "non-speech note"),
    ],
)
def test_transcripts_of_non_speech_are_left_out(text: str, reason: str) -> None:
    assert prompts.normalize_transcript(text) == (None, reason)


def test_transcript_file_is_read_in_order(tmp_path: Path) -> None:
    p = tmp_path / "t.txt.gz"
    p.write_bytes(gzip.compress(b"; comment\n\nb-one: Hello: world.\na/two: Two.\nno colon\nb-one: again\n"))
    assert prompts.read_transcripts(p) == {"b-one": "Hello: world.", "a/two": "Two."}
    with pytest.raises(prompts.MissingPackageError, match="apt-get install pkg"):
        prompts.read_transcripts(tmp_path / "absent.txt", package="pkg")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown prompt source"):
        prompts.PromptsConfig(source="nope")
    with pytest.raises(ValueError, match="copies"):
        prompts.PromptsConfig(copies=0)


def _build(out: Path, seed_env: str | None = None) -> None:
    env = {**os.environ}
    if seed_env is not None:
        env["PYTHONHASHSEED"] = seed_env
    cmd = [sys.executable, "-m", "stream_avatar", "data", "prompts", "--out", str(out), "--limit", "10",
           "--copies", "2", "--workers", "1", "--no-progress"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, timeout=300)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.name != "dataset.json":  # holds the wall time
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small dataset, built once; only the ``needs_source`` tests use it (they skip without it)."""
    out = tmp_path_factory.mktemp("prompts") / "a"
    _build(out, "1")
    return out


@needs_source
@pytest.mark.slow
def test_dataset_is_byte_identical_across_hash_seeds(built: Path, tmp_path: Path) -> None:
    _build(tmp_path / "b", "777")
    assert _digest(built) == _digest(tmp_path / "b")


@needs_source
@pytest.mark.slow
def test_dataset_reads_like_a_synthetic_one_and_phones_line_up(built: Path) -> None:
    import json

    from stream_avatar.data.synth import read_dataset
    from stream_avatar.train.motion import load_tracks

    info = json.loads((built / "dataset.json").read_text(encoding="utf-8"))
    assert info["prompts_used"] == 10 and info["utterances"] == 20
    assert info["counts"]["split"] == {"train": 18, "val": 2}  # every 10th prompt is val
    utts = list(read_dataset(built))
    assert {u.record["synthesizer"] for u in utts} == {"recorded"}
    assert {u.record["speaker"] for u in utts} == {SRC.speaker, SRC.speaker + "-w1"}
    # The phones the aligner placed sit on the speech: vowels are loud, pauses quiet, in every copy
    # (warped and augmented ones included: their phone times were scaled with the audio).
    for u in utts:
        x = u.audio.astype(np.float64)
        vowel, pause = [], []
        for sym, a, b in u.phonemes:
            if b - a < 480:
                continue
            level = float(np.sqrt(np.mean(x[a:b] ** 2)) + 1e-9)
            if sym == visemes.PAUSE:
                pause.append(level)
            elif visemes.viseme_of(sym, "") in ("aa", "E", "ih", "oh", "ou"):
                vowel.append(level)
        assert vowel, u.record["id"]
        if pause:
            assert 20 * np.log10(np.median(vowel) / np.median(pause)) > 6.0, u.record["id"]
    tracks = load_tracks(built, "train")
    assert len(tracks) == 18
    assert all(t.mouth[:, 0].max() > 0.2 for t in tracks)  # the jaw opens somewhere in every prompt

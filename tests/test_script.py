"""Presenter scripts (``stream-avatar render --script``): checks of the file, and a render whose
segments carry their emotions onto the frames."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream_avatar.script import ScriptError, build_track, load_script

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "presenter_script.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "talk.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("voice = 'en'\n", "no \\[\\[segment\\]\\] tables"),
        ("speed = 2\n[[segment]]\ntext = 'hi'\n", "unknown key\\(s\\) speed"),
        ("[[segment]]\ntext = 'hi'\npause_s = 1\n", "segment 1: needs exactly one of text, audio, pause_s"),
        ("[[segment]]\npause_s = 1\n[[segment]]\nemotion = 'happy'\n", "segment 2: needs exactly one"),
        ("[[segment]]\naudio = 'missing.wav'\n", "segment 1: audio file 'missing.wav' not found"),
        ("[[segment]]\ntext = 'hi'\nemotion = 'gleeful'\n", "segment 1: .*gleeful"),
        ("[[segment]]\npause_s = -1\n", "pause_s must be a number of seconds"),
        ("[[segment]]\ntext = 'hi'\nvolume = 3\n", "segment 1: unknown key\\(s\\) volume"),
        ("words_per_minute = 2000\n[[segment]]\ntext = 'hi'\n", "words_per_minute must be an integer"),
        ("[[segment]\n", "not valid TOML"),
    ],
)
def test_bad_scripts_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ScriptError, match=message):
        load_script(write(tmp_path, text))


def test_segments_become_one_track_with_an_emotion_schedule(tmp_path: Path) -> None:
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 8000)).astype(np.float32)
    import wave

    with wave.open(str(tmp_path / "tone.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((tone * 32767).astype("<i2").tobytes())
    script = load_script(
        write(
            tmp_path,
            "gap_s = 0.5\nemotion = 'sad:0.5'\n[[segment]]\naudio = 'tone.wav'\nemotion = 'happy'\n"
            "[[segment]]\npause_s = 1.5\n",
        )
    )
    track, schedule = build_track(script)
    assert track.size == 16000 + 8000 + 24000  # 1 s of tone at 16 kHz, the gap, the pause
    assert schedule == [(0, {"happy": 1.0}), (24000, {"sad": 0.5})]
    assert np.abs(track[24000:]).max() == 0.0 and np.abs(track[:16000]).max() > 0.2


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_the_example_script_renders_each_segment_with_its_emotion(tmp_path: Path) -> None:
    out, rig = tmp_path / "opening.mp4", tmp_path / "rig.jsonl"
    cmd = [sys.executable, "-m", "stream_avatar", "render", "--script", str(EXAMPLE), "--out", str(out)]
    cmd += ["--rig-out", str(rig), "--size", "128", "--store", str(tmp_path / "store"), "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    script = load_script(EXAMPLE)
    track, schedule = build_track(script)
    frames = [json.loads(line) for line in rig.read_text().splitlines()]
    assert abs(len(frames) - track.size / 640) <= 2
    import av

    with av.open(str(out)) as container:
        assert container.streams.video[0].frames >= len(frames) - 1 and container.streams.audio
    # Each text segment's frames, from 0.4 s in (the face eases into a new emotion), show its emotion.
    ends = [s for s, _ in schedule[1:]] + [track.size]
    for (start, weights), end in zip(schedule, ends, strict=True):
        if not weights:  # neutral (the pause)
            continue
        name = max(weights, key=lambda k: weights[k])
        span = frames[start // 640 + 10 : end // 640]
        shown = [max(f["emotion"], key=lambda k: f["emotion"][k]) for f in span]
        assert shown and shown.count(name) / len(shown) > 0.8, (name, shown)

"""Presenter scripts: a TOML list of segments (an audio file, or text spoken by espeak-ng, or a pause),
each with its emotion, rendered to one MP4 (``stream-avatar render --script talk.toml --out talk.mp4``).

```toml
voice = "en-us"           # espeak-ng voice of text segments (default: espeak-ng's own)
words_per_minute = 165    # their speaking rate (default 175)
emotion = "neutral"       # the emotion of segments that name none (default neutral)
gap_s = 0.3               # silence between segments (default 0.3)

[[segment]]
text = "Welcome, everyone, to this week's update."
emotion = "happy:0.6"

[[segment]]
pause_s = 1.0

[[segment]]
audio = "question.wav"    # relative to the script's folder; any audio FFmpeg reads
emotion = "surprised:0.5"
```

The segments are joined into one 16 kHz track and rendered by the streaming engine like any file;
each segment's emotion is set when its first sample reaches the engine (after the engine has drained
the previous segment's audio), and the face eases into it (~0.25 s), as it does live.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 16000
ESPEAK_TIMEOUT_S = 60.0
MAX_SEGMENTS = 500
MAX_PAUSE_S = 60.0
_TOP_KEYS = {"voice", "words_per_minute", "emotion", "gap_s", "segment"}
_SEGMENT_KEYS = {"text", "audio", "pause_s", "emotion"}


class ScriptError(ValueError):
    """A script that cannot be rendered; the message names the segment and the problem."""


@dataclass(frozen=True)
class Segment:
    kind: str  # "text", "audio" or "pause"
    value: str | float  # the text, the resolved audio path, or the pause in seconds
    emotion: dict[str, float]


@dataclass(frozen=True)
class Script:
    segments: tuple[Segment, ...]
    voice: str | None
    words_per_minute: int
    gap_s: float


def load_script(path: str | os.PathLike[str]) -> Script:
    """Parse and check a script file (ScriptError with a one-line reason otherwise)."""
    from stream_avatar.emotion.facs import EmotionError, parse

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ScriptError("presenter scripts need Python 3.11 or newer (tomllib)") from None
    src = Path(path)
    try:
        data = tomllib.loads(src.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScriptError(f"cannot read the script {src}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScriptError(f"{src} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ScriptError(
            f"{src}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})"
        )

    def emotion_of(spec: Any, where: str) -> dict[str, float]:
        if not isinstance(spec, str):
            raise ScriptError(f"{where}: emotion must be a string such as 'happy:0.6'")
        try:
            return parse(spec)
        except EmotionError as exc:
            raise ScriptError(f"{where}: {exc}") from None

    default = emotion_of(data.get("emotion", "neutral"), f"{src}")
    voice = data.get("voice")
    if voice is not None and (
        not isinstance(voice, str) or not voice.replace("-", "").replace("+", "").isalnum()
    ):
        raise ScriptError(f"{src}: voice must be an espeak-ng voice name such as 'en-us'")
    wpm = data.get("words_per_minute", 175)
    if isinstance(wpm, bool) or not isinstance(wpm, int) or not 80 <= wpm <= 450:
        raise ScriptError(f"{src}: words_per_minute must be an integer in 80..450")
    gap = data.get("gap_s", 0.3)
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 <= gap <= MAX_PAUSE_S:
        raise ScriptError(f"{src}: gap_s must be a number of seconds in 0..{MAX_PAUSE_S:g}")
    raw = data.get("segment")
    if not isinstance(raw, list) or not raw:
        raise ScriptError(f"{src}: no [[segment]] tables")
    if len(raw) > MAX_SEGMENTS:
        raise ScriptError(f"{src}: {len(raw)} segments, at most {MAX_SEGMENTS}")
    segments = []
    for i, seg in enumerate(raw, 1):
        where = f"{src}, segment {i}"
        if not isinstance(seg, dict):
            raise ScriptError(f"{where}: must be a table")
        extra = sorted(set(seg) - _SEGMENT_KEYS)
        if extra:
            raise ScriptError(
                f"{where}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(_SEGMENT_KEYS))})"
            )
        kinds = [k for k in ("text", "audio", "pause_s") if k in seg]
        if len(kinds) != 1:
            raise ScriptError(
                f"{where}: needs exactly one of text, audio, pause_s (got {', '.join(kinds) or 'none'})"
            )
        kind = kinds[0]
        emotion = emotion_of(seg["emotion"], where) if "emotion" in seg else default
        value = seg[kind]
        if kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise ScriptError(f"{where}: text must be a non-empty string")
            segments.append(Segment("text", value.strip(), emotion))
        elif kind == "audio":
            if not isinstance(value, str) or not value:
                raise ScriptError(f"{where}: audio must be a file path")
            file = (src.parent / value).resolve()  # relative to the script, as a user would expect
            if not file.is_file():
                raise ScriptError(f"{where}: audio file {value!r} not found (looked at {file})")
            segments.append(Segment("audio", str(file), emotion))
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_PAUSE_S:
                raise ScriptError(f"{where}: pause_s must be a number of seconds in (0, {MAX_PAUSE_S:g}]")
            segments.append(Segment("pause", float(value), emotion))
    return Script(tuple(segments), voice, wpm, float(gap))


class EspeakMissingError(ScriptError):
    """espeak-ng is not installed."""


def speak_to_wav(
    text: str, wav_path: Path, voice: str | None = None, words_per_minute: int | None = None
) -> None:
    """Speak ``text`` into ``wav_path`` (22050 Hz mono WAV) with espeak-ng; ScriptError (or
    EspeakMissingError) when it cannot."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakMissingError("espeak-ng is not installed (Debian/Ubuntu: sudo apt-get install espeak-ng)")
    cmd = [exe]
    if voice:
        cmd += ["-v", voice]
    if words_per_minute:
        cmd += ["-s", str(words_per_minute)]
    try:
        done = subprocess.run(
            [*cmd, "-w", str(wav_path), "--", text],
            capture_output=True,
            text=True,
            timeout=ESPEAK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScriptError(f"espeak-ng failed: {exc}") from None
    if done.returncode != 0 or not wav_path.is_file() or wav_path.stat().st_size == 0:
        reason = " ".join(done.stderr.split())[:200] or f"exit status {done.returncode}"
        raise ScriptError(f"espeak-ng failed: {reason}")


def speak(text: str, voice: str | None = None, words_per_minute: int | None = None) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng → (float32 mono samples, rate); ScriptError when it cannot."""
    from stream_avatar.audio.io import load_audio

    with tempfile.TemporaryDirectory(prefix="stream-avatar-say-") as tmp:
        wav = Path(tmp) / "say.wav"
        speak_to_wav(text, wav, voice, words_per_minute)
        return load_audio(wav)


def build_track(script: Script) -> tuple[np.ndarray, list[tuple[int, Mapping[str, float]]]]:
    """The script as one 16 kHz track, and (first sample, emotion) of each segment, in order."""
    from stream_avatar.audio.io import load_audio
    from stream_avatar.audio.resample import resample

    parts: list[np.ndarray] = []
    schedule: list[tuple[int, Mapping[str, float]]] = []
    pos = 0
    gap = np.zeros(round(script.gap_s * SAMPLE_RATE_HZ), np.float32)
    for i, seg in enumerate(script.segments):
        if seg.kind == "pause":
            x = np.zeros(round(float(seg.value) * SAMPLE_RATE_HZ), np.float32)
        else:
            if seg.kind == "text":
                x, rate = speak(str(seg.value), script.voice, script.words_per_minute)
            else:
                x, rate = load_audio(str(seg.value))
            x = resample(np.asarray(x, np.float32), rate, SAMPLE_RATE_HZ).astype(np.float32)
        schedule.append((pos, seg.emotion))
        parts.append(x)
        pos += x.size
        if i + 1 < len(script.segments) and gap.size:
            parts.append(gap)
            pos += gap.size
    return np.concatenate(parts), schedule

"""Readers for emotional-speech corpora as published: CREMA-D, RAVDESS and MEAD, on disk, unmodified.

Users who already hold one of these corpora point a trainer at its folder; this module turns the
folder into ``CorpusItem`` records (audio, optional paired video, emotion, intensity, speaker,
sentence) using nothing but the file naming each corpus publishes, so reading ~10 000 files costs a
directory walk and no decoding. Emotions are mapped onto the project's eight MEAD names
(``stream_avatar.emotion.facs.EMOTIONS``), intensities onto [0, 1] on one scale for all three:

- **MEAD** levels are the reference: ``level_1`` 1/3, ``level_2`` 2/3, ``level_3`` 1.
- **CREMA-D** levels ``LO`` 1/3, ``MD`` 2/3, ``HI`` 1; ``XX`` (unspecified: 11 of the 12 sentences were
  spoken at the actor's natural intensity) 2/3, the middle of the scale.
- **RAVDESS** ``normal`` 2/3 and ``strong`` 1: "normal" is a clear, ordinary portrayal, like MEAD's
  medium level. RAVDESS's ``calm`` has no MEAD counterpart; it is a low-arousal near-neutral state, so
  by default it becomes ``neutral`` at intensity 0 with ``extra["emotion_label"] == "calm"`` kept
  (``calm="skip"`` leaves it out).
- ``neutral`` is always intensity 0, whatever level the name gives.

Published layouts (``root`` is the folder the user passes):

- CREMA-D (github.com/CheyneyComputerScience/CREMA-D): ``AudioWAV/1001_DFA_ANG_XX.wav`` (or only
  ``AudioMP3/*.mp3``) = actor 1001-1091, sentence code, emotion, level. Video, when present, is
  ``VideoFlash/<same stem>.flv`` as published, or ``VideoMP4/<same stem>.mp4`` for a converted copy.
  A clone made without git-lfs holds text pointers instead of audio: those are skipped and counted
  ("git-lfs pointer"), so the log says what went wrong.
- RAVDESS (zenodo 1188976): ``Actor_01/03-01-06-01-02-01-01.wav`` = modality - vocal channel - emotion
  - intensity - statement - repetition - actor. The actor folders may sit directly under ``root`` (all
  zips extracted into one folder) or one level down (each zip into its own folder). The three
  modalities are one take in three formats, so files of one take merge into one item: with the
  full-AV ``.mp4`` (modality 01) the item's audio is that file's own track (in sync with its picture by
  construction) and the audio-only ``.wav`` of the take, if present, is kept in
  ``extra["audio_only_path"]``; without it the ``.wav`` is the audio. Song (vocal channel 02) and
  video-only (modality 02, no sound) are skipped by default; ``include_video_only`` uses a video-only
  file as the picture of a take that has an audio-only ``.wav`` and no full-AV file.
- MEAD (wywu.github.io/projects/MEAD): per actor ``M003/audio.tar`` and ``M003/video.tar``, which the
  user extracts in place first (tar files are not read): ``M003/audio/angry/level_1/001.m4a`` and
  ``M003/video/front/angry/level_1/001.mp4`` (views ``front``, ``down``, ``top``, ``left_30``,
  ``left_60``, ``right_30``, ``right_60``). Audio is ``.m4a`` as published; ``.wav`` with the same naming
  (a converted copy) is accepted too. Each audio clip is paired with the same clip id of one view
  (``front`` by default). ``root`` may be the folder of actors or one actor's folder. Clip ids restart in
  every emotion/level folder and the layout does not say which sentence a clip is, so MEAD items have
  ``sentence == ""`` (the clip id is in ``extra["clip"]``).

Files that do not match the naming are skipped and counted by reason (``CorpusScan.skipped``);
``read_corpus`` logs the counts. ``mead_rig_targets`` turns a MEAD video into per-frame rig targets with
the project's inverse fitter.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from stream_avatar.emotion.facs import EMOTIONS
from stream_avatar.motion import rig

if TYPE_CHECKING:
    import av.container

__all__ = [
    "CORPORA",
    "CREMA_D_SENTENCES",
    "RAVDESS_STATEMENTS",
    "CorpusItem",
    "CorpusKind",
    "CorpusScan",
    "detect_corpus",
    "mead_neutral_landmarks",
    "mead_rig_targets",
    "read_corpus",
    "scan_corpus",
    "split_by_speaker",
]

logger = logging.getLogger(__name__)

CorpusKind = Literal["crema-d", "ravdess", "mead"]
CORPORA: tuple[CorpusKind, ...] = ("crema-d", "ravdess", "mead")

_EXPECTED: dict[str, str] = {
    "crema-d": "CREMA-D (AudioWAV/1001_DFA_ANG_XX.wav)",
    "ravdess": "RAVDESS (Actor_01/03-01-06-01-02-01-01.wav)",
    "mead": "MEAD (M003/audio/angry/level_1/001.m4a, tars extracted)",
}

# --- CREMA-D ------------------------------------------------------------------------------------------

CREMA_D_SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
"""CREMA-D's twelve sentence codes and the sentences (from the corpus's README)."""
_CREMA_EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgusted",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
_CREMA_LEVELS = {"LO": 1.0 / 3.0, "MD": 2.0 / 3.0, "HI": 1.0, "XX": 2.0 / 3.0}
_CREMA_ACTORS = range(1001, 1092)
_CREMA_RE = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")
# (audio folder, extension) in order of preference; (video folder, extension) likewise.
_CREMA_AUDIO = (("AudioWAV", ".wav"), ("AudioMP3", ".mp3"))
_CREMA_VIDEO = (("VideoFlash", ".flv"), ("VideoMP4", ".mp4"))

# --- RAVDESS ------------------------------------------------------------------------------------------

RAVDESS_STATEMENTS: dict[str, str] = {
    "01": "Kids are talking by the door.",
    "02": "Dogs are sitting by the door.",
}
# code -> (RAVDESS's own label, project emotion)
_RAVDESS_EMOTIONS = {
    "01": ("neutral", "neutral"),
    "02": ("calm", "neutral"),
    "03": ("happy", "happy"),
    "04": ("sad", "sad"),
    "05": ("angry", "angry"),
    "06": ("fearful", "fear"),
    "07": ("disgust", "disgusted"),
    "08": ("surprised", "surprised"),
}
_RAVDESS_INTENSITY = {"01": ("normal", 2.0 / 3.0), "02": ("strong", 1.0)}
_RAVDESS_RE = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
_RAVDESS_ACTOR_DIR = re.compile(r"Actor_\d\d")
_FULL_AV, _VIDEO_ONLY, _AUDIO_ONLY = "01", "02", "03"
_RAVDESS_EXT = {_FULL_AV: ".mp4", _VIDEO_ONLY: ".mp4", _AUDIO_ONLY: ".wav"}

# --- MEAD ---------------------------------------------------------------------------------------------

_MEAD_EMOTIONS = frozenset(EMOTIONS)  # MEAD's folder names are the project's emotion names
_MEAD_LEVELS = {"level_1": 1.0 / 3.0, "level_2": 2.0 / 3.0, "level_3": 1.0}
_MEAD_AUDIO_EXT = (".m4a", ".wav")
_MEAD_ACTOR_DIR = re.compile(r"[MW]\d{3}")
_MEAD_CLIP = re.compile(r"\d{3}")

_LFS_HEAD = b"version https://git-lfs"
_SMALL_FILE = 200  # bytes; no real clip is this short, a git-lfs pointer always is


@dataclass(frozen=True)
class CorpusItem:
    """One utterance of a corpus.

    Attributes:
        corpus: "crema-d", "ravdess" or "mead".
        audio_path: the audio (for a RAVDESS full-AV take, the .mp4 itself: its audio track).
        video_path: the paired video, or None.
        emotion: one of ``stream_avatar.emotion.facs.EMOTIONS``.
        intensity: [0, 1] on the module's common scale (0 for neutral).
        speaker: corpus-prefixed actor id ("crema-d:1001", "ravdess:01", "mead:M003").
        language: "en" for all three corpora.
        sentence: the sentence text (CREMA-D, RAVDESS) or "" where the naming does not give it (MEAD).
        extra: the raw label fields of the name, as strings (not part of hashing).
    """

    corpus: CorpusKind
    audio_path: Path
    video_path: Path | None
    emotion: str
    intensity: float
    speaker: str
    language: str
    sentence: str
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r} (known: {', '.join(CORPORA)})")
        if self.emotion not in EMOTIONS:
            raise ValueError(f"unknown emotion {self.emotion!r} (known: {', '.join(EMOTIONS)})")
        if not 0.0 <= self.intensity <= 1.0:
            raise ValueError(f"intensity must be in [0, 1], got {self.intensity}")


@dataclass(frozen=True)
class CorpusScan:
    """What a directory walk found: the items (sorted) and every skipped file with its reason."""

    kind: CorpusKind
    root: Path
    items: tuple[CorpusItem, ...]
    skipped: tuple[tuple[Path, str], ...]

    def skip_counts(self) -> dict[str, int]:
        """{reason: number of files}, most frequent first."""
        return dict(Counter(reason for _, reason in self.skipped).most_common())


class _Skips:
    """Collects skipped files; a small helper so every reader reports the same way."""

    def __init__(self) -> None:
        self.entries: list[tuple[Path, str]] = []

    def add(self, path: Path, reason: str) -> None:
        self.entries.append((path, reason))

    def unusable(self, path: Path) -> bool:
        """True (and recorded) for an empty file or a git-lfs pointer; only small files are read."""
        size = path.stat().st_size
        if size == 0:
            self.add(path, "empty file")
            return True
        if size < _SMALL_FILE:
            with path.open("rb") as f:
                if f.read(len(_LFS_HEAD)) == _LFS_HEAD:
                    self.add(path, "git-lfs pointer (run `git lfs pull`)")
                    return True
        return False


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


# --- layout detection ---------------------------------------------------------------------------------


def _crema_audio_dir(root: Path) -> tuple[Path, str] | None:
    for name, ext in _CREMA_AUDIO:
        if (root / name).is_dir():
            return root / name, ext
    return None


def _ravdess_actor_dirs(root: Path) -> list[Path]:
    """Actor_NN folders at ``root`` itself, directly under it, or one level further down."""
    if _RAVDESS_ACTOR_DIR.fullmatch(root.name):
        return [root]
    found = [d for d in root.iterdir() if d.is_dir() and _RAVDESS_ACTOR_DIR.fullmatch(d.name)]
    for sub in root.iterdir():
        if sub.is_dir() and not _RAVDESS_ACTOR_DIR.fullmatch(sub.name):
            found += [d for d in sub.iterdir() if d.is_dir() and _RAVDESS_ACTOR_DIR.fullmatch(d.name)]
    return sorted(found)


def _mead_actor_dirs(root: Path) -> list[Path]:
    """Actor folders (M003, W009, ...) holding audio/ or video/: ``root`` itself or directly under it."""

    def is_actor(d: Path) -> bool:
        return bool(_MEAD_ACTOR_DIR.fullmatch(d.name)) and ((d / "audio").is_dir() or (d / "video").is_dir())

    if is_actor(root):
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and is_actor(d))


def _looks_like(root: Path, kind: str) -> bool:
    if kind == "crema-d":
        return _crema_audio_dir(root) is not None
    if kind == "ravdess":
        return bool(_ravdess_actor_dirs(root))
    return bool(_mead_actor_dirs(root))


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"corpus root {root} is not a directory")
    return root


def detect_corpus(root: Path) -> CorpusKind:
    """Which corpus ``root`` holds, from its layout alone; ValueError (one line) when none or several."""
    root = _check_root(root)
    matches = [kind for kind in CORPORA if _looks_like(root, kind)]
    if not matches:
        expected = ", ".join(_EXPECTED[k] for k in CORPORA)
        raise ValueError(f"{root} does not look like a known corpus; expected one of: {expected}")
    if len(matches) > 1:
        raise ValueError(f"{root} looks like several corpora ({', '.join(matches)}); pass kind= to choose")
    return matches[0]


# --- readers ------------------------------------------------------------------------------------------


def _read_crema_d(root: Path, skips: _Skips) -> list[CorpusItem]:
    found = _crema_audio_dir(root)
    assert found is not None  # checked by the caller
    audio_dir, ext = found
    videos: dict[str, Path] = {}
    for name, vext in reversed(_CREMA_VIDEO):  # the preferred folder wins
        if (root / name).is_dir():
            videos.update({p.stem: p for p in _files(root / name) if p.suffix.lower() == vext})
    items = []
    for path in _files(audio_dir):
        m = _CREMA_RE.fullmatch(path.stem)
        if path.suffix.lower() != ext or m is None:
            skips.add(path, "unrecognised name")
            continue
        actor, sentence, emotion, level = m.groups()
        if (
            int(actor) not in _CREMA_ACTORS
            or sentence not in CREMA_D_SENTENCES
            or emotion not in _CREMA_EMOTIONS
            or level not in _CREMA_LEVELS
        ):
            skips.add(path, "unrecognised label")
            continue
        if skips.unusable(path):
            continue
        mapped = _CREMA_EMOTIONS[emotion]
        items.append(
            CorpusItem(
                corpus="crema-d",
                audio_path=path,
                video_path=videos.get(path.stem),
                emotion=mapped,
                intensity=0.0 if mapped == "neutral" else _CREMA_LEVELS[level],
                speaker=f"crema-d:{actor}",
                language="en",
                sentence=CREMA_D_SENTENCES[sentence],
                extra={"actor": actor, "sentence_code": sentence, "emotion_code": emotion, "level": level},
            )
        )
    return items


def _read_ravdess(
    root: Path,
    skips: _Skips,
    *,
    include_song: bool,
    include_video_only: bool,
    calm: Literal["neutral", "skip"],
) -> list[CorpusItem]:
    # take (every field but the modality) -> {modality: path}
    takes: dict[tuple[str, ...], dict[str, Path]] = {}
    for actor_dir in _ravdess_actor_dirs(root):
        for path in _files(actor_dir):
            m = _RAVDESS_RE.fullmatch(path.stem)
            if m is None:
                skips.add(path, "unrecognised name")
                continue
            modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
            valid = (
                modality in _RAVDESS_EXT
                and path.suffix.lower() == _RAVDESS_EXT[modality]
                and channel in ("01", "02")
                and emotion in _RAVDESS_EMOTIONS
                and intensity in _RAVDESS_INTENSITY
                and not (emotion == "01" and intensity == "02")  # neutral has no strong portrayal
                and statement in RAVDESS_STATEMENTS
                and repetition in ("01", "02")
                and 1 <= int(actor) <= 24
                and actor_dir.name == f"Actor_{actor}"
            )
            if not valid:
                skips.add(path, "unrecognised label")
                continue
            if channel == "02" and not include_song:
                skips.add(path, "song (include_song=False)")
                continue
            if emotion == "02" and calm == "skip":
                skips.add(path, "calm (calm='skip')")
                continue
            if modality == _VIDEO_ONLY and not include_video_only:
                skips.add(path, "video-only (include_video_only=False)")
                continue
            if skips.unusable(path):
                continue
            take = takes.setdefault((channel, emotion, intensity, statement, repetition, actor), {})
            if modality in take:
                skips.add(path, "duplicate of a take already read")
                continue
            take[modality] = path
    items = []
    for (channel, emotion, intensity, statement, repetition, actor), files in takes.items():
        full_av, video_only, audio_only = (files.get(k) for k in (_FULL_AV, _VIDEO_ONLY, _AUDIO_ONLY))
        extra = {
            "vocal_channel": "speech" if channel == "01" else "song",
            "emotion_label": _RAVDESS_EMOTIONS[emotion][0],
            "intensity_label": _RAVDESS_INTENSITY[intensity][0],
            "statement": statement,
            "repetition": repetition,
            "actor": actor,
            "sex": "male" if int(actor) % 2 else "female",
        }
        video: Path | None
        if full_av is not None:
            audio, video = full_av, full_av
            if audio_only is not None:
                extra["audio_only_path"] = str(audio_only)
            if video_only is not None:
                skips.add(video_only, "video-only (take has a full-AV file)")
        elif audio_only is not None:
            audio, video = audio_only, video_only
        else:
            assert video_only is not None
            skips.add(video_only, "video-only (take has no audio file)")
            continue
        mapped = _RAVDESS_EMOTIONS[emotion][1]
        items.append(
            CorpusItem(
                corpus="ravdess",
                audio_path=audio,
                video_path=video,
                emotion=mapped,
                intensity=0.0 if mapped == "neutral" else _RAVDESS_INTENSITY[intensity][1],
                speaker=f"ravdess:{actor}",
                language="en",
                sentence=RAVDESS_STATEMENTS[statement],
                extra=extra,
            )
        )
    return items


def _read_mead(root: Path, skips: _Skips, *, view: str) -> list[CorpusItem]:
    items = []
    for actor_dir in _mead_actor_dirs(root):
        actor = actor_dir.name
        videos: dict[tuple[str, str, str], Path] = {}
        video_dir = actor_dir / "video" / view
        if video_dir.is_dir():
            for path in video_dir.rglob("*.mp4"):
                parts = path.relative_to(video_dir).parts
                if len(parts) == 3:
                    videos[(parts[0], parts[1], path.stem)] = path
        audio_dir = actor_dir / "audio"
        audio_files = sorted(p for p in audio_dir.rglob("*") if p.is_file()) if audio_dir.is_dir() else []
        paired: set[Path] = set()
        for path in audio_files:
            parts = path.relative_to(audio_dir).parts
            emotion, level = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
            valid = (
                emotion in _MEAD_EMOTIONS
                and level in _MEAD_LEVELS
                and not (emotion == "neutral" and level != "level_1")  # neutral has one level only
                and _MEAD_CLIP.fullmatch(path.stem) is not None
                and path.suffix.lower() in _MEAD_AUDIO_EXT
            )
            if not valid:
                skips.add(path, "unrecognised path")
                continue
            if skips.unusable(path):
                continue
            video = videos.get((emotion, level, path.stem))
            if video is not None:
                paired.add(video)
            items.append(
                CorpusItem(
                    corpus="mead",
                    audio_path=path,
                    video_path=video,
                    emotion=emotion,
                    intensity=0.0 if emotion == "neutral" else _MEAD_LEVELS[level],
                    speaker=f"mead:{actor}",
                    language="en",
                    sentence="",
                    extra={
                        "actor": actor,
                        "sex": "male" if actor[0] == "M" else "female",
                        "level": level,
                        "clip": path.stem,
                        "view": view,
                    },
                )
            )
        for video in sorted(set(videos.values()) - paired):
            skips.add(video, "video without audio")
    return items


def scan_corpus(
    root: Path,
    kind: str | None = None,
    *,
    include_song: bool = False,
    include_video_only: bool = False,
    calm: Literal["neutral", "skip"] = "neutral",
    view: str = "front",
) -> CorpusScan:
    """Walk ``root`` and read every file's labels from its name (see the module docstring).

    Args:
        root: the corpus folder as published (see the module docstring for each layout).
        kind: "crema-d", "ravdess" or "mead"; None detects it from the layout.
        include_song: RAVDESS: also read the sung takes (vocal channel 02).
        include_video_only: RAVDESS: use a video-only take as the picture of its audio-only .wav.
        calm: RAVDESS's calm: "neutral" (intensity 0, ``extra["emotion_label"] == "calm"``) or "skip".
        view: MEAD: the camera view paired with the audio.

    Raises:
        ValueError: ``root`` is not a folder of the given (or any) corpus, or an option is unknown.
    """
    root = _check_root(root)
    if kind is None:
        kind = detect_corpus(root)
    elif kind not in CORPORA:
        raise ValueError(f"unknown corpus kind {kind!r} (known: {', '.join(CORPORA)})")
    elif not _looks_like(root, kind):
        raise ValueError(f"{root} does not look like {_EXPECTED[kind]}")
    if calm not in ("neutral", "skip"):
        raise ValueError(f"calm must be 'neutral' or 'skip', got {calm!r}")
    skips = _Skips()
    items: list[CorpusItem]
    corpus: CorpusKind
    if kind == "crema-d":
        corpus, items = "crema-d", _read_crema_d(root, skips)
    elif kind == "ravdess":
        corpus = "ravdess"
        items = _read_ravdess(
            root, skips, include_song=include_song, include_video_only=include_video_only, calm=calm
        )
    else:
        corpus, items = "mead", _read_mead(root, skips, view=view)
    items.sort(key=lambda it: (it.speaker, str(it.audio_path)))
    return CorpusScan(corpus, root, tuple(items), tuple(sorted(skips.entries)))


def read_corpus(
    root: Path,
    kind: str | None = None,
    *,
    include_song: bool = False,
    include_video_only: bool = False,
    calm: Literal["neutral", "skip"] = "neutral",
    view: str = "front",
) -> list[CorpusItem]:
    """The items of the corpus at ``root``, sorted by (speaker, audio path); skipped files are logged.

    ``scan_corpus`` with the same arguments, which see; this also raises ValueError when the folder has the
    corpus's layout but no usable file (a trainer pointed at it would otherwise train on nothing).
    """
    scan = scan_corpus(
        root, kind, include_song=include_song, include_video_only=include_video_only, calm=calm, view=view
    )
    if scan.skipped:
        counts = ", ".join(f"{n} {reason}" for reason, n in scan.skip_counts().items())
        logger.warning(
            "%s at %s: %d items; skipped %d files (%s)",
            scan.kind,
            root,
            len(scan.items),
            len(scan.skipped),
            counts,
        )
    if not scan.items:
        raise ValueError(
            f"{scan.root} has no usable {_EXPECTED[scan.kind]} files ({len(scan.skipped)} skipped)"
        )
    return list(scan.items)


# --- splits -------------------------------------------------------------------------------------------


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Speakers per split: largest remainder, then every split with a positive fraction gets one if it can."""
    exact = [f * n for f in fractions]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts


def split_by_speaker(
    items: Sequence[CorpusItem], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[list[CorpusItem], list[CorpusItem], list[CorpusItem]]:
    """Train / validation / test lists with no speaker in two of them.

    Speakers (not items) are shuffled under ``seed`` and dealt out by ``fractions``: the three corpora
    have about as many clips per actor, so speaker fractions are item fractions to within one actor. A
    split with a positive fraction gets at least one speaker when there are enough. Items keep their
    input order inside each split, so the result depends only on the items, the fractions and the seed.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    speakers = sorted({it.speaker for it in items})
    order = np.random.default_rng(seed).permutation(len(speakers))
    counts = _split_counts(len(speakers), fractions)
    which: dict[str, int] = {}
    start = 0
    for split, count in enumerate(counts):
        for i in order[start : start + count]:
            which[speakers[int(i)]] = split
        start += count
    out: tuple[list[CorpusItem], list[CorpusItem], list[CorpusItem]] = ([], [], [])
    for it in items:
        out[which[it.speaker]].append(it)
    return out


# --- MEAD video → rig targets -------------------------------------------------------------------------


def _frames_at_rate(container: av.container.InputContainer, fps: float) -> Iterator[tuple[int, Any]]:
    """(source frame index, av.VideoFrame) at every tick k / fps of the first video stream.

    Each tick shows the frame on screen at that instant: the last one whose timestamp is at or before
    it (times relative to the first frame). Ticks run until the last frame's display ends, so a 30 fps
    second gives 25 ticks at 25 fps, dropping every sixth frame; a slower source repeats frames.
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate) if stream.average_rate else fps
    eps = 1e-4  # s; timestamps are rationals, the tick times floats
    k = 0
    t0: float | None = None
    prev: Any = None
    prev_i, prev_t = -1, 0.0
    for i, frame in enumerate(container.decode(stream)):
        t = float(frame.time) if frame.time is not None else i / rate
        if t0 is None:
            t0 = t
        t -= t0
        while prev is not None and k / fps < t - eps:
            yield prev_i, prev
            k += 1
        prev, prev_i, prev_t = frame, i, t
    if prev is None:
        return
    duration = float(prev.duration * prev.time_base) if prev.duration and prev.time_base else 1.0 / rate
    while k / fps < prev_t + duration - eps:
        yield prev_i, prev
        k += 1


def _first_frame_rgb(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return np.asarray(frame.to_ndarray(format="rgb24"))
    raise ValueError(f"{path} has no video frames")


def mead_neutral_landmarks(actor_dir: Path, view: str = "front") -> np.ndarray:
    """(478, 3) float32 landmarks (with depth) of the first frame of the actor's first neutral clip.

    ``<actor_dir>/video/<view>/neutral/level_1/*.mp4``, first by name. MEAD clips start before the
    sentence, so the first frame is the actor at rest (mouth closed, eyes open): the reference the
    fitter measures every expression against. Compute it once per actor and view when fitting many clips.
    """
    folder = Path(actor_dir) / "video" / view / "neutral" / "level_1"
    clips = sorted(folder.glob("*.mp4")) if folder.is_dir() else []
    if not clips:
        raise ValueError(f"no neutral clip at {folder}/*.mp4; pass neutral_landmarks")
    from stream_avatar.avatar.landmarks import detect_faces, face_width

    faces = detect_faces(_first_frame_rgb(clips[0]))
    if not faces:
        raise ValueError(f"no face in the first frame of {clips[0]}; pass neutral_landmarks")
    return max(faces, key=face_width)


def mead_rig_targets(
    item: CorpusItem, fps: int = 25, neutral_landmarks: np.ndarray | None = None
) -> np.ndarray:
    """Per-frame rig targets of an item's video: (n_frames, RIG_SIZE) float32 at ``fps``.

    Each tick (see ``_frames_at_rate``: the frame on screen at k / fps, so MEAD's 30 fps becomes 25 fps
    without blending two faces) is fitted with ``fitter.fit_frame(..., framing="video")`` against
    ``neutral_landmarks``, by default the same actor's neutral reference from the same camera view
    (``mead_neutral_landmarks``; that default needs the MEAD layout, other items must pass landmarks).
    A frame without a detected face gives a row of NaN, so the rows stay aligned with the audio (at
    1 / fps per row) and a trainer masks them out. What the fitter reads is its own business: its
    docstring says which coefficients are observable and how Face Mesh scales them.
    """
    import av

    from stream_avatar.capture.fitter import fit_frame

    if item.video_path is None:
        raise ValueError(f"{item.audio_path} has no paired video")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if neutral_landmarks is None:
        # <actor>/video/<view>/<emotion>/<level>/<clip>.mp4
        parents = item.video_path.parents
        if item.corpus != "mead" or len(parents) < 5 or parents[3].name != "video":
            raise ValueError(f"{item.video_path} is not in the MEAD layout; pass neutral_landmarks")
        neutral_landmarks = mead_neutral_landmarks(parents[4], view=parents[2].name)
    neutral = np.asarray(neutral_landmarks, dtype=np.float64)
    rows: list[np.ndarray] = []
    last_index, last_row = -1, np.full(rig.RIG_SIZE, np.nan, dtype=np.float32)
    with av.open(str(item.video_path)) as container:
        for index, frame in _frames_at_rate(container, float(fps)):
            if index != last_index:  # a repeated frame (slow source) is fitted once
                result = fit_frame(frame.to_ndarray(format="rgb24"), neutral, framing="video")
                nan_row = np.full(rig.RIG_SIZE, np.nan, dtype=np.float32)
                last_row = nan_row if result is None else np.asarray(result.rig, dtype=np.float32)
                last_index = index
            rows.append(last_row)
    if not rows:
        return np.zeros((0, rig.RIG_SIZE), dtype=np.float32)
    return np.stack(rows)

"""Real recorded speech for training: a voice's prompt recordings, force-aligned to their transcripts.

Every synthesizer of the data engine makes speech from rules or from small diphone / HTS models; a
model trained only on them reads real voices worse than synthetic ones (the real-speech eval). This
module turns a folder of real recordings with a transcript per file into a dataset in the data
engine's format (``synth.read_dataset`` reads it; ``stream-avatar train motion --data`` takes it
beside the synthetic ones): pocketsphinx forced alignment (``realspeech.align``, the aligner that
labels the real-speech validation set) gives the phones and their times, and from there the labels
are made exactly as for synthetic speech (visemes, coarticulation, 40 ms lip lead, speech-linked nods
and brows of a neutral face).

Source (``ASTERISK_EN``): the Asterisk PBX core prompts in US English, read by Allison Smith
(Debian ``asterisk-core-sounds-en-g722``: G.722, 16 kHz wideband, 50-7000 Hz; transcripts in
``asterisk-core-sounds-en``'s ``core-sounds-en.txt.gz``; CC-BY-SA-3.0). 569 transcribed prompts,
508 of them usable (17.4 min): one real professional voice reading short sentences, words, digits
and letters. Nothing of it is copied into the repository; ``stream-avatar data prompts`` reads the
installed package.

Each prompt is used ``copies`` times: copy 0 is the recording itself, the others are seeded speaker
warps of it (``warp.random_warp``: pitch, vocal-tract length and rate; phone times scaled exactly),
so one real voice becomes several. Every copy then goes through the data engine's augmentation chain
(``augment.augment``: speed, room, band, noise, gain, codec) with the synthetic data's probabilities.

Transcripts are normalised for the aligner (lower case, digits as words through ``num2words``,
``*``/``#`` as "star"/"pound"; bracketed notes such as "[ascending tones]" removed). A prompt is left
out, with the reason counted in dataset.json, when its transcript notes a non-speech sound or
silence ("(simple tone sound plays)", "<beep>"), when nothing speakable is left, when a word is not
in pocketsphinx's dictionary, or when the alignment fails. Prompts are split by name: every
``VAL_EVERY``-th prompt (sorted by name) is ``val``, the rest ``train``.

Deterministic: prompts are processed in sorted order, copy ``c`` of prompt ``i`` draws from
``np.random.default_rng([seed, i, c])``, and the alignment dithers with a fixed seed.
"""

from __future__ import annotations

import gzip
import json
import math
import multiprocessing as mp
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_avatar.data import expressive, visemes
from stream_avatar.data.realspeech import MissingPackageError

__all__ = [
    "ASTERISK_EN",
    "PromptSource",
    "PromptsConfig",
    "build_dataset",
    "normalize_transcript",
    "read_transcripts",
]

SAMPLE_RATE_HZ = 16000
FPS = 25
VAL_EVERY = 10
FORMAT_VERSION = 2  # the data engine's (synth.FORMAT_VERSION): records carry "synthesizer"
SYNTHESIZER = "recorded"


@dataclass(frozen=True)
class PromptSource:
    """Where a voice's recordings (any format FFmpeg reads) and their transcripts are."""

    name: str
    audio_dir: str
    audio_ext: str
    transcripts: str
    package_audio: str
    package_text: str
    speaker: str
    gender: str  # "f" / "m": the range of the speaker warps (warp.random_warp)
    language: str
    licence: str


ASTERISK_EN = PromptSource(
    name="asterisk-en",
    audio_dir="/usr/share/asterisk/sounds/en_US_f_Allison",
    audio_ext=".g722",
    transcripts="/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz",
    package_audio="asterisk-core-sounds-en-g722",
    package_text="asterisk-core-sounds-en",
    speaker="asterisk-allison",
    gender="f",
    language="en",
    licence="CC-BY-SA-3.0 (Allison Smith, Asterisk core sounds)",
)
SOURCES = {ASTERISK_EN.name: ASTERISK_EN}


@dataclass(frozen=True)
class PromptsConfig:
    """What to build: ``copies`` per prompt (1 = the recordings only), ``limit`` prompts (0 = all)."""

    source: str = ASTERISK_EN.name
    copies: int = 4
    seed: int = 0
    augment: bool = True
    augment_probability: float = 0.8
    limit: int = 0
    shard_minutes: float = 10.0
    workers: int = 0  # 0: os.cpu_count()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown prompt source {self.source!r}; known: {sorted(SOURCES)}")
        if not 1 <= self.copies <= 64:
            raise ValueError(f"copies must be 1-64, got {self.copies}")
        if self.limit < 0 or not 0.0 <= self.augment_probability <= 1.0:
            raise ValueError(f"bad prompt dataset settings: {self}")


# ------------------------------------------------------------------------------------ transcripts


def read_transcripts(path: str | os.PathLike[str], package: str = "") -> dict[str, str]:
    """``name: text`` lines (``;`` comments, gzip or plain) → {name: text}, in file order."""
    p = Path(path)
    if not p.is_file():
        raise MissingPackageError(
            f"{p} not found: install the Debian package {package} (apt-get install {package})"
        )
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, text = line.split(":", 1)
        out.setdefault(name.strip(), text.strip())
    return out


_NOTE = re.compile(r"[(<]")  # "(simple tone sound plays)", "<beep ascending>": the audio is not all speech
_BRACKETS = re.compile(r"\[[^\]]*\]")  # "[@]", "[ascending tones]": a note about the text, not spoken
_SYMBOLS = {"*": " star ", "#": " pound ", "&": " and ", "%": " percent "}
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def normalize_transcript(text: str) -> tuple[str | None, str]:
    """Transcript → (aligner text in lower-case words, "") or (None, reason it is left out)."""
    from num2words import num2words

    if _NOTE.search(text):
        return None, "non-speech note"
    t = _BRACKETS.sub(" ", text)
    for sym, word in _SYMBOLS.items():
        t = t.replace(sym, word)
    t = re.sub(r"\d+", lambda m: " " + num2words(int(m.group(0))) + " ", t)
    t = t.lower().replace("-", " ")
    words = _WORD.findall(t)
    if not words:
        return None, "nothing spoken"
    return " ".join(words), ""


# ------------------------------------------------------------------------------------ examples


@dataclass(frozen=True)
class _Job:
    index: int
    name: str
    path: str
    text: str
    split: str


def _prompt_examples(job: _Job, cfg: PromptsConfig) -> dict[str, Any]:
    """Align one prompt and make its copies (runs in a worker process)."""
    from stream_avatar.audio.features import extract_features
    from stream_avatar.data import realspeech
    from stream_avatar.data.augment import augment
    from stream_avatar.data.warp import Warp, apply_warp, random_warp

    src = SOURCES[cfg.source]
    speech = realspeech.load_source_audio(job.path, "wav", package=src.package_audio)
    try:
        al = realspeech.align(speech, job.text)
    except RuntimeError as err:
        return {"job": job, "skipped": "alignment failed", "error": str(err)}
    n0 = speech.shape[0]
    base_phones = [
        (ipa, round(a * SAMPLE_RATE_HZ), min(n0, round(b * SAMPLE_RATE_HZ))) for _, ipa, a, b in al["phones"]
    ]
    examples = []
    for c in range(cfg.copies):
        rng = np.random.default_rng([cfg.seed, job.index, c])
        warp = Warp() if c == 0 else random_warp(rng, src.gender)
        if c == 0:
            samples, scale = speech, 1.0
        else:
            samples, scale = apply_warp(speech, warp, SAMPLE_RATE_HZ)
        n = samples.shape[0]
        phonemes = [(s, min(n, round(a * scale)), min(n, round(b * scale))) for s, a, b in base_phones]
        lead = int(rng.uniform(0.1, 0.4) * SAMPLE_RATE_HZ)
        tail = int(rng.uniform(0.1, 0.4) * SAMPLE_RATE_HZ)
        audio = np.concatenate(
            [np.zeros(lead, np.float32), samples.astype(np.float32), np.zeros(tail, np.float32)]
        )
        # The padding is digital zero; a real line's noise floor never is.
        audio = audio + rng.standard_normal(audio.size).astype(np.float32) * 3e-4
        phonemes = [(s, a + lead, b + lead) for s, a, b in phonemes if b > a]
        augmentation: dict[str, Any] = {}
        if cfg.augment and rng.random() < cfg.augment_probability:
            result = augment(audio, rng)
            audio = result.samples
            ts = float(result.time_scale)
            phonemes = [(s, round(a * ts), round(b * ts)) for s, a, b in phonemes]
            augmentation = {"applied": list(result.applied), "time_scale": ts}
        audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
        n_frames = math.ceil(audio.size / (SAMPLE_RATE_HZ // FPS))
        timed = visemes.phonemes_from_samples(phonemes, SAMPLE_RATE_HZ)
        mouth = visemes.mouth_targets(timed, n_frames, FPS, unknown=visemes.UNKNOWN_VISEME)
        targets = expressive.face_targets(mouth, timed, "neutral", 0.0, rng, FPS)
        examples.append(
            {
                "copy": c,
                "audio": np.round(audio * 32767.0).astype(np.int16),
                "features": extract_features(audio).astype(np.float16),
                "targets": targets.astype(np.float16),
                "phonemes": phonemes,
                "augmentation": augmentation,
                "warp": warp.as_dict() if c else None,
            }
        )
    return {
        "job": job,
        "examples": examples,
        "score_per_frame": round(float(al["score_per_frame"]), 2),
        "source_s": round(n0 / SAMPLE_RATE_HZ, 3),
    }


def _run_block(args: tuple[list[_Job], PromptsConfig]) -> list[dict[str, Any]]:
    jobs, cfg = args
    return [_prompt_examples(j, cfg) for j in jobs]


def _results(jobs: list[_Job], cfg: PromptsConfig) -> Iterator[dict[str, Any]]:
    workers = max(1, cfg.workers or (os.cpu_count() or 1))
    blocks = [(jobs[i : i + 8], cfg) for i in range(0, len(jobs), 8)]
    if workers == 1:
        for b in blocks:
            yield from _run_block(b)
        return
    with mp.get_context("spawn").Pool(workers) as pool:
        for res in pool.imap(_run_block, blocks):
            yield from res


def plan_jobs(cfg: PromptsConfig) -> tuple[list[_Job], Counter[str]]:
    """The prompts to use (sorted by name) and the count of those left out before alignment, by reason."""
    src = SOURCES[cfg.source]
    texts = read_transcripts(src.transcripts, src.package_text)
    root = Path(src.audio_dir)
    if not root.is_dir():
        raise MissingPackageError(
            f"{root} not found: install the Debian package {src.package_audio} "
            f"(apt-get install {src.package_audio})"
        )
    from stream_avatar.data.realspeech import _decoder

    lexicon = _decoder(bestpath=False)
    skipped: Counter[str] = Counter()
    usable: list[tuple[str, str, str]] = []
    for name in sorted(texts):
        if name.startswith("/") or ".." in name.split("/"):
            skipped["bad name"] += 1
            continue
        path = root / (name + src.audio_ext)
        if not path.is_file():
            skipped["no recording"] += 1
            continue
        text, reason = normalize_transcript(texts[name])
        if text is None:
            skipped[reason] += 1
            continue
        if any(lexicon.lookup_word(w) is None for w in text.split()):
            skipped["word not in the dictionary"] += 1
            continue
        usable.append((name, str(path), text))
    if cfg.limit:
        usable = usable[: cfg.limit]
    jobs = [
        _Job(index=i, name=n, path=p, text=t, split="val" if i % VAL_EVERY == VAL_EVERY - 1 else "train")
        for i, (n, p, t) in enumerate(usable)
    ]
    return jobs, skipped


def build_dataset(
    out_dir: str | os.PathLike[str],
    cfg: PromptsConfig,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the dataset (shards, manifest.jsonl, dataset.json) into ``out_dir`` (absent or empty)."""
    from stream_avatar.data.synth import ShardWriter

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output directory {out} is not empty")
    src = SOURCES[cfg.source]
    jobs, skipped = plan_jobs(cfg)
    if not jobs:
        raise ValueError(f"no usable prompts in {src.audio_dir}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    writer = ShardWriter(out, cfg.shard_minutes * 60.0)
    n_utts, done_s, source_s = 0, 0.0, 0.0
    seconds_by_split: dict[str, float] = {}
    counts: Counter[str] = Counter()
    scores: list[float] = []
    with (out / "manifest.jsonl").open("w", encoding="utf-8") as manifest:
        for k, res in enumerate(_results(jobs, cfg)):
            job: _Job = res["job"]
            if "skipped" in res:
                skipped[res["skipped"]] += 1
            else:
                scores.append(res["score_per_frame"])
                source_s += res["source_s"]
                for ex in res["examples"]:
                    where = writer.add_arrays(ex["audio"], ex["features"], ex["targets"], ex["phonemes"])
                    duration = ex["audio"].size / SAMPLE_RATE_HZ
                    speaker = src.speaker if ex["copy"] == 0 else f"{src.speaker}-w{ex['copy']}"
                    record = {
                        "id": f"{src.name}-{job.index:05d}-{ex['copy']}",
                        **where,
                        "duration_s": round(duration, 4),
                        "n_frames": int(ex["targets"].shape[0]),
                        "text": job.text,
                        "prompt": job.name,
                        "language": src.language,
                        "voice": src.speaker,
                        "speaker": speaker,
                        "emotion": "neutral",
                        "intensity": 0.0,
                        "augmentation": ex["augmentation"],
                        "alignment_score_per_frame": res["score_per_frame"],
                        "seed": [cfg.seed, job.index, ex["copy"]],
                        "split": job.split,
                        "synthesizer": SYNTHESIZER,
                    }
                    if ex["warp"] is not None:
                        record["warp"] = ex["warp"]
                    manifest.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                    writer.flush()
                    n_utts += 1
                    done_s += duration
                    counts[job.split] += 1
                    seconds_by_split[job.split] = seconds_by_split.get(job.split, 0.0) + duration
            if progress is not None:
                progress(k + 1, len(jobs))
    writer.flush(force=True)
    info = {
        "format_version": FORMAT_VERSION,
        "kind": "recorded prompts",
        "config": asdict(cfg),
        "source": asdict(src),
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "fps": FPS,
        "feature_rows_per_s": 100,
        "phoneme_vocabulary": list(writer.vocab),
        "prompts_used": len(scores),
        "prompts_left_out": dict(sorted(skipped.items())),
        "source_hours": round(source_s / 3600.0, 4),
        "utterances": n_utts,
        "hours": round(done_s / 3600.0, 4),
        "shards": writer.index,
        "counts": {"split": dict(sorted(counts.items()))},
        "hours_by_split": {k: round(v / 3600.0, 4) for k, v in sorted(seconds_by_split.items())},
        "alignment_score_per_frame": {
            "median": round(float(np.median(scores)), 2) if scores else None,
            "p05": round(float(np.percentile(scores, 5)), 2) if scores else None,
        },
        "aligner": "pocketsphinx 5 en-us forced alignment (realspeech.align)",
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out / "dataset.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return info

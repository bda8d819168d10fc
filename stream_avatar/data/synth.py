"""The synthetic dataset: plan → synthesize → targets → augment → features → shards + manifest.

``synthesize_dataset(out_dir, config)`` writes, deterministically under ``config.seed`` (the same
bytes whatever the number of worker processes):

- ``shard-NNNNN.safetensors``: the arrays of consecutive utterances concatenated — ``audio`` (int16,
  16 kHz), ``features`` (float16 log-mel + energy rows, 100 per second, ``stream_avatar.audio.
  features``), ``targets`` (float16 rig vectors, 25 per second: mouth from the phonemes, expression,
  brows and nods), ``phoneme_start`` / ``phoneme_end`` (int32 samples) and ``phoneme_id`` (int32 into
  the vocabulary in ``dataset.json``).
- ``manifest.jsonl``: one JSON object per utterance — id, shard and offsets into each array, text,
  language, synthesizer, voice, speaker, emotion, intensity, espeak parameters, warp (recorded
  voices), voice quality (with ``voice_quality``), augmentation applied, seed, split.
- ``dataset.json``: the configuration, phoneme vocabulary, per-language phoneme coverage, counts per
  split / language / emotion, the viseme table, and timing (wall time, real-time factor).

Synthesizers (``config.synthesizers``; default: espeak plus Festival and Flite where installed):
espeak-ng (formant synthesis, every language), Festival (``festival.py``: voices built from real
recordings, English and Hindi in the default languages) and Flite (``flite.py``: the English ARCTIC
voices awb, rms). A recorded-voice speaker is (voice, ``warp.Warp``): the voice as recorded, then
seeded pitch / vocal-tract-length / tempo warps of it; emotions are rendered on it as pitch, tempo
and gain changes relative to a neutral baseline. Each plan first draws a synthesizer among those
with speakers in its language (uniformly), then a speaker.

``text_language`` makes every speaker read one language's sentences (recorded voices of languages
without a sentence pool reading, say, English with their own letter-to-sound rules: more real people,
labels still exact).

Splits are by speaker AND by language: every speaker of ``holdout_language`` (of every synthesizer)
is in ``test_language`` (a language never heard in training); in every other language a few espeak
speakers are held out in ``test_speaker`` and ``val``, and the recorded voices named in
``festival_test_voices`` are held out whole in ``test_speaker`` (other people, not warps of a
training voice); no speaker appears in two splits. Records carry ``synthesizer`` (and ``warp``);
dataset.json counts utterances and hours per synthesizer and lists every speaker with its split.

Utterances are made by worker processes in blocks of ``BLOCK``, each block in a fresh ``spawn``ed
process (espeak-ng keeps hidden state between calls; see ``make_block``), each utterance from its own
seed. The writer consumes them in order.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_avatar.data import expressive, visemes
from stream_avatar.emotion import facs as emotion_mod
from stream_avatar.motion import rig

SAMPLE_RATE_HZ = 16000
FPS = 25
SPLITS = ("train", "val", "test_speaker", "test_language")
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "es", "fr", "de", "hi", "ar", "ja", "cmn")
FORMAT_VERSION = 2  # 2: records carry "synthesizer" (and "warp" for Festival); counts per synthesizer
SYNTHESIZERS: tuple[str, ...] = ("espeak", "festival", "flite")
# Synthesizers of recorded voices: their speakers are (voice, warp) and they render emotion by warps.
RECORDED = ("festival", "flite")
# Neutral espeak baseline of Festival speakers: emotion prosody is taken relative to it.
_FESTIVAL_BASELINE = {"pitch": 50.0, "pitch_range": 50.0, "rate_wpm": 175.0, "volume": 100.0}
# An emotion's espeak pitch shift (0-99 scale steps) rendered on Festival audio, in cents per step.
CENTS_PER_PITCH_STEP = 12.0


def default_synthesizers() -> tuple[str, ...]:
    """espeak, plus Festival and Flite where installed."""
    from stream_avatar.data import festival, flite

    return (
        ("espeak",)
        + (("festival",) if festival.available() else ())
        + (("flite",) if flite.available() else ())
    )


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate. ``hours`` of audio (after padding and augmentation) over ``languages``."""

    hours: float = 2.0
    seed: int = 0
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    speakers_per_language: int = 10
    holdout_language: str | None = "hi"
    test_speakers_per_language: int = 2
    val_speakers_per_language: int = 1
    augment: bool = True
    augment_probability: float = 0.8
    shard_minutes: float = 10.0
    text_pool: int = 400  # coverage-selected sentences per language to draw from
    workers: int = 0  # 0: os.cpu_count()
    # () = default_synthesizers(): the dataset then depends on what is installed (dataset.json says).
    synthesizers: tuple[str, ...] = ()
    festival_speakers_per_voice: int = 4  # the recorded voice itself plus seeded warps of it
    # Whole Festival voices held out as test_speaker (really different people, not warps of a
    # training voice); other languages' Festival speakers are train / val only.
    festival_test_voices: tuple[str, ...] = ("ked_diphone",)
    # Flite voices used (English): awb and rms are people Festival does not have (slt, kal16 are).
    flite_voices: tuple[str, ...] = ("awb", "rms")
    # None: each language speaks its own sentences. A language name (e.g. "en"): every speaker reads
    # that language's sentences, each voice with its own letter-to-sound rules. The labels stay exact
    # (they are the phones the voice produced), and recorded voices of languages without a sentence
    # pool (Italian, Catalan, Czech, Finnish, Russian Festival voices) become more real speakers.
    text_language: str | None = None
    # Render each emotion's voice quality on the speech too (``expressive.render_voice_quality``):
    # off for the motion datasets (their shipped model was trained without it), on for emotion data.
    voice_quality: bool = False

    def __post_init__(self) -> None:
        if not self.synthesizers:
            object.__setattr__(self, "synthesizers", default_synthesizers())
        unknown = [x for x in self.synthesizers if x not in SYNTHESIZERS]
        if unknown or len(set(self.synthesizers)) != len(self.synthesizers):
            raise ValueError(
                f"synthesizers must be distinct names among {SYNTHESIZERS}, got {self.synthesizers}"
            )
        if self.festival_speakers_per_voice < 1:
            raise ValueError("festival_speakers_per_voice must be at least 1")
        if not 0.0 < self.hours <= 10_000:
            raise ValueError(f"hours must be positive, got {self.hours}")
        if not self.languages:
            raise ValueError("languages must not be empty")
        if self.text_language is not None:
            from stream_avatar.data import texts

            if self.text_language not in texts.LANGUAGES:
                raise ValueError(
                    f"text_language {self.text_language!r} has no sentence pool; known: {texts.LANGUAGES}"
                )
        if self.holdout_language is not None and self.holdout_language not in self.languages:
            raise ValueError(f"holdout_language {self.holdout_language!r} is not among {self.languages}")
        held = self.test_speakers_per_language + self.val_speakers_per_language
        if self.speakers_per_language <= held:
            raise ValueError(f"speakers_per_language must exceed the {held} held out per language")


@dataclass(frozen=True)
class Plan:
    """One utterance to make (everything decided up front, from the dataset seed)."""

    index: int
    seed: int
    text: str
    speaker: expressive.Speaker
    emotion: str
    intensity: float
    split: str
    augment: bool
    voice_quality: bool = False


@dataclass
class Example:
    """One made utterance (arrays at their final length)."""

    plan: Plan
    audio: np.ndarray  # int16
    features: np.ndarray  # float16 (rows, N_FEATURES)
    targets: np.ndarray  # float16 (frames, RIG_SIZE)
    phonemes: list[tuple[str, int, int]]  # (symbol, start, end) samples
    prosody: expressive.Prosody
    augmentation: dict[str, Any] = field(default_factory=dict)
    warp: dict[str, Any] | None = None  # Festival: the warp and gain applied
    voice: expressive.VoiceQuality | None = None  # the voice quality rendered, when the plan asks


# ------------------------------------------------------------------------------------ planning


def _festival_voices(config: DatasetConfig, lang: str) -> list[str]:
    if "festival" not in config.synthesizers:
        return []
    from stream_avatar.data import festival

    return festival.installed_voices(lang)


def make_speakers(config: DatasetConfig) -> list[expressive.Speaker]:
    """Per language: ``speakers_per_language`` espeak speakers (voice × variant × baseline prosody) when
    espeak is used, then ``festival_speakers_per_voice`` per installed Festival voice of the language
    (the voice as recorded, then seeded pitch / formant / tempo warps of it)."""
    out = []
    if "espeak" in config.synthesizers:
        out += _espeak_speakers(config)
    if "festival" in config.synthesizers:
        from stream_avatar.data import festival
        from stream_avatar.data.warp import Warp, random_warp

        for li, lang in enumerate(config.languages):
            for name in _festival_voices(config, lang):
                voice = festival.VOICES[name]
                # Seeded by the voice name's bytes (not hash()): stable whatever else is installed.
                rng = np.random.default_rng([config.seed, 4, li, *name.encode("ascii")])
                for k in range(config.festival_speakers_per_voice):
                    out.append(
                        expressive.Speaker(
                            id=f"{lang}-{name}-{k}",
                            language=lang,
                            voice=name,
                            **_FESTIVAL_BASELINE,
                            synthesizer="festival",
                            warp=Warp() if k == 0 else random_warp(rng, voice.gender),
                        )
                    )
    if "flite" in config.synthesizers and "en" in config.languages:
        from stream_avatar.data import flite
        from stream_avatar.data.warp import Warp, random_warp

        li = config.languages.index("en")
        for name in [v for v in config.flite_voices if v in flite.installed_voices()]:
            rng = np.random.default_rng([config.seed, 6, li, *name.encode("ascii")])
            for k in range(config.festival_speakers_per_voice):
                out.append(
                    expressive.Speaker(
                        id=f"en-flite_{name}-{k}",
                        language="en",
                        voice=name,
                        **_FESTIVAL_BASELINE,
                        synthesizer="flite",
                        warp=Warp() if k == 0 else random_warp(rng, flite.VOICES[name].gender),
                    )
                )
    return out


def _espeak_speakers(config: DatasetConfig) -> list[expressive.Speaker]:
    from stream_avatar.data.espeak import list_variants, list_voices

    variants = list_variants()
    out = []
    for li, lang in enumerate(config.languages):
        rng = np.random.default_rng([config.seed, 1, li])
        voices = list_voices(lang) or [lang]
        chosen = rng.permutation(len(variants))
        for k in range(config.speakers_per_language):
            variant = variants[int(chosen[k % len(chosen)])]
            female = variant.startswith("f")
            out.append(
                expressive.Speaker(
                    id=f"{lang}-{k:02d}",
                    language=lang,
                    voice=f"{voices[k % len(voices)]}+{variant}",
                    pitch=float(rng.uniform(50, 72) if female else rng.uniform(28, 52)),
                    pitch_range=float(rng.uniform(35, 70)),
                    rate_wpm=float(rng.uniform(150, 200)),
                    volume=float(rng.uniform(85, 115)),
                )
            )
    return out


def assign_splits(speakers: list[expressive.Speaker], config: DatasetConfig) -> dict[str, str]:
    """speaker id → split; disjoint by speaker, the held-out language entirely in ``test_language``."""
    out: dict[str, str] = {}
    for li, lang in enumerate(config.languages):
        if lang == config.holdout_language:  # every speaker of every synthesizer
            out.update({s.id: "test_language" for s in speakers if s.language == lang})
            continue
        fest = [s for s in speakers if s.language == lang and s.synthesizer in RECORDED]
        rest = []
        for s in fest:
            if s.voice in config.festival_test_voices:
                out[s.id] = "test_speaker"
            else:
                rest.append(s.id)
        if rest:
            order = np.random.default_rng([config.seed, 5, li]).permutation(len(rest))
            for rank, j in enumerate(order):
                out[rest[j]] = "val" if rank < config.val_speakers_per_language else "train"
        ids = [s.id for s in speakers if s.language == lang and s.synthesizer == "espeak"]
        order = np.random.default_rng([config.seed, 2, li]).permutation(len(ids))
        for rank, j in enumerate(order):
            if rank < config.test_speakers_per_language:
                out[ids[j]] = "test_speaker"
            elif rank < config.test_speakers_per_language + config.val_speakers_per_language:
                out[ids[j]] = "val"
            else:
                out[ids[j]] = "train"
    return out


def _mean_utterance_s() -> float:
    return 3.2  # espeak sentences of 3-12 words at ~175 wpm, padded; only sizes the plan


def make_plans(config: DatasetConfig, texts: dict[str, list[str]]) -> list[Plan]:
    """Enough utterances for ``config.hours`` (refined by the writer, which stops at the target)."""
    speakers = make_speakers(config)
    splits = assign_splits(speakers, config)
    by_lang: dict[tuple[str, str], list[expressive.Speaker]] = {}
    for s in speakers:
        by_lang.setdefault((s.language, s.synthesizer), []).append(s)
    options = {lang: [x for x in config.synthesizers if (lang, x) in by_lang] for lang in config.languages}
    for lang, opts in options.items():
        if not opts:
            raise ValueError(f"no speaker for language {lang!r} with synthesizers {config.synthesizers}")
    n = math.ceil(config.hours * 3600.0 / _mean_utterance_s() * 1.5) + 8
    rng = np.random.default_rng([config.seed, 3])
    plans = []
    for i in range(n):
        lang = config.languages[i % len(config.languages)]
        opts = options[lang]
        # Drawn only when there is a choice, so espeak-only plans are the same as before Festival.
        synth_name = opts[int(rng.integers(len(opts)))] if len(opts) > 1 else opts[0]
        group = by_lang[(lang, synth_name)]
        speaker = group[int(rng.integers(len(group)))]
        pool = texts[lang]
        emotion = emotion_mod.EMOTIONS[int(rng.integers(len(emotion_mod.EMOTIONS)))]
        intensity = 0.0 if emotion == "neutral" else float(rng.uniform(0.35, 1.0))
        plans.append(
            Plan(
                index=i,
                seed=int(rng.integers(2**31)),
                text=pool[int(rng.integers(len(pool)))],
                speaker=speaker,
                emotion=emotion,
                intensity=round(intensity, 3),
                split=splits[speaker.id],
                augment=config.augment and bool(rng.uniform() < config.augment_probability),
                voice_quality=config.voice_quality,
            )
        )
    return plans


# ------------------------------------------------------------------------------------ making


def _festival_render(plan: Plan, utt: Any, pros: expressive.Prosody) -> tuple[np.ndarray, list, dict]:
    """Festival audio → this speaker and emotion: the speaker's warp plus the emotion's pitch shift
    and rate change (relative to the neutral baseline), and its loudness as a gain; phone times are
    scaled by the warp's exact time_scale."""
    from stream_avatar.data.warp import Warp, apply_warp

    sp = plan.speaker
    base = sp.warp or Warp()
    w = base.combined(
        pitch_cents=(pros.pitch - sp.pitch) * CENTS_PER_PITCH_STEP, tempo=pros.rate_wpm / sp.rate_wpm
    )
    samples, scale = apply_warp(utt.samples, w, SAMPLE_RATE_HZ)
    n = samples.shape[0]
    phonemes: list[tuple[str, int, int]] = []
    for k, p in enumerate(utt.phonemes):
        a = 0 if k == 0 else phonemes[-1][2]
        b = n if k == len(utt.phonemes) - 1 else min(n, round(p.end * scale))
        if b > a:
            phonemes.append((p.symbol, a, b))
    gain = pros.volume / sp.volume
    samples = np.clip(samples * np.float32(gain), -1.0, 1.0).astype(np.float32)
    return samples, phonemes, {**w.as_dict(), "gain": round(gain, 4)}


def make_example(plan: Plan, festival_utt: Any = None) -> Example:
    """Synthesize one planned utterance with its targets (runs in a worker process).

    Festival plans get their ``festival.Utterance`` from the block's batch (``make_block``)."""
    from stream_avatar.audio.features import extract_features

    rng = np.random.default_rng(plan.seed)
    pros = expressive.prosody_for(plan.speaker, plan.emotion, plan.intensity, rng)
    warp_info: dict[str, Any] | None = None
    if plan.speaker.synthesizer == "flite":
        from stream_avatar.data import flite

        speech, timeline, warp_info = _festival_render(
            plan, flite.synthesize(plan.text, plan.speaker.voice), pros
        )
    elif plan.speaker.synthesizer == "festival":
        if festival_utt is None:
            from stream_avatar.data import festival

            festival_utt = festival.synthesize(plan.text, plan.speaker.voice)
        speech, timeline, warp_info = _festival_render(plan, festival_utt, pros)
    else:
        from stream_avatar.data.espeak import synthesize

        utt = synthesize(
            plan.text,
            plan.speaker.voice,
            rate_wpm=pros.rate_wpm,
            pitch=pros.pitch,
            pitch_range=pros.pitch_range,
            volume=pros.volume,
        )
        speech, timeline = utt.samples, [(p.symbol, p.start, p.end) for p in utt.phonemes]
    voice = None
    if plan.voice_quality:  # its own random stream: the draws below stay those of a plain dataset
        vq_rng = np.random.default_rng([plan.seed, 7])
        voice = expressive.voice_quality_for(plan.emotion, plan.intensity, vq_rng)
        speech = expressive.render_voice_quality(speech, voice, vq_rng, SAMPLE_RATE_HZ)
    lead = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE_HZ)
    tail = int(rng.uniform(0.2, 0.6) * SAMPLE_RATE_HZ)
    audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
    phonemes = [(s, a + lead, b + lead) for s, a, b in timeline]
    augmentation: dict[str, Any] = {}
    if plan.augment:
        from stream_avatar.data.augment import augment

        result = augment(audio, rng)
        audio = result.samples
        scale = float(result.time_scale)
        phonemes = [(s, round(a * scale), round(b * scale)) for s, a, b in phonemes]
        augmentation = {"applied": list(result.applied), "time_scale": scale}
    else:  # espeak writes exact digital zeros between words; real microphones never do
        audio = audio + rng.standard_normal(audio.size).astype(np.float32) * 1e-3
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    n_frames = math.ceil(audio.size / (SAMPLE_RATE_HZ // FPS))
    timed = visemes.phonemes_from_samples(phonemes, SAMPLE_RATE_HZ)
    mouth = visemes.mouth_targets(timed, n_frames, FPS, unknown=visemes.UNKNOWN_VISEME)
    targets = expressive.face_targets(mouth, timed, plan.emotion, plan.intensity, rng, FPS)
    return Example(
        plan=plan,
        audio=np.round(audio * 32767.0).astype(np.int16),
        features=extract_features(audio).astype(np.float16),
        targets=targets.astype(np.float16),
        phonemes=phonemes,
        prosody=pros,
        augmentation=augmentation,
        warp=warp_info,
        voice=voice,
    )


BLOCK = 16  # utterances made in one fresh process, in order


def make_block(plans: list[Plan]) -> list[Example]:
    """A block of consecutive utterances, made in order by one fresh worker process.

    Festival plans of the block are synthesized first, in one Festival process. espeak-ng carries hidden
    state from one synthesis to the next (pitch flutter phase, echo buffer), which no API call resets: the
    same call twice in one process differs by a few milliseconds. A block always starts in a fresh process
    and runs the same calls in the same order, so its bytes do not depend on how many workers run or which
    blocks they ran before.
    """
    festival_jobs = [(p.text, p.speaker.voice) for p in plans if p.speaker.synthesizer == "festival"]
    made: list[Any] = []
    if festival_jobs:  # one Festival process for the whole block (its start-up costs ~0.3 s)
        from stream_avatar.data import festival

        # A text a voice's front end cannot read comes back as None; its plan is dropped (the same
        # plan fails the same way every run, so the dataset stays a function of the seed).
        made = festival.synthesize_many(festival_jobs, skip_failed=True)
    it = iter(made)
    out = []
    for p in plans:
        utt = next(it) if p.speaker.synthesizer == "festival" else None
        if p.speaker.synthesizer == "festival" and utt is None:
            continue
        out.append(make_example(p, utt))
    return out


def _examples(plans: list[Plan], workers: int) -> Iterator[Example]:
    blocks = [plans[i : i + BLOCK] for i in range(0, len(plans), BLOCK)]
    with mp.get_context("spawn").Pool(max(1, workers), maxtasksperchild=1) as pool:
        for block in pool.imap(make_block, blocks):
            yield from block


# ------------------------------------------------------------------------------------ writing


class ShardWriter:
    """Writes utterances into safetensors shards of about ``shard_seconds`` of audio each."""

    def __init__(self, out_dir: Path, shard_seconds: float) -> None:
        self.out_dir = out_dir
        self.shard_seconds = shard_seconds
        self.vocab: dict[str, int] = {}
        self.index = 0
        self._reset()

    def _reset(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("audio", "features", "targets", "ps", "pe", "pid")
        }
        self.sizes = dict.fromkeys(self.parts, 0)
        self.seconds = 0.0

    def add(self, ex: Example) -> dict[str, Any]:
        return self.add_arrays(ex.audio, ex.features, ex.targets, ex.phonemes)

    def add_arrays(
        self,
        audio: np.ndarray,
        features: np.ndarray,
        targets: np.ndarray,
        phonemes: list[tuple[str, int, int]],
    ) -> dict[str, Any]:
        """One utterance (int16 audio, float16 features and targets, phones in samples) → its offsets."""
        ids = np.array([self.vocab.setdefault(s, len(self.vocab)) for s, _, _ in phonemes], np.int32)
        arrays = {
            "audio": audio,
            "features": features,
            "targets": targets,
            "ps": np.array([a for _, a, _ in phonemes], np.int32),
            "pe": np.array([b for _, _, b in phonemes], np.int32),
            "pid": ids,
        }
        offsets = {}
        for key, arr in arrays.items():
            offsets[key] = [self.sizes[key], int(arr.shape[0])]
            self.parts[key].append(arr)
            self.sizes[key] += int(arr.shape[0])
        self.seconds += audio.size / SAMPLE_RATE_HZ
        return {
            "shard": f"shard-{self.index:05d}.safetensors",
            "audio": offsets["audio"],
            "features": offsets["features"],
            "targets": offsets["targets"],
            "phonemes": offsets["pid"],
        }

    def flush(self, force: bool = False) -> None:
        if not self.parts["audio"] or (not force and self.seconds < self.shard_seconds):
            return
        from safetensors.numpy import save_file

        tensors = {}
        for key, name in (
            ("audio", "audio"),
            ("features", "features"),
            ("targets", "targets"),
            ("ps", "phoneme_start"),
            ("pe", "phoneme_end"),
            ("pid", "phoneme_id"),
        ):
            tensors[name] = np.ascontiguousarray(np.concatenate(self.parts[key]))
        save_file(tensors, str(self.out_dir / f"shard-{self.index:05d}.safetensors"))
        self.index += 1
        self._reset()


def synthesize_dataset(
    out_dir: str | os.PathLike[str],
    config: DatasetConfig,
    progress: Callable[[float, float], None] | None = None,
) -> dict[str, Any]:
    """Generate the dataset into ``out_dir`` (created; must be empty or absent). Returns dataset.json.

    ``progress(seconds_done, seconds_target)`` is called after every utterance.
    """
    from stream_avatar.data import texts as texts_mod

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output directory {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pools = {lang: config.text_language or lang for lang in config.languages}
    texts = {
        lang: texts_mod.select_for_coverage(pools[lang], config.text_pool, config.seed)
        for lang in config.languages
    }
    for name in config.synthesizers:
        if name in RECORDED and shutil.which(name) is None:
            raise ValueError(f"synthesizer {name} requested but not installed (apt-get install {name})")
        if name in RECORDED and shutil.which("sox") is None:
            raise ValueError(f"synthesizer {name} needs sox for speaker warps (apt-get install sox)")
    plans = make_plans(config, texts)
    speakers = make_speakers(config)
    split_of = assign_splits(speakers, config)
    target_s = config.hours * 3600.0
    workers = config.workers or (os.cpu_count() or 1)
    writer = ShardWriter(out, config.shard_minutes * 60.0)
    done_s = 0.0
    counts: dict[str, Counter[str]] = {
        "split": Counter(),
        "language": Counter(),
        "emotion": Counter(),
        "synthesizer": Counter(),
    }
    seconds_by_synth: dict[str, float] = {}
    seconds_by_split: dict[str, float] = {}
    seen_phonemes: dict[str, set[str]] = {lang: set() for lang in config.languages}
    unmapped: Counter[str] = Counter()
    n_utts = 0
    with (out / "manifest.jsonl").open("w", encoding="utf-8") as manifest:
        examples = _examples(plans, workers)
        try:
            for ex in examples:
                p = ex.plan
                where = writer.add(ex)
                duration = ex.audio.size / SAMPLE_RATE_HZ
                record = {
                    "id": f"utt{p.index:07d}",
                    **where,
                    "duration_s": round(duration, 4),
                    "n_frames": int(ex.targets.shape[0]),
                    "text": p.text,
                    "language": p.speaker.language,
                    "voice": p.speaker.voice,
                    "speaker": p.speaker.id,
                    "emotion": p.emotion,
                    "intensity": p.intensity,
                    "prosody": asdict(ex.prosody),
                    "augmentation": ex.augmentation,
                    "seed": p.seed,
                    "split": p.split,
                    "synthesizer": p.speaker.synthesizer,
                }
                if ex.warp is not None:
                    record["warp"] = ex.warp
                if ex.voice is not None:
                    record["voice_quality"] = asdict(ex.voice)
                manifest.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                writer.flush()
                n_utts += 1
                done_s += duration
                counts["split"][p.split] += 1
                counts["language"][p.speaker.language] += 1
                counts["emotion"][p.emotion] += 1
                counts["synthesizer"][p.speaker.synthesizer] += 1
                seconds_by_synth[p.speaker.synthesizer] = (
                    seconds_by_synth.get(p.speaker.synthesizer, 0.0) + duration
                )
                seconds_by_split[p.split] = seconds_by_split.get(p.split, 0.0) + duration
                seen_phonemes[p.speaker.language].update(s for s, _, _ in ex.phonemes)
                unmapped.update(s for s, _, _ in ex.phonemes if visemes.viseme_of(s, "?") == "?")
                if progress is not None:
                    progress(done_s, target_s)
                if done_s >= target_s:
                    break
        finally:
            close = getattr(examples, "close", None)
            if callable(close):
                close()
    writer.flush(force=True)
    wall = time.perf_counter() - t0
    coverage = {}
    for lang in config.languages:
        if lang not in texts_mod.LANGUAGES:  # no espeak inventory to measure coverage against
            continue
        inventory = texts_mod.phoneme_inventory(lang)
        seen = {visemes.base_symbol(s) for s in seen_phonemes[lang]}
        base_inv = {visemes.base_symbol(s) for s in inventory}
        coverage[lang] = {
            "inventory": len(base_inv),
            "covered": len(base_inv & seen),
            "fraction": round(len(base_inv & seen) / max(1, len(base_inv)), 3),
        }
    info = {
        "format_version": FORMAT_VERSION,
        "config": {
            **asdict(config),
            "languages": list(config.languages),
            "synthesizers": list(config.synthesizers),
            "festival_test_voices": list(config.festival_test_voices),
        },
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "fps": FPS,
        "rig_names": list(rig.RIG_NAMES),
        "feature_rows_per_s": 100,
        "phoneme_vocabulary": list(writer.vocab),
        "utterances": n_utts,
        "hours": round(done_s / 3600.0, 4),
        "shards": writer.index,
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
        "hours_by_split": {k: round(v / 3600.0, 4) for k, v in sorted(seconds_by_split.items())},
        "hours_by_synthesizer": {k: round(v / 3600.0, 4) for k, v in sorted(seconds_by_synth.items())},
        "speakers": {
            sp.id: {"synthesizer": sp.synthesizer, "voice": sp.voice, "split": split_of[sp.id]}
            for sp in speakers
        },
        "phoneme_coverage": coverage,
        "unmapped_phonemes": dict(sorted(unmapped.items())),  # given visemes.UNKNOWN_VISEME
        "visemes": {"table": visemes.IPA_VISEME, "shapes": visemes.VISEME_RIG, "lead_s": visemes.LEAD_S},
        "wall_s": round(wall, 1),
        "realtime_factor": round(wall / max(done_s, 1e-9), 4),
    }
    # Wall time and the real-time factor differ run to run; everything else is a function of the seed.
    (out / "dataset.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return info


# ------------------------------------------------------------------------------------ reading


@dataclass
class Utterance:
    """One stored utterance, as the trainers read it."""

    record: dict[str, Any]
    audio: np.ndarray  # float32 16 kHz
    features: np.ndarray  # float32 (rows, N_FEATURES)
    targets: np.ndarray  # float32 (frames, RIG_SIZE)
    phonemes: list[tuple[str, int, int]]


def read_dataset(root: str | os.PathLike[str], split: str | None = None) -> Iterator[Utterance]:
    """Iterate the stored utterances (optionally one split), loading each shard once."""
    from safetensors.numpy import load_file

    base = Path(root)
    info = json.loads((base / "dataset.json").read_text(encoding="utf-8"))
    vocab = info["phoneme_vocabulary"]
    shard_name: str | None = None
    shard: dict[str, np.ndarray] = {}
    with (base / "manifest.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if split is not None and rec["split"] != split:
                continue
            if rec["shard"] != shard_name:
                name = rec["shard"]
                if "/" in name or "\\" in name or not name.startswith("shard-"):
                    raise ValueError(f"bad shard name in the manifest: {name!r}")
                shard, shard_name = load_file(str(base / name)), name

            def cut(
                key: str, which: str, rec: dict[str, Any] = rec, shard: dict[str, np.ndarray] = shard
            ) -> np.ndarray:
                a, n = rec[which]
                return shard[key][a : a + n]

            ids = cut("phoneme_id", "phonemes")
            yield Utterance(
                record=rec,
                audio=cut("audio", "audio").astype(np.float32) / 32767.0,
                features=cut("features", "features").astype(np.float32),
                targets=cut("targets", "targets").astype(np.float32),
                phonemes=[
                    (vocab[int(i)], int(s), int(e))
                    for i, s, e in zip(
                        ids, cut("phoneme_start", "phonemes"), cut("phoneme_end", "phonemes"), strict=True
                    )
                ],
            )

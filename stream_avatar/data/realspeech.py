"""A small real-speech validation set for lip-sync evaluation, built from recordings in Debian packages.

Synthetic speech (espeak-ng, festival) is what the models train on; this set checks them on human
voices. The audio is not copied into the repository: each clip is read at test/eval time from the
installed Debian package (``codec2-examples``, LGPL-2.1; ``alsa-utils``, GPL-2) and checked against
the sha256 stored in its JSON file. The JSON files (``tests/data/realspeech/<name>.json``) hold the
transcript, where it came from, and a pocketsphinx forced alignment (words and phones with times).

Clips (``CLIPS``, 18, 61.5 s): the eight alsa-utils channel prompts ("Front Left"...; the text is the
file name; "Noise" is not speech and is left out) and ten codec2-examples recordings: read sentences
(``speech_orig_16k``: four IEEE/Harvard sentences at 16 kHz; ``hts1a``, ``hts2a``, ``big_dog``,
``cross``, ``forig``, ``morig`` at 8 kHz) and three short amateur-radio test calls (``g3plx``,
``vk5qi``, ``kristoff``). The headerless ``raw/`` originals are read, not their ``wav/`` copies (same
samples) or the mu-law ``wav/cross.wav``. Left out: the 2400 bit/s codec outputs ``f2400``/``m2400``
(degraded duplicates of ``forig``/``morig``); ``hts``, ``hts1``, ``hts2`` (``hts1a``/``hts2a`` are
bit-exact 3 s prefixes of ``hts1``/``hts2``, which are 6 s pieces of ``hts``, whose other sentences
have no trustworthy transcript); ``ve9qrp``/``ve9qrp_10s``, ``cq_ref``, ``vk2tpm_004``, ``david4``,
``mmt1`` (long or noisy HF-radio speech, or no intelligible English for the recogniser); the
concatenation ``all.wav``; ``wia_16kHz`` (a 1 s fragment); modem, tone and test-vector files.

Transcripts: codec2-examples ships no text for its samples, so each clip lists candidate transcripts,
most trusted first (hand corrections of the pocketsphinx ASR output, e.g. to the published
IEEE/Harvard sentences it obviously is, then the ASR output itself). ``build`` force-aligns every
candidate and keeps the first whose acoustic score per frame is within ``SCORE_MARGIN_PER_FRAME`` of
the best, recording all candidates with their scores in the JSON.

Phones: pocketsphinx's US-English model uses the CMU/ARPAbet set without stress; ``ARPABET_IPA`` maps
it to IPA symbols ``visemes.viseme_of`` knows, silence and fillers to ``visemes.PAUSE``.

Run ``python -m stream_avatar.data.realspeech build [OUT_DIR]`` to rebuild the JSON files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_avatar.audio.io import load_audio, pcm_to_float32
from stream_avatar.audio.resample import resample
from stream_avatar.data import visemes
from stream_avatar.data.visemes import TimedPhoneme

__all__ = [
    "ARPABET_IPA",
    "CLIPS",
    "DEFAULT_ROOT",
    "SAMPLE_RATE_HZ",
    "ClipSpec",
    "MissingPackageError",
    "RealClip",
    "align",
    "allphone_phonemes",
    "arpabet_to_ipa",
    "build",
    "load_clips",
    "load_source_audio",
    "openness_target",
]

SAMPLE_RATE_HZ: int = 16000  # pocketsphinx's en-us acoustic model and the engine both run at 16 kHz
FRAME_RATE_HZ: int = 100  # pocketsphinx's feature frame rate (10 ms hop)
DEFAULT_ROOT: Path = Path(__file__).resolve().parents[2] / "tests" / "data" / "realspeech"
SCHEMA_VERSION: int = 1
SCORE_MARGIN_PER_FRAME: float = 4.0  # acoustic log-likelihood units per 10 ms frame, see _clip_record

# ARPAbet (no stress digits: the en-us model has none) -> IPA. Diphthongs are written as two symbols;
# viseme_of maps them by their first. AH is mostly unstressed in running speech, hence schwa.
ARPABET_IPA: dict[str, str] = {
    "AA": "ɑ", "AE": "æ", "AH": "ə", "AO": "ɔ", "AW": "aʊ", "AY": "aɪ", "B": "b", "CH": "tʃ", "D": "d",
    "DH": "ð", "EH": "ɛ", "ER": "ɝ", "EY": "eɪ", "F": "f", "G": "ɡ", "HH": "h", "IH": "ɪ", "IY": "i",
    "JH": "dʒ", "K": "k", "L": "l", "M": "m", "N": "n", "NG": "ŋ", "OW": "oʊ", "OY": "ɔɪ", "P": "p",
    "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t", "TH": "θ", "UH": "ʊ", "UW": "u", "V": "v", "W": "w",
    "Y": "j", "Z": "z", "ZH": "ʒ",
}  # fmt: skip
VOWELS_ARPABET: frozenset[str] = frozenset(
    {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
)

# Package that ships each source tree: a missing file is reported with the package to install.
PACKAGES: dict[str, str] = {"/usr/share/codec2/": "codec2-examples", "/usr/share/sounds/alsa/": "alsa-utils"}


def arpabet_to_ipa(phone: str) -> str:
    """One pocketsphinx phone -> IPA; SIL and fillers (``+NSN+``, ``+SPN+``, ``+BREATH+``...) -> PAUSE.

    Stress digits, if a model writes them, are dropped. An unknown non-filler phone raises KeyError."""
    base = phone.strip().upper().rstrip("012")
    if base == "SIL" or base.startswith("+") or base.startswith("<"):
        return visemes.PAUSE
    return ARPABET_IPA[base]


@dataclass(frozen=True)
class ClipSpec:
    """Where a clip's audio is and which transcripts to try.

    ``fmt`` is ``"wav"`` (any container FFmpeg reads) or ``"raw_s16le"`` (headerless 16-bit mono at
    ``raw_rate_hz``). ``candidates`` are ``(text, source)`` pairs, most trusted first (see ``build``)."""

    name: str
    path: str
    fmt: str
    candidates: tuple[tuple[str, str], ...]
    raw_rate_hz: int = 0

    @property
    def package(self) -> str:
        for prefix, pkg in PACKAGES.items():
            if self.path.startswith(prefix):
                return pkg
        raise ValueError(f"{self.path}: not in a known Debian package tree")


def _alsa(name: str, words: str) -> ClipSpec:
    return ClipSpec(f"alsa_{name.lower()}", f"/usr/share/sounds/alsa/{name}.wav", "wav",
                    ((words, "file name"),))  # fmt: skip


_ASR = "pocketsphinx ASR"
_FIX = "pocketsphinx ASR corrected by hand, accepted by alignment score"
_CALL = "pocketsphinx ASR with the call sign spelled in the NATO alphabet, accepted by alignment score"
CLIPS: tuple[ClipSpec, ...] = (
    _alsa("Front_Center", "front center"),
    _alsa("Front_Left", "front left"),
    _alsa("Front_Right", "front right"),
    _alsa("Rear_Center", "rear center"),
    _alsa("Rear_Left", "rear left"),
    _alsa("Rear_Right", "rear right"),
    _alsa("Side_Left", "side left"),
    _alsa("Side_Right", "side right"),
    ClipSpec(
        "codec2_speech_orig_16k",
        "/usr/share/codec2/raw/speech_orig_16k.wav",
        "wav",
        (
            (
                "the birch canoe slid on the smooth planks glue the sheet to the dark blue background "
                "it's easy to tell the depth of a well four hours of steady work faced us",
                "IEEE/Harvard sentence list 1 (sentences 1, 2, 3, 9) recognised from pocketsphinx ASR",
            ),
            (
                "the bitch kinnear slipped on the snooze planks linda say to the doctor later grounds "
                "it's easy to tell him that the while for allies and stay anywhere face death",
                _ASR,
            ),
        ),
    ),
    ClipSpec(
        "codec2_hts1a",
        "/usr/share/codec2/raw/hts1a.raw",
        "raw_s16le",
        (
            ("the navy attacked the big task force", _FIX),
            ("the navy attacked the big top schools", _ASR),
        ),
        raw_rate_hz=8000,
    ),
    ClipSpec(
        "codec2_hts2a",
        "/usr/share/codec2/raw/hts2a.raw",
        "raw_s16le",
        (("they added a key to the main gate", _ASR),),
        raw_rate_hz=8000,
    ),
    ClipSpec(
        "codec2_big_dog",
        "/usr/share/codec2/raw/big_dog.raw",
        "raw_s16le",
        (("the big dog look into an old red belt", _ASR),),
        raw_rate_hz=8000,
    ),
    ClipSpec(
        "codec2_cross",
        "/usr/share/codec2/raw/cross.raw",
        "raw_s16le",
        (("they took the crosstown bus", _ASR),),
        raw_rate_hz=8000,
    ),
    ClipSpec(
        "codec2_forig",
        "/usr/share/codec2/raw/forig.raw",
        "raw_s16le",
        (
            ("alcatraz on the street", _ASR),
            ("i'll throw trash on the street", "ASR of the codec2 2400 bit/s copy f2400"),
        ),
        raw_rate_hz=8000,
    ),
    ClipSpec(
        "codec2_morig",
        "/usr/share/codec2/raw/morig.raw",
        "raw_s16le",
        (("that broad jump through the weed", _ASR),),
        raw_rate_hz=8000,
    ),
    # Amateur-radio test calls of codec2 contributors: the ASR hears the NATO-alphabet call signs as
    # English words ("a dick to kill" for "victor kilo"); the corrections spell the call sign of the
    # file name out and are kept only if the alignment score accepts them.
    ClipSpec(
        "codec2_g3plx",
        "/usr/share/codec2/raw/g3plx.raw",
        "raw_s16le",
        (
            ("one two three four five five four three two one golf three papa lima x-ray testing", _CALL),
            ("one two three four five five four three two one goal lead talk on lima x-ray testing", _ASR),
        ),
        raw_rate_hz=8000,
    ),
    ClipSpec(
        "codec2_vk5qi",
        "/usr/share/codec2/raw/vk5qi.raw",
        "raw_s16le",
        (
            (
                "this is victor kilo five quebec india victor kilo five quebec india "
                "testing one two three four five five four three two one",
                _CALL,
            ),
            (
                "this is a dick to kill a lot of quebec to leave it to kill or cause of quebec be too late "
                "testing one two three four five five four three two won",
                _ASR,
            ),
        ),
        raw_rate_hz=8000,
    ),
    ClipSpec(
        "codec2_kristoff",
        "/usr/share/codec2/raw/kristoff.raw",
        "raw_s16le",
        (
            ("hi this is kristoff oscar november one alfa romeo foxtrot", _CALL),
            ("hi this is good and op's come november one off or omit box", _ASR),
        ),
        raw_rate_hz=8000,
    ),
)


class MissingPackageError(FileNotFoundError):
    """A clip's source audio is not installed; the message names the Debian package."""


@dataclass(frozen=True)
class RealClip:
    """One real-speech clip with its forced alignment.

    ``audio16k``: float32 (n,) in [-1, 1] at 16 kHz (read from the package file, resampled).
    ``phonemes``: IPA phones with start/end in seconds (pauses are ``visemes.PAUSE``).
    ``source``: the package and file, e.g. ``"codec2-examples:/usr/share/codec2/raw/hts1a.raw"``."""

    name: str
    audio16k: np.ndarray
    phonemes: list[TimedPhoneme]
    transcript: str
    source: str
    transcript_source: str = ""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_source_audio(path: str, fmt: str, raw_rate_hz: int = 0, package: str = "") -> np.ndarray:
    """(n,) float32 at 16 kHz from a package file; MissingPackageError when the file is absent."""
    p = Path(path)
    if not p.is_file():
        pkg = package or next((v for k, v in PACKAGES.items() if path.startswith(k)), "?")
        raise MissingPackageError(
            f"{path} not found: install the Debian package {pkg} (apt-get install {pkg})"
        )
    if fmt == "raw_s16le":
        x, rate = pcm_to_float32(np.fromfile(p, dtype="<i2")), raw_rate_hz
    elif fmt == "wav":
        x, rate = load_audio(p)
    else:
        raise ValueError(f"unknown source format {fmt!r}")
    return resample(x, rate, SAMPLE_RATE_HZ)


def _decoder_pcm(audio16k: np.ndarray) -> bytes:
    """int16 bytes for pocketsphinx, with a fixed -60 dBFS dither.

    Some prompts contain exact digital silence, on which pocketsphinx's feature normalisation breaks;
    the dither has a fixed seed so the alignment is reproducible."""
    noise = np.random.default_rng(0).standard_normal(audio16k.shape[0]) * 10 ** (-60 / 20)
    x = np.clip(audio16k.astype(np.float64) + noise, -1.0, 1.0)
    return np.round(x * 32767).astype("<i2").tobytes()


def _decoder(**kwargs: Any) -> Any:  # pocketsphinx ships no type stubs: the return is a Decoder
    from pocketsphinx import Decoder

    return Decoder(samprate=SAMPLE_RATE_HZ, loglevel="FATAL", **kwargs)


def align(audio16k: np.ndarray, text: str) -> dict[str, Any]:
    """Forced alignment of ``text`` (lower-case words in CMUdict) to 16 kHz audio with pocketsphinx.

    pocketsphinx 5 aligns in two passes: words (``set_align_text``), then phones and states
    (``set_alignment``). ``bestpath`` is off: with it (the library default) the word pass comes from a
    lattice whose boundaries the state pass cannot always reach ("Alignment failed in frame N",
    cmusphinx/pocketsphinx PR #500), which here broke 2 of 15 clips.
    Returns ``{"words": [[word, start_s, end_s]], "phones": [[arpabet, ipa, start_s, end_s]],
    "score": int (summed phone acoustic log-likelihood), "score_per_frame": float}``.
    Raises RuntimeError when the text cannot be aligned."""
    pcm = _decoder_pcm(audio16k)
    dec = _decoder(bestpath=False)
    try:
        dec.set_align_text(text)
        for second_pass in (False, True):
            if second_pass:
                dec.set_alignment()
            dec.start_utt()
            dec.process_raw(pcm, full_utt=True)
            dec.end_utt()
    except RuntimeError as err:
        raise RuntimeError(f"pocketsphinx could not align {text!r}: {err}") from None
    al = dec.get_alignment()
    if al is None:
        raise RuntimeError(f"pocketsphinx could not align {text!r}")
    fr = float(FRAME_RATE_HZ)
    words = [[w.name, w.start / fr, (w.start + w.duration) / fr] for w in al.words()]
    phones, score, n = [], 0, 0
    for ph in al.phones():
        phones.append([ph.name, arpabet_to_ipa(ph.name), ph.start / fr, (ph.start + ph.duration) / fr])
        score += int(ph.score)
        n += int(ph.duration)
    if not phones:
        raise RuntimeError(f"pocketsphinx returned no phones for {text!r}")
    return {"words": words, "phones": phones, "score": score, "score_per_frame": score / max(n, 1)}


def allphone_phonemes(audio16k: np.ndarray) -> list[TimedPhoneme]:
    """Offline phoneme recognition (pocketsphinx allphone search with its en-us phone LM).

    ``audio16k``: float32 (n,) at 16 kHz. The whole utterance is decoded at once (not causal): an
    offline baseline. Returns IPA phones with times in seconds; silence and fillers are PAUSE."""
    from pocketsphinx import get_model_path

    phone_lm = str(Path(get_model_path()) / "en-us" / "en-us-phone.lm.bin")
    # Wide beams and lw 2 are pocketsphinx's documented settings for phonetic decoding.
    dec = _decoder(allphone=phone_lm, lw=2.0, beam=1e-20, pbeam=1e-20, backtrace=True)
    dec.start_utt()
    dec.process_raw(_decoder_pcm(audio16k), full_utt=True)
    dec.end_utt()
    fr = float(FRAME_RATE_HZ)
    out = []
    for seg in dec.seg():
        # end_frame is inclusive in pocketsphinx segments.
        out.append(TimedPhoneme(arpabet_to_ipa(seg.word), seg.start_frame / fr, (seg.end_frame + 1) / fr))
    return out


def openness_target(clip: RealClip, fps: int = 25) -> np.ndarray:
    """(n_frames,) float32 phone-derived mouth openness (jawOpen of ``visemes.mouth_targets``).

    ``n_frames = ceil(len(audio16k) / (16000 / fps))``; frame k describes time (k + 0.5) / fps s."""
    from stream_avatar.motion import rig

    n_frames = math.ceil(clip.audio16k.shape[0] * fps / SAMPLE_RATE_HZ)
    targets = visemes.mouth_targets(clip.phonemes, n_frames, fps)
    return targets[:, rig.index("jawOpen")].astype(np.float32)


def _clip_record(spec: ClipSpec) -> dict[str, Any]:
    path = Path(spec.path)
    audio = load_source_audio(spec.path, spec.fmt, spec.raw_rate_hz, spec.package)
    tried: list[dict[str, Any]] = []
    for text, source in spec.candidates:
        try:
            result = align(audio, text)
        except RuntimeError as err:  # a candidate with an out-of-dictionary word: record and go on
            tried.append({"text": text, "source": source, "error": str(err)})
            continue
        tried.append({"text": text, "source": source, "result": result})
    ok = [t for t in tried if "result" in t]
    if not ok:
        raise RuntimeError(f"{spec.name}: no candidate transcript could be aligned: {tried}")
    # The free ASR output is the acoustically best word string by construction, so it always scores
    # a little higher than the true text (the speech_orig_16k Harvard sentences: 2.6 per frame below
    # the nonsense ASR; the noisier radio calls 0.7 to 3.9). Candidates are listed most trusted first;
    # the first one within the margin of the best score wins; a wrong text misfits by much more (forig's
    # "alcatraz on the street" 8.3, a wrong hand guess "toss the trash on the street" 11.5).
    top = max(t["result"]["score_per_frame"] for t in ok)
    best = next(t for t in ok if t["result"]["score_per_frame"] >= top - SCORE_MARGIN_PER_FRAME)
    res = best["result"]
    return {
        "schema": SCHEMA_VERSION,
        "name": spec.name,
        "package": spec.package,
        "source_path": spec.path,
        "source_format": spec.fmt,
        "source_sample_rate_hz": spec.raw_rate_hz or _wav_rate(path),
        "sha256": _sha256(path),
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "duration_s": round(audio.shape[0] / SAMPLE_RATE_HZ, 4),
        "transcript": best["text"],
        "transcript_source": best["source"],
        "candidates": [
            {
                "text": t["text"],
                "source": t["source"],
                "score_per_frame": round(t["result"]["score_per_frame"], 2) if "result" in t else None,
            }
            for t in tried
        ],
        "alignment_score": res["score"],
        "alignment_score_per_frame": round(res["score_per_frame"], 2),
        "aligner": "pocketsphinx 5 en-us, set_align_text + set_alignment, 100 frames/s",
        "words": [[w, round(a, 3), round(b, 3)] for w, a, b in res["words"]],
        "phones": [[p, ipa, round(a, 3), round(b, 3)] for p, ipa, a, b in res["phones"]],
    }


def _wav_rate(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return int(c.streams.audio[0].sample_rate)


_FLAT_LIST = re.compile(r"\[[^\[\]{}]*\]")


def _dumps(rec: dict[str, Any]) -> str:
    """Indented JSON with sorted keys, each phone/word row on one line (small, readable diffs)."""
    text = json.dumps(rec, ensure_ascii=False, sort_keys=True, indent=1)
    return _FLAT_LIST.sub(lambda m: json.dumps(json.loads(m.group(0)), ensure_ascii=False), text)


def build(out_dir: str | Path = DEFAULT_ROOT, clips: Sequence[ClipSpec] = CLIPS) -> list[Path]:
    """(Re)build one JSON file per clip in ``out_dir`` from the installed packages; deterministic
    (fixed dither seed, fixed candidate order, sorted keys). Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in clips:
        rec = _clip_record(spec)
        p = out / f"{spec.name}.json"
        p.write_text(_dumps(rec) + "\n", encoding="utf-8")
        written.append(p)
    return written


def load_clips(root: str | Path | None = None) -> list[RealClip]:
    """All clips described by the JSON files in ``root`` (default ``tests/data/realspeech``), sorted by
    name, with their audio read from the installed packages.

    Raises MissingPackageError (naming the Debian package) when a source file is absent, ValueError when
    its sha256 differs from the recorded one (another package version), FileNotFoundError when ``root``
    holds no clip. No clip is skipped."""
    directory = Path(root) if root is not None else DEFAULT_ROOT
    files = sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no real-speech clip descriptions (*.json) in {directory}")
    clips = []
    for f in files:
        rec = json.loads(f.read_text(encoding="utf-8"))
        src, pkg = Path(rec["source_path"]), rec["package"]
        if not src.is_file():
            raise MissingPackageError(
                f"{src} not found: install the Debian package {pkg} (apt-get install {pkg})"
            )
        # Checked before decoding: the alignment belongs to exactly these bytes.
        digest = _sha256(src)
        if digest != rec["sha256"]:
            raise ValueError(
                f"{src}: sha256 {digest} differs from {rec['sha256']} recorded in {f.name} "
                f"(a different {pkg} version?); rebuild with `python -m {__name__} build`"
            )
        audio = load_source_audio(str(src), rec["source_format"], rec["source_sample_rate_hz"], pkg)
        phonemes = [TimedPhoneme(ipa, a, b) for _, ipa, a, b in rec["phones"]]
        source = f"{rec['package']}:{rec['source_path']}"
        transcript = rec["transcript"]
        clips.append(RealClip(rec["name"], audio, phonemes, transcript, source, rec["transcript_source"]))
    return clips


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="rebuild the clip JSON files from the installed Debian packages")
    b.add_argument("out_dir", nargs="?", default=str(DEFAULT_ROOT))
    args = parser.parse_args(argv)
    if args.cmd == "build":
        for p in build(args.out_dir):
            rec = json.loads(p.read_text(encoding="utf-8"))
            print(f"{p.name}: {rec['duration_s']:.2f} s, {rec['transcript']!r} ({rec['transcript_source']}), "
                  f"score/frame {rec['alignment_score_per_frame']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

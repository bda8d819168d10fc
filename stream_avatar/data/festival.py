"""Festival speech synthesis from voices built on real recordings, with Festival's own phone timing.

Debian's ``festival`` with its festvox voices: an HTS voice trained on real speech (``cmu_us_slt_arctic_hts``)
and diphone voices concatenated from recorded diphones (English kal/ked, Hindi/Marathi/Telugu NSK,
Italian lp/pc, Catalan ona, Czech, Finnish, Russian). Compared with espeak-ng's formant synthesis these
sound like particular people, which is what the avatar has to follow.

``synthesize_many(jobs)`` returns, per (text, voice), 16 kHz float32 audio plus a phone timeline that
tiles the signal exactly like ``espeak.Utterance.phonemes`` does. Decisions, and why:

- **One Festival process per batch and language.** Festival's start-up (scheme init, voice load)
  costs ~0.3 s, longer than synthesizing a sentence; a batch is one generated ``.scm`` script per
  language, run with ``festival -b``, that selects each voice once (jobs grouped by voice in
  first-seen order, so the same batch always runs the same calls) and writes per job a RIFF wav and a
  text file of ``name end_s`` lines from the ``Segment`` relation after ``utt.synth``. Languages get a
  process each: a voice's front end changes global state that can break another language's voice
  loaded after it. Those segment ends are the durations the waveform generator realised
  (diphone PSOLA stretches units to them; HTS generates frames for them), so they are the ground truth.
- **Phones → IPA.** Each voice family has its own phone set; ``PHONE_SETS`` maps every phone of every
  set (taken from ``(PhoneSet.description)`` of the installed voices) to IPA that ``visemes.viseme_of``
  understands. Pause phones (``pau``, ``#``, ``h#``, ``brth``...) become ``PAUSE`` and runs of them
  merge. Stress digits on vowels (Italian/Catalan ``a1``) are dropped, as espeak's events drop stress.
- **Text encoding per voice.** The Czech and Finnish voices read ISO-8859-2 / ISO-8859-1 bytes (UTF-8
  letters come out spelled as "unknown"), the others UTF-8; the script is assembled as bytes with each
  string literal in its voice's encoding. The Hindi/Marathi NSK voices fail on nukta letters (ज़ फ़ ड़),
  so the nukta is removed first (ज़ → ज, the common spoken merger); the manifest keeps the text as sent.
- **Timeline.** Segment ends are rounded to 16 kHz samples; the first phone starts at 0 and the last
  ends at the audio's length (Festival's last end and the wav length differ by at most a frame);
  zero-length phones (rounding) are dropped, so entry ``i`` ends where ``i + 1`` starts.
- **Deterministic.** Diphone and HTS synthesis use no random numbers: the same batch gives the same
  bytes (tested).

Every subprocess has a timeout; a missing ``festival`` binary or voice raises ``FestivalUnavailableError``
naming the Debian package.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import time
import unicodedata
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_avatar.audio.resample import resample
from stream_avatar.data.espeak import Phoneme
from stream_avatar.data.visemes import PAUSE

__all__ = [
    "PHONE_SETS",
    "SAMPLE_RATE_HZ",
    "VOICES",
    "FestivalUnavailableError",
    "FestivalVoice",
    "Utterance",
    "available",
    "installed_voices",
    "phone_to_ipa",
    "synthesize",
    "synthesize_many",
]

SAMPLE_RATE_HZ = 16000
# Festival start-up plus per-utterance synthesis; a 16-sentence batch with the HTS voice takes ~5 s.
STARTUP_TIMEOUT_S = 60.0
PER_JOB_TIMEOUT_S = 20.0


class FestivalUnavailableError(RuntimeError):
    """``festival`` or a voice is not installed; the message names the Debian package."""


@dataclass(frozen=True)
class FestivalVoice:
    """A Festival voice: ``name`` (``voice_<name>`` selects it), its language, phone set and package."""

    name: str
    language: str  # the project's language code (texts.py / espeak)
    phone_set: str  # key of PHONE_SETS
    package: str  # Debian package
    gender: str  # "f" / "m"
    encoding: str = "utf-8"  # how the voice's text front end reads bytes
    kind: str = "diphone"  # "diphone" (recorded diphones), "hts" (statistical, from recordings), "clunits"


VOICES: dict[str, FestivalVoice] = {
    v.name: v
    for v in (
        FestivalVoice("cmu_us_slt_arctic_hts", "en", "radio", "festvox-us-slt-hts", "f", kind="hts"),
        FestivalVoice("kal_diphone", "en", "radio", "festvox-kallpc16k", "m"),
        FestivalVoice("ked_diphone", "en", "radio", "festvox-kdlpc16k", "m"),
        FestivalVoice("hindi_NSK_diphone", "hi", "nsk", "festvox-hi-nsk festival-hi", "m"),
        FestivalVoice("marathi_NSK_diphone", "mr", "nsk", "festvox-mr-nsk festival-mr", "m"),
        FestivalVoice("telugu_NSK_diphone", "te", "nsk", "festvox-te-nsk festival-te", "m"),
        FestivalVoice("lp_diphone", "it", "italian", "festvox-italp16k", "f"),
        FestivalVoice("pc_diphone", "it", "italian", "festvox-itapc16k", "m"),
        FestivalVoice("upc_ca_ona_hts", "ca", "catalan", "festvox-ca-ona-hts", "f", kind="hts"),
        FestivalVoice("czech_dita", "cs", "czech", "festvox-czech-dita", "f", "iso-8859-2"),
        FestivalVoice("czech_machac", "cs", "czech", "festvox-czech-machac", "m", "iso-8859-2"),
        FestivalVoice("suo_fi_lj_diphone", "fi", "finnish", "festvox-suopuhe-lj", "f", "iso-8859-1"),
        FestivalVoice("hy_fi_mv_diphone", "fi", "finnish", "festvox-suopuhe-mv", "m", "iso-8859-1"),
        FestivalVoice("msu_ru_nsh_clunits", "ru", "russian", "festvox-ru", "m", kind="clunits"),
    )
}

_PAUSES = ("pau", "h#", "brth", "#", "##", "_")

# Phone set → {phone: IPA}. Every phone of each installed voice's (PhoneSet.description) is listed.
PHONE_SETS: dict[str, dict[str, str]] = {
    # US English "radio" phone set (ARPAbet) of the CMU/CSTR voices.
    "radio": {
        "aa": "ɑ", "ae": "æ", "ah": "ʌ", "ao": "ɔ", "aw": "aʊ", "ax": "ə", "axr": "ɚ", "ay": "aɪ",
        "eh": "ɛ", "el": "əl", "em": "əm", "en": "ən", "er": "ɝ", "ey": "eɪ", "ih": "ɪ", "iy": "i",
        "ow": "oʊ", "oy": "ɔɪ", "uh": "ʊ", "uw": "u",
        "b": "b", "ch": "tʃ", "d": "d", "dh": "ð", "dx": "ɾ", "f": "f", "g": "ɡ", "hh": "h", "hv": "ɦ",
        "jh": "dʒ", "k": "k", "l": "l", "m": "m", "n": "n", "nx": "ɾ̃", "ng": "ŋ", "p": "p", "r": "ɹ",
        "s": "s", "sh": "ʃ", "t": "t", "th": "θ", "v": "v", "w": "w", "y": "j", "z": "z", "zh": "ʒ",
    },
    # The IIIT NSK voices (Hindi, Marathi, Telugu). Aspirates come out as a stop followed by "h"
    # (ठीक → T h iy k), so "h" is the breathy release /ɦ/; "th"/"dh" are the dental stops त/द.
    "nsk": {
        "a": "ə", "aa": "aː", "ih": "ɪ", "iy": "iː", "uh": "ʊ", "uw": "uː", "eh": "e", "ee": "eː",
        "ay": "ɛː", "oh": "o", "oo": "oː", "aw": "ɔː", "@": "ə",
        "f": "f", "k": "k", "g": "ɡ", "ch": "tʃ", "T": "ʈ", "D": "ɖ", "N": "ɳ", "th": "t̪", "dh": "d̪",
        "n": "n", "p": "p", "b": "b", "m": "m", "y": "j", "r": "ɾ", "l": "l", "v": "ʋ", "w": "ʋ",
        "L": "ɭ", "R": "ɽ", "s": "s", "sh": "ʃ", "j": "dʒ", "h": "ɦ", "ksh": "kʃ", "sri": "ʃɾ",
        "x": "x", "kh": "kʰ", "gh": "ɡʱ", "td": "t̪ʰ", "tth": "ʈʰ", "ddh": "ɖʱ", "bh": "bʱ", "zh": "ʒ",
    },
    "italian": {
        "i": "i", "e": "e", "E": "ɛ", "a": "a", "o": "o", "O": "ɔ", "u": "u",
        "j": "j", "w": "w", "p": "p", "t": "t", "k": "k", "b": "b", "d": "d", "g": "ɡ", "f": "f",
        "s": "s", "S": "ʃ", "v": "v", "z": "z", "Z": "ʒ", "ts": "ts", "tS": "tʃ", "dz": "dz", "dZ": "dʒ",
        "m": "m", "n": "n", "J": "ɲ", "ng": "ŋ", "nf": "ɱ", "l": "l", "L": "ʎ", "r": "r",
    },
    "catalan": {
        "ax": "ə", "a": "a", "e": "e", "E": "ɛ", "i": "i", "o": "o", "O": "ɔ", "u": "u",
        "j": "j", "w": "w", "b": "b", "d": "d", "f": "f", "g": "ɡ", "J": "ɲ", "k": "k", "l": "l",
        "L": "ʎ", "m": "m", "n": "n", "p": "p", "r": "ɾ", "rr": "r", "s": "s", "S": "ʃ", "t": "t",
        "z": "z", "Z": "ʒ",
    },
    "czech": {
        "a": "a", "a:": "aː", "e": "ɛ", "e:": "ɛː", "i": "ɪ", "i:": "iː", "o": "o", "o:": "oː",
        "u": "u", "u:": "uː",
        "b": "b", "c": "ts", "c~": "tʃ", "ch": "x", "d": "d", "d~": "ɟ", "dz": "dz", "dz~": "dʒ",
        "f": "f", "g": "ɡ", "h": "ɦ", "j": "j", "k": "k", "l": "l", "m": "m", "n": "n", "n*": "ŋ",
        "n~": "ɲ", "p": "p", "r": "r", "r~": "r̝", "r~*": "r̝̊", "s": "s", "s~": "ʃ", "t": "t",
        "t~": "c", "v": "v", "z": "z", "z~": "ʒ",
    },
    # Suopuhe: "@" is ä, "7" ö, "&" å (Swedish loans); ":" marks length (long vowels, geminates).
    "finnish": {
        "a": "ɑ", "e": "e", "i": "i", "o": "o", "u": "u", "y": "y", "@": "æ", "7": "ø", "&": "o",
        "p": "p", "t": "t", "k": "k", "b": "b", "d": "d", "g": "ɡ", "f": "f", "T": "θ", "D": "ð",
        "s": "s", "z": "z", "S": "ʃ", "Z": "ʒ", "h": "h", "v": "ʋ", "m": "m", "n": "n", "N": "ŋ",
        "l": "l", "L": "ʎ", "r": "r", "j": "j", "w": "w",
    },
    # msu_ru_nsh: doubled consonant letters are palatalised; doubled vowel letters are stressed,
    # single ones reduced ("ur" is a reduced u, "ae"/"ay" reduced front / back vowels).
    "russian": {
        "ii": "i", "yy": "ɨ", "uu": "u", "ee": "e", "oo": "o", "aa": "a", "a": "ɐ", "e": "ɪ", "i": "ɪ",
        "y": "ɨ", "u": "ʊ", "ae": "ɪ", "ay": "ə", "ur": "ʊ",
        "p": "p", "pp": "pʲ", "b": "b", "bb": "bʲ", "t": "t", "tt": "tʲ", "d": "d", "dd": "dʲ",
        "k": "k", "kk": "kʲ", "g": "ɡ", "gg": "ɡʲ", "c": "ts", "ch": "tɕ", "f": "f", "ff": "fʲ",
        "v": "v", "vv": "vʲ", "s": "s", "ss": "sʲ", "z": "z", "zz": "zʲ", "sh": "ʂ", "sch": "ɕː",
        "zh": "ʐ", "h": "x", "hh": "xʲ", "m": "m", "mm": "mʲ", "n": "n", "nn": "nʲ", "l": "ɫ",
        "ll": "lʲ", "r": "r", "rr": "rʲ", "j": "j",
    },
}  # fmt: skip


def phone_to_ipa(phone: str, phone_set: str) -> str:
    """One Festival phone → IPA (``PAUSE`` for pauses). KeyError names an unmapped phone."""
    if phone in _PAUSES:
        return PAUSE
    table = PHONE_SETS[phone_set]
    if phone in table:
        return table[phone]
    # Stress digit (Italian/Catalan "a1") or length mark (Finnish "a:", "t:") on a listed phone.
    if phone[-1:] == "1" and phone[:-1] in table:
        return table[phone[:-1]]
    if phone_set == "finnish" and phone[-1:] == ":" and phone[:-1] in table:
        return table[phone[:-1]] + "ː"
    raise KeyError(f"no IPA for Festival phone {phone!r} of phone set {phone_set!r}")


@dataclass(frozen=True)
class Utterance:
    """Speech for ``text`` by Festival ``voice``: ``samples`` (n,) float32 at 16 kHz and ``phonemes``
    (IPA, ``PAUSE`` for silence) tiling [0, n). ``phones`` are Festival's own (name, end_s) segments.
    ``source_rate_hz``: the voice's native rate. ``synthesis_s``: this utterance's share of the batch."""

    text: str
    voice: str
    samples: np.ndarray
    sample_rate_hz: int
    source_rate_hz: int
    phonemes: tuple[Phoneme, ...]
    phones: tuple[tuple[str, float], ...]
    synthesis_s: float

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0]) / self.sample_rate_hz


def _festival_binary() -> str:
    path = shutil.which("festival")
    if path is None:
        raise FestivalUnavailableError("festival not found: install the Debian package festival")
    return path


@functools.cache
def _listed_voices() -> frozenset[str]:
    """Voices the installed Festival knows (one short festival run per process)."""
    script = '(mapcar (lambda (v) (format t "%s\\n" v)) (voice.list))\n'
    out = _run_festival(script.encode("ascii"), STARTUP_TIMEOUT_S, capture=True)
    return frozenset(line.strip() for line in out.splitlines() if line.strip())


def available() -> bool:
    """Whether ``festival`` is installed (voices may still be missing: see ``installed_voices``)."""
    return shutil.which("festival") is not None


def installed_voices(language: str | None = None) -> list[str]:
    """Names of ``VOICES`` installed here (optionally of one language), in ``VOICES`` order."""
    if not available():
        return []
    listed = _listed_voices()
    return [n for n, v in VOICES.items() if n in listed and (language is None or v.language == language)]


def _run_festival(script: bytes, timeout_s: float, capture: bool = False) -> str:
    binary = _festival_binary()
    with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
        path = Path(tmp) / "job.scm"
        path.write_bytes(script)
        try:
            proc = subprocess.run(
                [binary, "-b", str(path)], capture_output=True, timeout=timeout_s, cwd=tmp, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"festival did not finish within {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-800:]
        raise RuntimeError(f"festival failed (exit {proc.returncode}): {err}")
    return proc.stdout.decode("utf-8", "replace") if capture else ""


_NUKTA = "\u093c"


def _prepare_text(text: str, voice: FestivalVoice) -> bytes:
    """The text as a Scheme string literal in the voice's encoding (see the module docstring)."""
    if not text.strip():
        raise ValueError("text must not be empty")
    if voice.phone_set == "nsk":
        text = unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).replace(_NUKTA, ""))
    clean = " ".join(text.split()).replace("\\", " ").replace('"', " ")
    try:
        return b'"' + clean.encode(voice.encoding) + b'"'
    except UnicodeEncodeError as exc:
        raise ValueError(f"voice {voice.name} reads {voice.encoding}; cannot encode {text!r}") from exc


_PRELUDE = b"""(Parameter.set 'Audio_Method 'none)
(define (sa_dump_segments utt path)
  (let ((fd (fopen path "w")))
    (mapcar (lambda (s) (format fd "%s %f\\n" (item.name s) (item.feat s "end")))
            (utt.relation.items utt 'Segment))
    (fclose fd)))
"""
# Each job is written out at top level: Festival 2.5 segfaults when the Hindi front end runs inside a
# user-defined function (``(define (say text) (utt.synth (Utterance Text text)))``), at top level not.
# Each job runs under ``unwind-protect``: a text one voice's front end cannot read (the Italian voices
# fail on some English word sequences with "wrong type of argument to get_c_val") writes no files and
# the script goes on with the next job.
_JOB = """(unwind-protect
 (begin
  (set! sa_u (Utterance Text {text}))
  (utt.synth sa_u)
  (utt.save.wave sa_u "{wav}" 'riff)
  (sa_dump_segments sa_u "{seg}"))
 (format t "sa_failed {index}\\n"))
"""


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise RuntimeError(f"unexpected festival wav format in {path.name}")
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return data.astype(np.float32) / 32768.0, rate


def _timeline(phones: Sequence[tuple[str, float]], phone_set: str, n: int) -> tuple[Phoneme, ...]:
    """Festival (phone, end_s) segments → IPA phonemes tiling [0, n) at 16 kHz (pauses merged)."""
    out: list[list[object]] = []  # [symbol, start, end]
    start = 0
    for k, (name, end_s) in enumerate(phones):
        end = n if k == len(phones) - 1 else min(n, round(end_s * SAMPLE_RATE_HZ))
        if end <= start:
            continue  # rounded to nothing, or past the audio
        sym = phone_to_ipa(name, phone_set)
        if out and sym == PAUSE and out[-1][0] == PAUSE:
            out[-1][2] = end
        else:
            out.append([sym, start, end])
        start = end
    if not out:
        return (Phoneme(PAUSE, 0, n),) if n else ()
    if out[-1][2] != n:  # the last segment rounded away: let the previous one reach the end
        out[-1][2] = n
    return tuple(Phoneme(str(s), int(a), int(b)) for s, a, b in out)  # type: ignore[call-overload]


def synthesize_many(jobs: Sequence[tuple[str, str]], *, skip_failed: bool = False) -> list[Utterance | None]:
    """Synthesize (text, voice) jobs in one Festival process; results in job order.

    Jobs are grouped by voice (first-seen order) so each voice loads once, one process per language.
    Raises ValueError for an
    unknown voice or text the voice cannot encode, FestivalUnavailableError when festival or the voice
    is not installed, RuntimeError when festival fails, or when one job's text fails in the voice's
    front end (with ``skip_failed`` that job's result is None instead and the others are kept).
    """
    if not jobs:
        return []
    voices = []
    for _, name in jobs:
        if name not in VOICES:
            raise ValueError(f"unknown Festival voice {name!r}; known: {', '.join(VOICES)}")
        voices.append(VOICES[name])
    missing = sorted({v.name for v in voices} - set(installed_voices()))
    if missing:
        pkgs = " ".join(VOICES[m].package for m in missing)
        raise FestivalUnavailableError(f"Festival voice(s) {missing} not installed: apt-get install {pkgs}")
    order = sorted(range(len(jobs)), key=lambda i: [v.name for v in voices].index(voices[i].name))
    # One Festival process per language: a voice's front end changes Festival's global state (phone
    # features, lexicon hooks), and a voice of another language loaded after it can fail (the Russian
    # voice breaks the Finnish ones: "Phone v does not have feature csoft"). Within a language the
    # voices share a front end and one process serves them all.
    languages = list(dict.fromkeys(voices[i].language for i in order))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="festival-out-") as tmp:
        out_dir = Path(tmp)
        for language in languages:
            script = [_PRELUDE]
            current = None
            group = [i for i in order if voices[i].language == language]
            for i in group:
                voice = voices[i]
                if voice.name != current:
                    script.append(f"(voice_{voice.name})\n".encode("ascii"))
                    current = voice.name
                wav, seg = out_dir / f"{i}.wav", out_dir / f"{i}.seg"
                head, tail = _JOB.encode("ascii").split(b"{text}")
                script.append(
                    head
                    + _prepare_text(jobs[i][0], voice)
                    + tail.decode().format(wav=wav, seg=seg, index=i).encode()
                )
            _run_festival(b"".join(script), STARTUP_TIMEOUT_S + PER_JOB_TIMEOUT_S * len(group))
        wall = time.perf_counter() - t0
        results: list[Utterance | None] = []
        for i, ((text, name), voice) in enumerate(zip(jobs, voices, strict=True)):
            wav, seg = out_dir / f"{i}.wav", out_dir / f"{i}.seg"
            if not wav.is_file() or not seg.is_file():
                if skip_failed:
                    results.append(None)
                    continue
                raise RuntimeError(f"festival cannot synthesize {text!r} with {name} (its front end failed)")
            raw, rate = _read_wav(wav)
            samples = raw if rate == SAMPLE_RATE_HZ else resample(raw, rate, SAMPLE_RATE_HZ)
            samples = np.ascontiguousarray(samples, dtype=np.float32)
            phones = []
            for line in seg.read_text(encoding="latin-1").splitlines():
                if line.strip():
                    ph, end_s = line.rsplit(" ", 1)
                    phones.append((ph.strip(), float(end_s)))
            results.append(
                Utterance(
                    text=text,
                    voice=name,
                    samples=samples,
                    sample_rate_hz=SAMPLE_RATE_HZ,
                    source_rate_hz=rate,
                    phonemes=_timeline(phones, voice.phone_set, samples.shape[0]),
                    phones=tuple(phones),
                    synthesis_s=wall / len(jobs),
                )
            )
    return results


def synthesize(text: str, voice: str = "cmu_us_slt_arctic_hts") -> Utterance:
    """One utterance (a Festival process of its own: prefer ``synthesize_many`` for many)."""
    utt = synthesize_many([(text, voice)])[0]
    assert utt is not None  # skip_failed is off: a failure raised
    return utt

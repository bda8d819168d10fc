"""espeak-ng speech synthesis with the synthesizer's own phoneme timing, for training data.

A ctypes binding to Debian's ``libespeak-ng1`` (no C headers or Python package needed). ``synthesize``
returns 16 kHz float32 speech plus the phoneme timeline that produced it: espeak reports a PHONEME
event for every entry of the phoneme list it renders, with the absolute output sample where that
phoneme starts. Those positions are the ground truth (no forced alignment, no guessing), which is the
point of generating data with a formant synthesizer instead of recording it.

Decisions, and why:

- **Events in IPA.** The engine is initialised with ``espeakINITIALIZE_PHONEME_EVENTS |
  espeakINITIALIZE_PHONEME_IPA``, so each PHONEME event carries the phoneme's IPA spelling (UTF-8, at
  most 8 bytes: every symbol seen in en/es/fr/de/ja/cmn/hi/ar fits). Stress is not part of a phoneme
  event, so symbols never carry ``ˈ``/``ˌ``; length (``ː``), tie-less diphthongs (``aɪ``) and
  diacritics (``o̞``) are part of the symbol.
- **Pauses come from espeak's phoneme list, checked against its audio.** espeak's pause phonemes
  (``_``, ``_:``, ``_!``, ``_|``) have an empty IPA spelling and become ``PAUSE`` ("_") entries; runs
  of them merge. A few non-pause phonemes also have no IPA spelling (English ``;``, a hiatus glide
  after /ɪ/ before a vowel, during which the vowel goes on sounding); with IPA events the two kinds
  look alike, so an empty-IPA span is a pause only if its own audio is below ``PAUSE_MAX_RMS``
  (-40 dBFS; espeak's pauses are digital silence, < -60 dBFS measured), otherwise it extends the
  phoneme before it. Deriving all pauses from an energy threshold instead would mislabel stop
  closures (near-silent, but part of /p t k/) and depend on the volume. The time before the first
  phoneme is also a pause, so the timeline tiles the whole signal: entry ``i`` ends where ``i + 1``
  starts, the first starts at 0 and the last ends at ``len(samples)``.
- **Language switches are dropped.** When a word is not readable in the voice's language (Latin
  letters in Mandarin, kanji in Japanese), espeak switches language for it and emits a zero-length
  ``(en)``-style marker; those markers go to ``Utterance.switched_to`` instead of the timeline, so
  callers can reject such text (``texts.py`` does).
- **Mandarin.** In espeak-ng 1.51 (Debian bookworm/trixie) the ``cmn`` voice reads the dictionary's
  pinyin for many hanzi as English words ("你好" comes out as "nee three hay three"); the
  ``cmn-latn-pinyin`` voice reads the same hanzi correctly. ``VOICE_ALIASES`` maps ``cmn``/``zh``
  to it; ``Utterance.espeak_voice`` records what was actually loaded.
- **Determinism, and its limit.** The C library's ``rand()`` (used for noise by klatt, whisper and
  breathy variants) is reseeded before every synthesis. But espeak-ng 1.51 also keeps unexported
  synthesis state across calls that neither the API nor ``espeak_Initialize`` resets: the pitch
  flutter phase and the echo buffer. So repeating a call in one process gives the same phoneme and
  word sequence with timings a few samples apart, while the same sequence of calls in a fresh
  process is bit-identical (tested). Reproducible datasets therefore come from workers that each
  start fresh and run a fixed, seeded job list.
- **Sample rate.** espeak renders int16 at 22050 Hz; audio goes through
  ``stream_avatar.audio.resample.resample`` (libswresample, time-aligned) and event positions are
  scaled by 16000 / 22050 and rounded.

Concurrency: espeak-ng is one global engine per process (voice, parameters and the callback are
process-wide state). All calls here hold a module lock, and the engine is initialised lazily on first
use, once per process. Parallelism therefore means processes: use ``multiprocessing`` with the
"spawn" or "forkserver" context; each worker initialises its own engine on first call. (A forked child
also works, since synchronous mode starts no threads: the lock is recreated after ``fork``.)

Speed (measured on this project's 2-core machine, one core, 40 generated sentences per language, including
the 16 kHz resampling): 280-355x real time per language, about 310x overall, so 2 hours of audio take
about 25 s of one core. ``phonemize`` runs at 520-770x. ``Utterance.synthesis_s`` reports each call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream_avatar.audio.resample import resample

__all__ = [
    "ESPEAK_RATE_HZ",
    "PAUSE",
    "PAUSE_MAX_RMS",
    "SAMPLE_RATE_HZ",
    "SYMBOL_FIXES",
    "VOICE_ALIASES",
    "EspeakUnavailableError",
    "Phoneme",
    "Utterance",
    "Word",
    "espeak_version",
    "list_variants",
    "list_voices",
    "phonemize",
    "synthesize",
]

ESPEAK_RATE_HZ: int = 22050
SAMPLE_RATE_HZ: int = 16000
PAUSE: str = "_"
# An espeak phoneme without IPA spelling is a pause only if its audio is quieter than this (-40 dBFS).
PAUSE_MAX_RMS: float = 0.01

# Voice names that load a broken or poorer voice in espeak-ng 1.51, and what to load instead.
VOICE_ALIASES: dict[str, str] = {"cmn": "cmn-latn-pinyin", "zh": "cmn-latn-pinyin"}

# Phonemes whose IPA espeak-ng 1.51 leaves undefined (it writes "??", also in ``espeak-ng --ipa``),
# per voice language, with the IPA of the mnemonic ``espeak-ng -x`` shows (German "UR" in "kurz").
SYMBOL_FIXES: dict[str, dict[str, str]] = {"de": {"??": "ʊɐ"}}

# Parameter ranges espeak honours (it clamps silently outside them; we refuse instead).
RATE_WPM_RANGE = (80, 450)
PITCH_RANGE = (0, 100)
PITCH_RANGE_RANGE = (0, 100)
VOLUME_RANGE = (0, 200)

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_EV_LIST_TERMINATED = 0
_EV_WORD = 1
_EV_PHONEME = 7
_P_RATE, _P_VOLUME, _P_PITCH, _P_RANGE, _P_PUNCTUATION, _P_CAPITALS, _P_WORDGAP = 1, 2, 3, 4, 5, 6, 7
# Callback chunk length in ms: longer chunks mean fewer Python callbacks per utterance.
_BUFFER_MS = 1000
_RAND_SEED = 12345
_SWITCH_RE = re.compile(r"^\(([A-Za-z0-9-]+)\)$")


class EspeakUnavailableError(RuntimeError):
    """libespeak-ng cannot be loaded or initialised; the message says which Debian package to install."""


@dataclass(frozen=True)
class Phoneme:
    """One timeline entry: IPA ``symbol`` (``PAUSE`` for silence) over samples [start, end) at 16 kHz."""

    symbol: str
    start: int
    end: int


@dataclass(frozen=True)
class Word:
    """A word of the input: ``text`` (``text[char_start:char_end]`` of the input), samples [start, end).

    ``start``/``end`` are the start of its first and the end of its last phoneme (pauses excluded).
    """

    text: str
    char_start: int
    char_end: int
    start: int
    end: int


@dataclass(frozen=True)
class Utterance:
    """Speech for ``text`` and its timing. ``samples``: (n,) float32 in [-1, 1] at ``sample_rate_hz``.

    ``phonemes`` tile [0, n) contiguously (see the module docstring); ``words`` are in text order.
    ``voice`` is what the caller asked for, ``espeak_voice`` what was loaded (after ``VOICE_ALIASES``).
    ``switched_to`` lists languages espeak switched to for words it could not read in the voice's own
    language (empty for clean text). ``synthesis_s``: wall time of this call.
    """

    text: str
    voice: str
    espeak_voice: str
    rate_wpm: int
    pitch: int
    pitch_range: int
    volume: int
    samples: np.ndarray = field(repr=False)
    sample_rate_hz: int
    phonemes: tuple[Phoneme, ...]
    words: tuple[Word, ...]
    switched_to: tuple[str, ...]
    synthesis_s: float

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0]) / self.sample_rate_hz


# ----------------------------------------------------------------------------------------- ctypes


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    # Layout checked empirically against libespeak-ng 1.51 (x86_64, 40 bytes): phoneme ``sample``
    # values increase, stay within the rendered length, and ``id.string`` decodes to IPA.
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated language)*, then a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _load_library() -> ctypes.CDLL:
    names = [n for n in (ctypes.util.find_library("espeak-ng"), "libespeak-ng.so.1") if n]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise EspeakUnavailableError(
        "libespeak-ng not found: install the Debian package libespeak-ng1 (or espeak-ng) to synthesize speech"
    )


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.espeak_Info.restype = ctypes.c_char_p


class _Engine:
    """The process's espeak-ng instance; every method must be called with ``_LOCK`` held."""

    def __init__(self) -> None:
        self.lib = _load_library()
        _declare(self.lib)
        rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA
        )
        if rate <= 0:
            raise EspeakUnavailableError(
                "espeak-ng failed to initialise (its data directory is missing?): reinstall the Debian "
                "packages libespeak-ng1 and espeak-ng-data"
            )
        if rate != ESPEAK_RATE_HZ:
            raise EspeakUnavailableError(
                f"espeak-ng renders at {rate} Hz; this binding expects {ESPEAK_RATE_HZ}"
            )
        libc_name = ctypes.util.find_library("c")
        self.libc: ctypes.CDLL | None = ctypes.CDLL(libc_name) if libc_name else None
        self.pid = os.getpid()
        self.voice: str | None = None
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, int, int, int, bytes]] = []  # type, text_pos, length, sample, id
        # Keep the ctypes callback object alive as long as the engine: espeak holds only its address.
        self._callback = _SynthCallback(self._on_audio)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], n: int, events: ctypes._Pointer[_Event]) -> int:
        if n > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EV_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EV_PHONEME:
                self.events.append((ev.type, ev.text_position, ev.length, ev.sample, bytes(ev.id.string)))
            elif ev.type == _EV_WORD:
                self.events.append((ev.type, ev.text_position, ev.length, ev.sample, b""))
            i += 1
        return 0

    def set_voice(self, name: str) -> None:
        if name == self.voice:
            return
        self.voice = None
        if self.lib.espeak_SetVoiceByName(name.encode("utf-8")) != _EE_OK:
            raise ValueError(f"unknown espeak-ng voice {name!r}; see list_voices() and list_variants()")
        self.voice = name

    def synth(
        self, text: str, rate_wpm: int, pitch: int, pitch_range: int, volume: int
    ) -> tuple[np.ndarray, list[tuple[int, int, int, int, bytes]]]:
        """Render ``text``: (int16 PCM at 22050 Hz, events)."""
        lib = self.lib
        for param, value in (
            (_P_RATE, rate_wpm),
            (_P_VOLUME, volume),
            (_P_PITCH, pitch),
            (_P_RANGE, pitch_range),
            (_P_PUNCTUATION, 0),
            (_P_CAPITALS, 0),
            (_P_WORDGAP, 0),
        ):
            lib.espeak_SetParameter(param, value, 0)
        if self.libc is not None:
            self.libc.srand(_RAND_SEED)
        self.chunks, self.events = [], []
        data = text.encode("utf-8") + b"\0"
        try:
            rc = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if rc != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with code {rc}")
            lib.espeak_Synchronize()
            chunks, events = self.chunks, self.events
        finally:
            self.chunks, self.events = [], []
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return pcm, events


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _reset_lock_after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_after_fork)


def _engine() -> _Engine:
    """The process's engine, created on first use (caller holds ``_LOCK``)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


# ----------------------------------------------------------------------------------------- voices


def _variant_dir(engine: _Engine) -> Path:
    path = ctypes.c_char_p()
    engine.lib.espeak_Info(ctypes.byref(path))
    return Path((path.value or b"").decode("utf-8", "replace")) / "voices" / "!v"


def _voice_languages(voice: _Voice) -> list[str]:
    """Parse the (priority byte, language NUL)* list that ends with a 0 priority byte."""
    out: list[str] = []
    if not voice.languages:
        return out
    pos = voice.languages
    for _ in range(16):
        if ctypes.string_at(pos, 1) == b"\0":
            break
        lang = ctypes.string_at(pos + 1)
        if not lang:
            break
        out.append(lang.decode("ascii", "replace").lower())
        pos += len(lang) + 2
    return out


def _all_voices(engine: _Engine, spec: _Voice | None) -> list[_Voice]:
    arr = engine.lib.espeak_ListVoices(ctypes.byref(spec) if spec is not None else None)
    voices: list[_Voice] = []
    i = 0
    while arr and arr[i]:
        voices.append(arr[i].contents)
        i += 1
    return voices


def list_voices(language: str | None = None) -> list[str]:
    """Names ``synthesize`` accepts as ``voice`` (lower-case espeak voice file names, mbrola excluded).

    ``language`` (e.g. "en") keeps voices for that language and its regional forms ("en-us", "en-gb-x-rp",
    ...). Combine a voice with a variant as ``f"{voice}+{variant}"`` (see ``list_variants``).
    """
    prefix = language.lower() if language else None
    names: set[str] = set()
    with _LOCK:
        engine = _engine()
        for v in _all_voices(engine, None):
            ident = (v.identifier or b"").decode("utf-8", "replace")
            if not ident or ident.startswith("mb/"):
                continue  # mbrola voices need the separate mbrola binary and databases
            name = ident.rsplit("/", 1)[-1].lower()
            langs = [*_voice_languages(v), name]
            if prefix is None or any(lang == prefix or lang.startswith(prefix + "-") for lang in langs):
                names.add(name)
    return sorted(names)


def list_variants() -> list[str]:
    """Voice variants (``m1``..``m8``, ``f1``..``f5``, ``croak``, ``klatt``, ``whisper``, named ones ...).

    These are the file names in espeak-ng-data/voices/!v, as ``voice+variant`` expects them (case
    matters; names with spaces are left out). Each variant changes formants, pitch and voicing, so
    (voice, variant, pitch, rate) makes many distinct synthetic speakers.
    """
    with _LOCK:
        engine = _engine()
        spec = _Voice()
        spec.languages = ctypes.cast(ctypes.c_char_p(b"variant"), ctypes.c_void_p).value
        idents = [(v.identifier or b"").decode("utf-8", "replace") for v in _all_voices(engine, spec)]
        names = {i.rsplit("/", 1)[-1] for i in idents if i.startswith("!v/")}
        if not names:
            vdir = _variant_dir(engine)
            names = {p.name for p in vdir.iterdir() if p.is_file()} if vdir.is_dir() else set()
    return sorted(n for n in names if " " not in n)


def espeak_version() -> str:
    """The loaded libespeak-ng version string (e.g. "1.51")."""
    with _LOCK:
        engine = _engine()
        return (engine.lib.espeak_Info(None) or b"").decode("ascii", "replace")


def _resolve_voice(voice: str) -> str:
    """Apply ``VOICE_ALIASES`` and check the variant: espeak silently ignores unknown variants."""
    if not isinstance(voice, str) or not voice.strip():
        raise ValueError(f"voice must be a non-empty espeak-ng voice name, got {voice!r}")
    base, sep, variant = voice.strip().partition("+")
    base = VOICE_ALIASES.get(base.lower(), base)
    if sep:
        if variant not in _variants_cached():
            raise ValueError(f"unknown espeak-ng voice variant {variant!r} in {voice!r}; see list_variants()")
        return f"{base}+{variant}"
    return base


_VARIANTS: frozenset[str] | None = None


def _variants_cached() -> frozenset[str]:
    global _VARIANTS
    if _VARIANTS is None:
        _VARIANTS = frozenset(list_variants())
    return _VARIANTS


# -------------------------------------------------------------------------------------- synthesis


def _check_int(name: str, value: int, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    if isinstance(value, bool) or int(value) != value or not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _check_text(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text is empty: nothing to synthesize")
    if "\0" in text:
        raise ValueError("text contains a NUL character")
    return text


def _decode_symbol(raw: bytes) -> str:
    # id.string is a fixed 8-byte field: NUL-padded, and a long symbol could be cut inside a character.
    return raw.split(b"\0", 1)[0].decode("utf-8", "ignore")


def _fixes(espeak_voice: str) -> dict[str, str]:
    return SYMBOL_FIXES.get(espeak_voice.partition("+")[0].split("-")[0].lower(), {})


def _timeline(
    events: list[tuple[int, int, int, int, bytes]],
    pcm: np.ndarray,
    n_out: int,
    text: str,
    fixes: dict[str, str] | None = None,
) -> tuple[tuple[Phoneme, ...], tuple[Word, ...], tuple[str, ...]]:
    """espeak events + int16 PCM (22050 Hz) -> contiguous 16 kHz phoneme timeline, words, switches."""
    n_in = int(pcm.shape[0])
    scale = n_out / n_in if n_in else 0.0
    switched: list[str] = []
    raw_marks: list[tuple[str, int, int]] = []  # symbol ("" = no IPA), start (espeak samples), word
    words_raw: list[tuple[int, int]] = []
    for etype, text_pos, length, sample, raw in events:
        if etype == _EV_WORD:
            words_raw.append((text_pos - 1, length))
            continue
        sym = _decode_symbol(raw)
        if fixes:
            sym = fixes.get(sym, sym)
        m = _SWITCH_RE.match(sym)
        if m:
            if m.group(1) not in switched:
                switched.append(m.group(1))
            continue
        raw_marks.append((sym, min(max(sample, 0), n_in), len(words_raw) - 1))
    marks: list[tuple[str | None, int, int]] = []  # None: extends the previous entry
    last = 0
    for i, (sym, start_in, word) in enumerate(raw_marks):
        label: str | None = sym
        if not sym:
            end_in = raw_marks[i + 1][1] if i + 1 < len(raw_marks) else n_in
            span = pcm[start_in:end_in].astype(np.float32) / np.float32(32768.0)
            loud = span.size > 0 and float(np.sqrt(np.mean(span * span))) > PAUSE_MAX_RMS
            label = None if loud and marks else PAUSE
        start = min(max(round(start_in * scale), last), n_out)
        last = start
        marks.append((label, start, word if label not in (None, PAUSE) else -1))
    if not marks or marks[0][1] > 0:
        marks.insert(0, (PAUSE, 0, -1))
    phonemes: list[Phoneme] = []
    owner: list[int] = []
    for i, (label, start, word) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else n_out
        if end <= start:
            continue
        if phonemes and (label is None or (label == PAUSE and phonemes[-1].symbol == PAUSE)):
            phonemes[-1] = Phoneme(phonemes[-1].symbol, phonemes[-1].start, end)
            continue
        if phonemes and phonemes[-1].end != start:  # a dropped zero-length entry: keep the tiling
            prev = phonemes[-1]
            phonemes[-1] = Phoneme(prev.symbol, prev.start, start)
        phonemes.append(Phoneme(label or PAUSE, start, end))
        owner.append(word)
    bounds: dict[int, tuple[int, int]] = {}
    for p, w in zip(phonemes, owner, strict=True):
        if w >= 0 and p.symbol != PAUSE:
            bounds[w] = (bounds[w][0], p.end) if w in bounds else (p.start, p.end)
    words: list[Word] = []
    for w, (char_start, length) in enumerate(words_raw):
        if w not in bounds or char_start < 0:
            continue
        char_end = min(char_start + length, len(text))
        words.append(Word(text[char_start:char_end], char_start, char_end, *bounds[w]))
    return tuple(phonemes), tuple(words), tuple(switched)


def _resampled_length(n_in: int) -> int:
    return round(n_in * SAMPLE_RATE_HZ / ESPEAK_RATE_HZ)


def synthesize(
    text: str,
    voice: str = "en",
    *,
    rate_wpm: int = 175,
    pitch: int = 50,
    pitch_range: int = 50,
    volume: int = 100,
) -> Utterance:
    """Speak ``text`` with espeak-ng; return 16 kHz float32 audio and its exact phoneme timeline.

    ``voice``: an espeak voice name, optionally with a variant ("en", "en-us", "en+f3", "cmn", "ja",
    "hi+m3"); see ``list_voices`` / ``list_variants``. ``rate_wpm`` in [80, 450] words per minute,
    ``pitch`` and ``pitch_range`` in [0, 100] (50 is the voice's default), ``volume`` in [0, 200]
    (100 is normal; espeak's own normalisation, not a linear gain). Raises ``ValueError`` for empty
    text, an unknown voice or variant, or a parameter out of range; ``EspeakUnavailableError`` when
    libespeak-ng is not installed. Thread-safe (serialised by a lock).
    """
    _check_text(text)
    rate_wpm = _check_int("rate_wpm", rate_wpm, RATE_WPM_RANGE)
    pitch = _check_int("pitch", pitch, PITCH_RANGE)
    pitch_range = _check_int("pitch_range", pitch_range, PITCH_RANGE_RANGE)
    volume = _check_int("volume", volume, VOLUME_RANGE)
    t0 = time.perf_counter()
    espeak_voice = _resolve_voice(voice)
    with _LOCK:
        engine = _engine()
        engine.set_voice(espeak_voice)
        pcm, events = engine.synth(text, rate_wpm, pitch, pitch_range, volume)
    if pcm.size == 0:
        raise ValueError(f"espeak-ng produced no audio for {text!r} (only punctuation or symbols?)")
    samples = resample(pcm.astype(np.float32) / np.float32(32768.0), ESPEAK_RATE_HZ, SAMPLE_RATE_HZ)
    phonemes, words, switched = _timeline(events, pcm, int(samples.size), text, _fixes(espeak_voice))
    return Utterance(
        text=text,
        voice=voice,
        espeak_voice=espeak_voice,
        rate_wpm=rate_wpm,
        pitch=pitch,
        pitch_range=pitch_range,
        volume=volume,
        samples=samples,
        sample_rate_hz=SAMPLE_RATE_HZ,
        phonemes=phonemes,
        words=words,
        switched_to=switched,
        synthesis_s=time.perf_counter() - t0,
    )


def phonemize(
    text: str, voice: str = "en", *, rate_wpm: int = 175
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The phoneme symbols ``synthesize`` would time for ``text`` (pauses included as ``PAUSE``).

    Returns (symbols, switched_to). It runs the same synthesis and reads the same events, so at the
    same ``rate_wpm`` the symbols equal ``synthesize(...).phonemes``' (the audio is only checked for
    pauses, not resampled: about twice as fast). Measured on 150 generated sentences in
    each of the 8 languages of ``texts``: the non-pause symbol sequence is identical for every rate
    in [175, 440]; only pause lengths change. At 450 and above espeak switches to its sonic speed-up
    and the list changes, so ``RATE_WPM_RANGE`` stops at 450 and fast phonemizing uses <= 440.
    """
    _check_text(text)
    rate_wpm = _check_int("rate_wpm", rate_wpm, RATE_WPM_RANGE)
    espeak_voice = _resolve_voice(voice)
    with _LOCK:
        engine = _engine()
        engine.set_voice(espeak_voice)
        pcm, events = engine.synth(text, rate_wpm, 50, 50, 100)
    # The same rounding as synthesize(), so zero-length entries are dropped the same way.
    phonemes, _, switched = _timeline(
        events, pcm, _resampled_length(int(pcm.size)), text, _fixes(espeak_voice)
    )
    return tuple(p.symbol for p in phonemes), switched

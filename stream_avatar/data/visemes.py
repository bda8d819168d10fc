"""Phonemes → visemes → mouth rig targets, with coarticulation.

Three documented steps:

1. ``viseme_of(ipa)``: an IPA phoneme (as espeak-ng writes it: stress marks, length marks, tone digits,
   diacritics and modifier letters included) → one of the 15 Oculus/Meta visemes ``VISEMES``. The
   symbol is normalised (``base_symbol``) and matched longest-first against ``IPA_VISEME``, a table by
   place of articulation for consonants and by openness/rounding for vowels. Diphthongs and affricates
   written as two symbols map by their first (affricates are in the table as units: tʃ → CH). Every
   phoneme espeak-ng produces for the project's languages has an entry (a test checks it).
2. ``VISEME_RIG``: each viseme's mouth shape as rig coefficients (jawOpen, mouthClose, mouthFunnel,
   mouthPucker, mouthStretch, mouthPress, mouthRoll...), authored for the warp renderer's FACS basis.
3. ``mouth_targets(phonemes, n_frames, fps)``: per-frame targets with coarticulation after Cohen &
   Massaro's dominance model: every phoneme pulls the mouth toward its viseme with a dominance that
   peaks at the phoneme's centre and decays exponentially with distance in time; a frame's target is
   the dominance-weighted mean. Lip closures (PP), labiodentals (FF) and pauses dominate strongly —
   the lips must meet for /p b m/ whatever surrounds them — while alveolars and velars dominate weakly,
   so they inherit the rounding of their neighbours (the /t/ in "too" is rounded). The mouth leads the
   sound: targets are evaluated ``LEAD_S`` (40 ms) ahead of the frame's time, as lips start moving
   before the acoustic onset in real speech.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream_avatar.motion import rig

VISEMES: tuple[str, ...] = (
    "sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou",
)  # fmt: skip

PAUSE = "_"

# IPA (normalised, see base_symbol) → viseme. Multi-character keys (affricates, clicks of the table's
# languages) are matched before single characters.
IPA_VISEME: dict[str, str] = {
    # bilabial: lips closed
    "p": "PP", "b": "PP", "m": "PP", "ɸ": "FF", "β": "FF", "ʙ": "PP",
    # labiodental: lower lip to upper teeth
    "f": "FF", "v": "FF", "ɱ": "FF", "ʋ": "FF",
    # dental fricatives: tongue between the teeth
    "θ": "TH", "ð": "TH",
    # alveolar / dental stops, taps
    "t": "DD", "d": "DD", "ɗ": "DD", "ʈ": "DD", "ɖ": "DD", "ɾ": "DD", "ɽ": "DD",
    # velar, uvular, pharyngeal, glottal: the lips take the neighbours' shape
    "k": "kk", "g": "kk", "ɡ": "kk", "ŋ": "kk", "x": "kk", "ɣ": "kk", "q": "kk", "ɢ": "kk", "χ": "kk",
    "ħ": "kk", "ʕ": "kk", "h": "kk", "ɦ": "kk", "ʔ": "kk", "c": "kk", "ɟ": "kk", "ç": "kk", "ʝ": "kk",
    "ɰ": "kk", "ɠ": "kk",
    # postalveolar / palatal sibilants and affricates: lips protruded
    "tʃ": "CH", "dʒ": "CH", "tɕ": "CH", "dʑ": "CH", "ʈʂ": "CH", "ɖʐ": "CH", "ʃ": "CH", "ʒ": "CH",
    "ɕ": "CH", "ʑ": "CH", "ʂ": "CH", "ʐ": "CH",
    # alveolar sibilants and affricates: teeth close, lips spread
    "ts": "SS", "dz": "SS", "s": "SS", "z": "SS",
    # nasals and laterals (tongue, not lips)
    "n": "nn", "ɲ": "nn", "ɳ": "nn", "ɴ": "nn", "l": "nn", "ɫ": "nn", "ɭ": "nn", "ʎ": "nn", "ɬ": "nn",
    "ɮ": "nn", "ʟ": "nn",
    # rhotics
    "r": "RR", "ɹ": "RR", "ɻ": "RR", "ʀ": "RR", "ʁ": "RR", "ɺ": "RR", "ɚ": "RR", "ɝ": "RR",
    # glides
    "w": "ou", "ʍ": "ou", "ɥ": "ou", "j": "ih",
    # open vowels
    "a": "aa", "ɑ": "aa", "ɐ": "aa", "æ": "aa", "ʌ": "aa", "ɶ": "aa",
    # mid front / central vowels
    "e": "E", "ɛ": "E", "ə": "E", "ɜ": "E", "ɘ": "E", "ɞ": "E",
    # close front / central unrounded vowels
    "i": "ih", "ɪ": "ih", "ɨ": "ih", "ᵻ": "ih", "ɯ": "ih", "ɤ": "E",
    # rounded mid vowels
    "o": "oh", "ɔ": "oh", "ø": "oh", "œ": "oh", "ɒ": "oh", "ɵ": "oh",
    # rounded close vowels
    "u": "ou", "ʊ": "ou", "ᵿ": "ou", "y": "ou", "ʏ": "ou", "ʉ": "ou",
}  # fmt: skip

# Viseme → mouth shape (rig coefficients not named are 0). Authored on the warp renderer: jaw opening
# of open vowels ~0.7, of close vowels ~0.2; bilabials press the lips; /f v/ roll the lower lip in.
VISEME_RIG: dict[str, dict[str, float]] = {
    "sil": {},
    "PP": {"mouthPressLeft": 0.6, "mouthPressRight": 0.6, "mouthClose": 0.05, "mouthRollLower": 0.1},
    "FF": {"jawOpen": 0.08, "mouthRollLower": 0.6, "mouthStretchLeft": 0.1, "mouthStretchRight": 0.1},
    "TH": {"jawOpen": 0.15, "mouthStretchLeft": 0.1, "mouthStretchRight": 0.1},
    "DD": {"jawOpen": 0.2, "mouthStretchLeft": 0.15, "mouthStretchRight": 0.15},
    "kk": {"jawOpen": 0.3},
    "CH": {"jawOpen": 0.12, "mouthFunnel": 0.5, "mouthPucker": 0.25},
    "SS": {"jawOpen": 0.08, "mouthStretchLeft": 0.45, "mouthStretchRight": 0.45},
    "nn": {"jawOpen": 0.15, "mouthStretchLeft": 0.1, "mouthStretchRight": 0.1},
    "RR": {"jawOpen": 0.15, "mouthFunnel": 0.3, "mouthPucker": 0.2},
    "aa": {"jawOpen": 0.7},
    "E": {"jawOpen": 0.45, "mouthStretchLeft": 0.3, "mouthStretchRight": 0.3},
    "ih": {"jawOpen": 0.25, "mouthStretchLeft": 0.45, "mouthStretchRight": 0.45},
    "oh": {"jawOpen": 0.45, "mouthFunnel": 0.6},
    "ou": {"jawOpen": 0.15, "mouthPucker": 0.75, "mouthFunnel": 0.2},
}

# Dominance (Cohen & Massaro): peak strength and temporal reach (s) per viseme.
DOMINANCE: dict[str, tuple[float, float]] = {
    "sil": (1.0, 0.05),
    "PP": (4.0, 0.025),
    "FF": (3.0, 0.03),
    "TH": (1.5, 0.05),
    "DD": (0.6, 0.04),
    "kk": (0.4, 0.04),
    "CH": (2.0, 0.04),
    "SS": (1.2, 0.05),
    "nn": (0.5, 0.04),
    "RR": (1.0, 0.06),
    "aa": (1.0, 0.07),
    "E": (1.0, 0.07),
    "ih": (1.0, 0.07),
    "oh": (1.3, 0.08),
    "ou": (1.6, 0.09),
}
LEAD_S = 0.040  # the mouth leads the sound
MOUTH_NAMES: tuple[str, ...] = tuple(sorted({n for shape in VISEME_RIG.values() for n in shape}))

_STRIP = set("ˈˌːˑ.‿|‖-̯̩̃͜͡ʰʲʷˠˤʼⁿˡ˞ᵝ↗↘") | set("0123456789") | set("˥˦˧˨˩")


def base_symbol(ipa: str) -> str:
    """Drop stress, length, tone, syllable marks, combining diacritics and modifier letters."""
    out = []
    for ch in unicodedata.normalize("NFD", ipa):
        if ch in _STRIP or unicodedata.category(ch) in ("Mn", "Lm", "Sk"):
            continue
        out.append(ch)
    return "".join(out)


# Symbols that normalisation would empty: espeak-ng writes Japanese palatalisation as a phoneme of its own.
SYMBOL_VISEME: dict[str, str] = {"ʲ": "ih"}


def viseme_of(ipa: str, default: str | None = None) -> str:
    """The viseme of one espeak-ng IPA phoneme; ``PAUSE`` and empty symbols are ``sil``.

    When no table entry matches: ``default`` if given, else KeyError naming the symbol (the table must
    grow; the dataset generator passes a default and reports such symbols instead of stopping)."""
    if ipa == PAUSE:
        return "sil"
    if ipa in SYMBOL_VISEME:
        return SYMBOL_VISEME[ipa]
    sym = base_symbol(ipa)
    if not sym:
        return "sil"
    for length in (2, 1):
        head = sym[:length]
        if len(head) == length and head in IPA_VISEME:
            return IPA_VISEME[head]
    if default is not None:
        return default
    raise KeyError(f"no viseme for phoneme {ipa!r} (normalised {sym!r})")


def viseme_rig(viseme: str) -> np.ndarray:
    """(RIG_SIZE,) float32 mouth shape of a viseme."""
    return rig.from_dict(VISEME_RIG[viseme])


_VISEME_RIGS = {v: viseme_rig(v) for v in VISEMES}


@dataclass(frozen=True)
class TimedPhoneme:
    """A phoneme with its span in seconds (``start_s`` < ``end_s``)."""

    symbol: str
    start_s: float
    end_s: float


UNKNOWN_VISEME = "kk"  # an unmapped phoneme: a neutral, weakly dominant mouth (its neighbours lead)


def mouth_targets(
    phonemes: Sequence[TimedPhoneme],
    n_frames: int,
    fps: int = 25,
    lead_s: float = LEAD_S,
    unknown: str | None = None,
) -> np.ndarray:
    """(n_frames, RIG_SIZE) float32 mouth targets; frame k describes time (k + 0.5) / fps.

    Outside the phonemes (before the first, after the last) the mouth is at rest (``sil``). A phoneme
    without a table entry raises KeyError, or gets viseme ``unknown`` when given.
    """
    if n_frames == 0:
        return rig.zeros(0)
    t = (np.arange(n_frames) + 0.5) / fps + lead_s  # the mouth shows what is about to sound
    num = np.zeros((n_frames, rig.RIG_SIZE))
    den = np.zeros(n_frames)
    spans = [(p, viseme_of(p.symbol, unknown)) for p in phonemes if p.end_s > p.start_s]
    # Rest before the first and after the last phoneme, so the mouth closes at the edges.
    first = min((p.start_s for p, _ in spans), default=0.0)
    last = max((p.end_s for p, _ in spans), default=0.0)
    # The rest spans reach past the first and last frame: the mouth is at rest away from speech.
    rest_before = TimedPhoneme(PAUSE, min(first, float(t[0])) - 1.0, first)
    rest_after = TimedPhoneme(PAUSE, last, max(last, float(t[-1])) + 1.0)
    spans = [(rest_before, "sil"), *spans, (rest_after, "sil")]
    for p, vis in spans:
        strength, reach = DOMINANCE[vis]
        centre = 0.5 * (p.start_s + p.end_s)
        half = 0.5 * (p.end_s - p.start_s)
        dist = np.maximum(np.abs(t - centre) - half, 0.0)  # full dominance across the phoneme itself
        d = strength * np.exp(-dist / reach)
        num += d[:, None] * _VISEME_RIGS[vis]
        den += d
    return rig.clamp(num / np.maximum(den, 1e-9)[:, None])


def phonemes_from_samples(items: Sequence[tuple[str, int, int]], sample_rate_hz: int) -> list[TimedPhoneme]:
    """(symbol, start_sample, end_sample) → TimedPhoneme list in seconds."""
    return [TimedPhoneme(s, a / sample_rate_hz, b / sample_rate_hz) for s, a, b in items]


def viseme_table_markdown(symbols: Mapping[str, str] | None = None) -> str:
    """The IPA → viseme table as Markdown, grouped by viseme (for the README / docs)."""
    table = IPA_VISEME if symbols is None else symbols
    rows = ["| viseme | IPA | mouth shape |", "|---|---|---|"]
    for vis in VISEMES:
        ipa = " ".join(sorted(k for k, v in table.items() if v == vis)) or "(pauses)"
        shape = ", ".join(f"{k} {v:g}" for k, v in VISEME_RIG[vis].items()) or "rest"
        rows.append(f"| {vis} | {ipa} | {shape} |")
    return "\n".join(rows)


def _check() -> None:
    assert set(VISEME_RIG) == set(VISEMES) == set(DOMINANCE)
    assert set(IPA_VISEME.values()) <= set(VISEMES)
    for shape in VISEME_RIG.values():
        for name in shape:
            rig.index(name)
    assert all(math.isfinite(a) and a > 0 and r > 0 for a, r in DOMINANCE.values())


_check()

"""espeak-ng synthesis with phoneme timing (``stream_avatar.data.espeak``) and generated texts
(``stream_avatar.data.texts``).

Skips visibly when libespeak-ng is not installed (Debian packages libespeak-ng1 / espeak-ng).
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from stream_avatar.data import espeak
from tests.fakes import assert_timeline_tiles

try:
    espeak.list_variants()
except espeak.EspeakUnavailableError as exc:  # pragma: no cover - depends on the host
    pytest.skip(f"libespeak-ng unavailable: {exc}", allow_module_level=True)

from stream_avatar.data import texts

VOWEL_LETTERS = set("aeiouyäæɑɐɒɔəɘɛɜɞɤɨɪʉʊʌʏøœɯɵɶ")
SAMPLES = {
    "en": "Hello there, this is a quiet morning. Shall we go?",
    "es": "Buenos días, ¿cómo estás? Vamos a la playa.",
    "ja": "おはよう ございます、いい てんき ですね。",
    "cmn": "你好，今天天气很好。我们一起去吧！",
}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _is_vowel(symbol: str) -> bool:
    return symbol[0] in VOWEL_LETTERS


@pytest.fixture(scope="module")
def utterances() -> dict[str, espeak.Utterance]:
    return {lang: espeak.synthesize(text, lang) for lang, text in SAMPLES.items()}


@pytest.mark.parametrize("lang", list(SAMPLES))
def test_timeline_tiles_the_audio(utterances: dict[str, espeak.Utterance], lang: str) -> None:
    utt = utterances[lang]
    assert utt.sample_rate_hz == 16000
    assert_timeline_tiles(utt.samples, utt.phonemes, espeak.PAUSE)
    assert all(p.symbol for p in utt.phonemes)
    assert utt.switched_to == ()
    # Words come in text order, inside the audio, and spell the input.
    assert utt.words and all(0 <= w.start < w.end <= utt.samples.shape[0] for w in utt.words)
    assert all(a.end <= b.start for a, b in itertools.pairwise(utt.words))
    assert all(utt.text[w.char_start : w.char_end] == w.text for w in utt.words)


@pytest.mark.parametrize("lang", list(SAMPLES))
def test_vowels_loud_pauses_silent(utterances: dict[str, espeak.Utterance], lang: str) -> None:
    utt = utterances[lang]
    x = utt.samples
    vowels = [_rms(x[p.start : p.end]) for p in utt.phonemes if _is_vowel(p.symbol)]
    pauses = [_rms(x[p.start : p.end]) for p in utt.phonemes if p.symbol == espeak.PAUSE]
    assert len(vowels) >= 5 and pauses
    floor = max(max(pauses), 1e-4)
    assert max(pauses) < 3e-3  # below -50 dBFS
    assert min(vowels) > 10 * floor and float(np.median(vowels)) > 0.05
    # Before the first phoneme: silence (a leading pause entry), or speech starting at once.
    first = utt.phonemes[0]
    if first.symbol == espeak.PAUSE:
        assert _rms(x[first.start : first.end]) < 3e-3


def _f0_hz(x: np.ndarray, rate_hz: int = 16000) -> float:
    """Crude F0 of a voiced stretch: the autocorrelation peak between 60 and 500 Hz."""
    x = x - x.mean()
    spec = np.fft.rfft(x, 2 * x.size)
    ac = np.fft.irfft(spec * np.conj(spec))[: x.size]
    lo, hi = rate_hz // 500, rate_hz // 60
    return rate_hz / (lo + int(np.argmax(ac[lo:hi])))


def test_rate_and_pitch_parameters() -> None:
    text = "We were away a year ago, on a long holiday."
    slow = espeak.synthesize(text, "en", rate_wpm=120)
    fast = espeak.synthesize(text, "en", rate_wpm=260)
    speech = [espeak.PAUSE]
    assert [p.symbol for p in slow.phonemes if p.symbol not in speech] == [
        p.symbol for p in fast.phonemes if p.symbol not in speech
    ]
    d_slow = sum(p.end - p.start for p in slow.phonemes if p.symbol not in speech)
    d_fast = sum(p.end - p.start for p in fast.phonemes if p.symbol not in speech)
    assert d_slow > 1.6 * d_fast

    def median_f0(utt: espeak.Utterance) -> float:
        vowels = [p for p in utt.phonemes if _is_vowel(p.symbol) and p.end - p.start >= 800]
        return float(np.median([_f0_hz(utt.samples[p.start : p.end]) for p in vowels]))

    low, high = (median_f0(espeak.synthesize(text, "en", pitch=p)) for p in (15, 85))
    assert 60 < low < high < 400 and high > 1.3 * low


_FRESH = """
import hashlib
from stream_avatar.data import espeak
h = hashlib.sha256()
for text, voice in (("A first sentence, then more.", "en+f3"), ("Otra frase distinta.", "es"),
                    ("A first sentence, then more.", "en+f3")):
    u = espeak.synthesize(text, voice, rate_wpm=190, pitch=60)
    h.update(u.samples.tobytes()); h.update(repr(u.phonemes).encode())
print(h.hexdigest())
"""


def test_determinism() -> None:
    # The same call sequence in a fresh process: bit-identical audio and timeline.
    runs = [
        subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=60, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout.strip() and runs[0].stdout == runs[1].stdout
    # Repeated in one process: the same phonemes and words; timing within espeak's carried-over
    # pitch-flutter phase (a few ms).
    text = "Repeat after me, please: the same words again."
    a = espeak.synthesize(text, "en+m3")
    espeak.synthesize("Something else in between.", "de")
    b = espeak.synthesize(text, "en+m3")
    assert [p.symbol for p in a.phonemes] == [p.symbol for p in b.phonemes]
    assert [w.text for w in a.words] == [w.text for w in b.words]
    drift = max(abs(p.start - q.start) for p, q in zip(a.phonemes, b.phonemes, strict=True))
    assert drift < 0.05 * 16000


def test_voices_and_variants() -> None:
    assert {"en", "en-us"} <= set(espeak.list_voices("en"))
    assert "cmn" in espeak.list_voices("cmn") and "ja" in espeak.list_voices()
    variants = set(espeak.list_variants())
    assert {"m1", "m7", "f1", "f5", "croak", "klatt", "whisper"} <= variants
    utt = espeak.synthesize("Good evening.", "en-us+f3", pitch=70, rate_wpm=150, volume=80)
    assert utt.espeak_voice == "en-us+f3" and utt.pitch == 70 and utt.rate_wpm == 150
    assert espeak.synthesize("你好", "cmn").espeak_voice == "cmn-latn-pinyin"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown espeak-ng voice"):
        espeak.synthesize("hello", "xx-nonexistent")
    with pytest.raises(ValueError, match="variant"):
        espeak.synthesize("hello", "en+nosuchvariant")
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="empty"):
            espeak.synthesize(empty)
    with pytest.raises(ValueError, match="rate_wpm"):
        espeak.synthesize("hello", rate_wpm=1000)
    with pytest.raises(ValueError, match="pitch"):
        espeak.synthesize("hello", pitch=-1)
    with pytest.raises(ValueError, match="no text material"):
        texts.sentences("tlh", 3)


def test_sentences_are_seeded_and_varied() -> None:
    a = texts.sentences("en", 50, seed=3)
    assert a == texts.sentences("en", 50, seed=3) and a[:10] == texts.sentences("en", 10, seed=3)
    assert a != texts.sentences("en", 50, seed=4)
    lengths = [len(s.split()) for s in a]
    assert min(lengths) >= 3 and max(lengths) <= 12 and len(set(lengths)) >= 6
    assert any("," in s for s in a) and {s[-1] for s in a} == {".", "?", "!"}


@pytest.mark.parametrize("lang", texts.LANGUAGES)
def test_every_language_speaks_generated_sentences(lang: str) -> None:
    for text in texts.sentences(lang, 2, seed=11):
        utt = espeak.synthesize(text, lang)
        speech = [p for p in utt.phonemes if p.symbol != espeak.PAUSE]
        assert utt.duration_s > 0.5 and len(speech) >= 5 and np.abs(utt.samples).max() > 0.05
        assert utt.switched_to == (), f"espeak switched language in {text!r}"
        # The coverage path (faster rate, cached) sees exactly the timed symbols.
        assert texts.phoneme_set(lang, text) == {p.symbol for p in speech}


def test_phonetic_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    report = texts.coverage_report(texts.LANGUAGES, n=200, seed=0, pool_size=400)
    with capsys.disabled():
        for lang, row in report.items():
            print(
                f"\n{lang}: {row['covered']}/{row['phonemes']} phonemes ({row['fraction']:.3f}) "
                f"with {row['sentences']} sentences; missing {row['missing']}",
                end="",
            )
    for lang, row in report.items():
        assert row["sentences"] == 200 and row["phonemes"] >= 25, lang
        assert row["fraction"] >= 0.9, (lang, row)
        # The vocabulary is read natively (espeak never switches to another language for it).
        assert texts.unreadable(lang) == [], lang

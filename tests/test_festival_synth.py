"""Festival synthesis from recorded voices (``stream_avatar.data.festival``), speaker warps
(``stream_avatar.data.warp``) and their use in the dataset engine.

Skips visibly when ``festival`` (Debian: festival + festvox-* voices) or ``sox`` is not installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stream_avatar.data import festival, flite, visemes
from tests.fakes import assert_timeline_tiles

if shutil.which("festival") is None:  # pragma: no cover - depends on the host
    pytest.skip("festival not installed (Debian package festival + festvox voices)", allow_module_level=True)

SAMPLES = {
    "en": "Hello there, this is a quiet morning. Shall we go? Judge the measure of joy, boy.",
    "hi": "नमस्ते, आप कैसे हैं? मैं ठीक हूँ। खाना तैयार है, ज़रूर।",
    "mr": "नमस्कार, तुम्ही कसे आहात? आज हवा छान आहे.",
    "te": "నమస్కారం, మీరు ఎలా ఉన్నారు? ఈ రోజు వాతావరణం బాగుంది.",
    "it": "Buongiorno, come stai? Oggi fa bel tempo, andiamo al mare.",
    "ca": "Bon dia, com estàs? Avui fa bon temps, anem a la platja.",
    "cs": "Dobrý den, jak se máte? Dnes je hezky, půjdeme ven. Řeka, čaj, žena.",
    "fi": "Hyvää huomenta, mitä kuuluu? Tänään on kaunis päivä.",
    "ru": "Здравствуйте, как дела? Сегодня хорошая погода.",
}
VOWEL_VISEMES = {"aa", "E", "ih", "oh", "ou"}
INSTALLED = festival.installed_voices()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _is_vowel(ipa: str) -> bool:
    return (
        ipa != visemes.PAUSE
        and visemes.base_symbol(ipa)[:1] not in "jw"
        and visemes.viseme_of(ipa) in VOWEL_VISEMES
    )


@pytest.fixture(scope="module")
def utterances() -> dict[str, festival.Utterance]:
    jobs = [(SAMPLES[festival.VOICES[v].language], v) for v in INSTALLED]
    return {u.voice: u for u in festival.synthesize_many(jobs)}  # one Festival process for all voices


def test_english_and_hindi_voices_installed() -> None:
    for name in ("cmu_us_slt_arctic_hts", "kal_diphone", "ked_diphone", "hindi_NSK_diphone"):
        if name not in INSTALLED:
            pytest.skip(f"Festival voice {name} missing: apt-get install {festival.VOICES[name].package}")


def test_phone_tables_are_complete_and_map_to_visemes() -> None:
    for table in festival.PHONE_SETS.values():
        for ipa in table.values():
            visemes.viseme_of(ipa)  # KeyError names the symbol
    with pytest.raises(KeyError, match="no IPA"):
        festival.phone_to_ipa("qq", "radio")


@pytest.mark.parametrize("voice", INSTALLED)
def test_timeline_tiles_the_audio_and_maps(utterances: dict[str, festival.Utterance], voice: str) -> None:
    utt = utterances[voice]
    assert utt.sample_rate_hz == 16000
    assert_timeline_tiles(utt.samples, utt.phonemes, visemes.PAUSE)
    ph = utt.phonemes
    for p in ph:  # every phone this voice emitted has IPA with a viseme
        visemes.viseme_of(p.symbol)
    # Festival's last segment ends where its wav does, within 50 ms (diphone voices overlap-add whole
    # pitch periods, so the wav runs on a little into the final pause).
    assert abs(utt.phones[-1][1] * 16000 - utt.samples.shape[0]) < 0.05 * 16000
    assert sum(1 for p in ph if p.symbol != visemes.PAUSE) >= 15


@pytest.mark.parametrize("voice", INSTALLED)
def test_vowels_loud_pauses_quiet(utterances: dict[str, festival.Utterance], voice: str) -> None:
    """The timings are right: vowels carry energy, pauses are (near) silent."""
    utt = utterances[voice]
    x = utt.samples
    vowels = [_rms(x[p.start : p.end]) for p in utt.phonemes if _is_vowel(p.symbol)]
    pauses = [_rms(x[p.start : p.end]) for p in utt.phonemes if p.symbol == visemes.PAUSE]
    assert len(vowels) >= 8 and pauses
    speech = _rms(x)
    assert float(np.median(vowels)) > 0.02
    assert float(np.median(pauses)) < 0.1 * float(np.median(vowels)), (np.median(pauses), np.median(vowels))
    # Nearly every vowel is louder than the median pause by 10 dB.
    loud = sum(v > 3.0 * float(np.median(pauses)) for v in vowels)
    assert loud >= 0.85 * len(vowels), (loud, len(vowels), speech)


def test_batch_is_deterministic() -> None:
    jobs = [("A first sentence, then more.", "kal_diphone"), ("Another one here.", "cmu_us_slt_arctic_hts")]
    jobs = [j for j in jobs if j[1] in INSTALLED]
    if not jobs:
        pytest.skip("no English Festival voice")

    def digest() -> str:
        h = hashlib.sha256()
        for u in festival.synthesize_many(jobs):
            h.update(u.samples.tobytes())
            h.update(repr(u.phonemes).encode())
        return h.hexdigest()

    assert digest() == digest()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown Festival voice"):
        festival.synthesize("hello", "no_such_voice")
    with pytest.raises(ValueError, match="empty"):
        festival.synthesize("  ", "kal_diphone")
    if "czech_dita" in INSTALLED:
        with pytest.raises(ValueError, match="iso-8859-2"):
            festival.synthesize("日本", "czech_dita")


# A sentence the Italian voices' front end fails on (SIOD "wrong type of argument to get_c_val").
ITALIAN_UNREADABLE = "Finger rain tired, can you help me, can you help me?"


def test_a_text_the_front_end_cannot_read_is_named_or_skipped() -> None:
    if "pc_diphone" not in INSTALLED:
        pytest.skip("Festival voice pc_diphone missing: apt-get install festvox-itapc16k")
    jobs = [(ITALIAN_UNREADABLE, "pc_diphone"), ("Point tour roof.", "pc_diphone")]
    with pytest.raises(RuntimeError, match="cannot synthesize"):
        festival.synthesize_many(jobs)
    bad, good = festival.synthesize_many(jobs, skip_failed=True)
    assert bad is None  # the next job of the same process still ran
    assert good is not None and good.samples.size > 8000 and len(good.phonemes) > 4


def test_each_language_runs_in_its_own_process() -> None:
    # Loaded before them in one process, the Russian voice breaks the Finnish ones
    # ("Phone v does not have feature csoft").
    if not {"msu_ru_nsh_clunits", "suo_fi_lj_diphone"} <= set(INSTALLED):
        pytest.skip(
            "Russian / Finnish Festival voices missing: apt-get install festvox-ru festvox-suopuhe-lj"
        )
    ru, fi = festival.synthesize_many(
        [(SAMPLES["ru"], "msu_ru_nsh_clunits"), (SAMPLES["fi"], "suo_fi_lj_diphone")]
    )
    assert ru is not None and fi is not None
    assert fi.voice == "suo_fi_lj_diphone" and fi.samples.size > 16000


def test_voices_of_other_languages_read_english_with_exact_phones(tmp_path: Path) -> None:
    pytest.importorskip("scipy", reason="the data engine needs the train extra")
    from stream_avatar.data import texts
    from stream_avatar.data.synth import DatasetConfig, read_dataset, synthesize_dataset

    langs = tuple(lang for lang in ("it", "cs") if festival.installed_voices(lang))
    if not langs:
        pytest.skip("no Italian or Czech Festival voice installed")
    config = DatasetConfig(
        hours=30.0 / 3600.0,
        seed=4,
        languages=langs,
        holdout_language=None,
        text_pool=12,
        workers=1,
        synthesizers=("festival",),
        festival_speakers_per_voice=2,
        text_language="en",
    )
    info = synthesize_dataset(tmp_path / "ds", config)
    assert info["unmapped_phonemes"] == {} and info["utterances"] >= 3
    english = set(texts.select_for_coverage("en", 12, 4))
    for utt in read_dataset(tmp_path / "ds"):
        assert utt.record["language"] in langs and utt.record["text"] in english
        voiced = [(s, e) for sym, s, e in utt.phonemes if sym != visemes.PAUSE]
        assert voiced and voiced[-1][1] <= utt.audio.size
    with pytest.raises(ValueError, match="sentence pool"):
        DatasetConfig(
            languages=("it",), holdout_language=None, synthesizers=("festival",), text_language="xx"
        )


# ------------------------------------------------------------------------------------------ flite

FLITE_VOICES = flite.installed_voices()


@pytest.mark.parametrize("voice", FLITE_VOICES)
def test_flite_timeline_tiles_maps_and_lines_up(voice: str) -> None:
    utt = flite.synthesize(SAMPLES["en"], voice)
    ph = utt.phonemes
    assert utt.sample_rate_hz == 16000
    assert_timeline_tiles(utt.samples, ph, visemes.PAUSE)
    for p in ph:
        visemes.viseme_of(p.symbol)
    x = utt.samples
    vowels = [_rms(x[p.start : p.end]) for p in ph if _is_vowel(p.symbol)]
    pauses = [_rms(x[p.start : p.end]) for p in ph if p.symbol == visemes.PAUSE]
    assert len(vowels) >= 8 and pauses
    assert float(np.median(pauses)) < 0.1 * float(np.median(vowels))
    assert sum(v > 3.0 * float(np.median(pauses)) for v in vowels) >= 0.85 * len(vowels)


# ------------------------------------------------------------------------------------------ warps

needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed (Debian package sox)")


def _f0_hz(x: np.ndarray, rate_hz: int = 16000) -> float:
    x = x - x.mean()
    spec = np.fft.rfft(x, 2 * x.size)
    ac = np.fft.irfft(spec * np.conj(spec))[: x.size]
    lo, hi = rate_hz // 400, rate_hz // 60
    return rate_hz / (lo + int(np.argmax(ac[lo:hi])))


def _median_f0(x: np.ndarray, spans: list[tuple[int, int]]) -> float:
    return float(np.median([_f0_hz(x[a:b]) for a, b in spans if b - a >= 800]))


def _centroid_hz(x: np.ndarray) -> float:
    s = np.abs(np.fft.rfft(x))
    return float((s * np.fft.rfftfreq(x.size, 1 / 16000)).sum() / s.sum())


@needs_sox
def test_warp_changes_pitch_formants_and_tempo_exactly() -> None:
    from stream_avatar.data.warp import Warp, apply_warp

    if "kal_diphone" not in INSTALLED:
        pytest.skip("festvox-kallpc16k missing")
    utt = festival.synthesize("We were away a year ago, on a long holiday.", "kal_diphone")
    x = utt.samples
    vowels = [(p.start, p.end) for p in utt.phonemes if _is_vowel(p.symbol)]
    f0 = _median_f0(x, vowels)
    up, scale = apply_warp(x, Warp(pitch_cents=400.0))
    assert scale == 1.0 and up.size == x.size
    assert _median_f0(up, vowels) == pytest.approx(f0 * 2 ** (400 / 1200), rel=0.08)
    # VTL warp: formants (spectral centroid) up, pitch unchanged, duration unchanged.
    tract, scale = apply_warp(x, Warp(vtl_factor=1.15))
    assert scale == 1.0 and tract.size == x.size
    assert _median_f0(tract, vowels) == pytest.approx(f0, rel=0.08)
    assert _centroid_hz(tract) > 1.08 * _centroid_hz(x)
    # Tempo: exact length, time_scale = new / old.
    fast, scale = apply_warp(x, Warp(tempo=1.25))
    assert fast.size == round(x.size / 1.25) and scale == pytest.approx(fast.size / x.size)
    # Vowels stay where the scaled timeline says (energy still on the scaled vowel spans).
    loud = [_rms(fast[round(a * scale) : round(b * scale)]) for a, b in vowels]
    assert float(np.median(loud)) > 0.5 * float(np.median([_rms(x[a:b]) for a, b in vowels]))
    with pytest.raises(ValueError, match="vtl_factor"):
        Warp(vtl_factor=2.0)
    same, scale = apply_warp(x, Warp())
    assert scale == 1.0 and np.array_equal(same, x)


# ------------------------------------------------------------------------------------ dataset


@needs_sox
def test_dataset_mixes_synthesizers_and_holds_out_whole_voices(tmp_path: Path) -> None:
    pytest.importorskip("scipy", reason="the data engine needs the train extra")
    from stream_avatar.data.synth import DatasetConfig, read_dataset, synthesize_dataset

    for name in ("cmu_us_slt_arctic_hts", "kal_diphone", "ked_diphone", "hindi_NSK_diphone"):
        if name not in INSTALLED:
            pytest.skip(f"Festival voice {name} missing")
    config = DatasetConfig(
        hours=40.0 / 3600.0,
        seed=3,
        languages=("en", "hi"),
        speakers_per_language=4,
        test_speakers_per_language=1,
        val_speakers_per_language=1,
        holdout_language="hi",
        text_pool=12,
        shard_minutes=0.3,
        workers=1,
        synthesizers=("espeak", "festival", "flite") if FLITE_VOICES else ("espeak", "festival"),
        festival_speakers_per_voice=2,
    )
    info = synthesize_dataset(tmp_path / "ds", config)
    assert info["format_version"] == 2 and info["unmapped_phonemes"] == {}
    assert set(info["counts"]["synthesizer"]) >= {"espeak", "festival"}
    for sp in info["speakers"].values():
        if sp["voice"] == "ked_diphone":
            assert sp["split"] == "test_speaker"
        if sp["voice"].startswith("hindi"):
            assert sp["split"] == "test_language"
        if sp["synthesizer"] == "festival" and sp["split"] == "test_speaker":
            assert sp["voice"] == "ked_diphone"  # whole voices, never warps of a training voice
    n = 0
    for utt in read_dataset(tmp_path / "ds"):
        rec = utt.record
        assert rec["synthesizer"] in ("espeak", "festival", "flite")
        if rec["synthesizer"] != "espeak":
            n += 1
            voices = festival.VOICES if rec["synthesizer"] == "festival" else flite.VOICES
            assert rec["voice"] in voices and "warp" in rec
            starts = [s for _, s, _ in utt.phonemes]
            assert starts == sorted(starts) and all(0 <= s < e <= utt.audio.size for _, s, e in utt.phonemes)
    assert n >= 2
    json.dumps(info)

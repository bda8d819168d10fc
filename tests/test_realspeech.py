"""The real-speech validation set (stream_avatar.data.realspeech).

The audio lives in Debian packages (codec2-examples, alsa-utils) and the aligner/recogniser is
pocketsphinx; tests that need either skip visibly, naming what to install. The JSON checks run anywhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from stream_avatar.data import realspeech, visemes

JSON_DIR = realspeech.DEFAULT_ROOT
RECORDS = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(JSON_DIR.glob("*.json"))]
HAVE_POCKETSPHINX = importlib.util.find_spec("pocketsphinx") is not None
needs_pocketsphinx = pytest.mark.skipif(
    not HAVE_POCKETSPHINX, reason="pocketsphinx not installed: pip install pocketsphinx"
)


def _missing_packages() -> list[str]:
    return sorted({r["package"] for r in RECORDS if not Path(r["source_path"]).is_file()})


@pytest.fixture(scope="module")
def clips() -> list[realspeech.RealClip]:
    missing = _missing_packages()
    if missing:
        pytest.skip(f"real-speech audio not installed: apt-get install {' '.join(missing)}")
    return realspeech.load_clips()


def test_json_set_is_small_and_complete() -> None:
    assert len(RECORDS) >= 10
    assert sum(p.stat().st_size for p in JSON_DIR.glob("*.json")) < 200_000
    for rec in RECORDS:
        for key in ("package", "source_path", "sha256", "sample_rate_hz", "transcript", "transcript_source",
                    "phones", "words", "alignment_score"):  # fmt: skip
            assert key in rec, (rec["name"], key)
        assert rec["package"] in ("codec2-examples", "alsa-utils")
        starts = [p[2] for p in rec["phones"]]
        assert starts == sorted(starts)
        assert all(a < b for _, _, a, b in rec["phones"])
        assert rec["phones"][-1][3] <= rec["duration_s"] + 0.01


def test_arpabet_table_maps_to_known_visemes() -> None:
    for arpa, ipa in realspeech.ARPABET_IPA.items():
        assert visemes.viseme_of(ipa) in visemes.VISEMES, arpa
    for filler in ("SIL", "+NSN+", "+SPN+", "+BREATH+", "<sil>"):
        assert realspeech.arpabet_to_ipa(filler) == visemes.PAUSE
    assert realspeech.arpabet_to_ipa("AH1") == "ə"
    with pytest.raises(KeyError):
        realspeech.arpabet_to_ipa("QQ")


def test_missing_audio_names_the_package(tmp_path: Path) -> None:
    rec = dict(RECORDS[0], source_path="/usr/share/codec2/raw/not_there.raw", package="codec2-examples")
    (tmp_path / "x.json").write_text(json.dumps(rec), encoding="utf-8")
    with pytest.raises(realspeech.MissingPackageError, match="codec2-examples"):
        realspeech.load_clips(tmp_path)


def test_clips_load_and_match_their_sha256(clips: list[realspeech.RealClip]) -> None:
    assert [c.name for c in clips] == [r["name"] for r in RECORDS]
    for clip, rec in zip(clips, RECORDS, strict=True):
        assert hashlib.sha256(Path(rec["source_path"]).read_bytes()).hexdigest() == rec["sha256"]
        assert clip.audio16k.dtype == np.float32 and clip.audio16k.ndim == 1
        assert abs(clip.audio16k.shape[0] / realspeech.SAMPLE_RATE_HZ - rec["duration_s"]) < 0.01
        assert clip.phonemes and clip.transcript


def _rms(audio: np.ndarray, spans: list[visemes.TimedPhoneme]) -> float:
    parts = [audio[int(p.start_s * 16000) : int(p.end_s * 16000)] for p in spans]
    x = np.concatenate([p for p in parts if p.size] or [np.zeros(1, np.float32)])
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def test_vowels_carry_more_energy_than_pauses(clips: list[realspeech.RealClip]) -> None:
    vowel_ipa = {realspeech.ARPABET_IPA[a] for a in realspeech.VOWELS_ARPABET}
    with_pauses = 0
    for clip in clips:
        vowels = [p for p in clip.phonemes if p.symbol in vowel_ipa]
        pauses = [p for p in clip.phonemes if p.symbol == visemes.PAUSE]
        assert vowels, clip.name
        # A misaligned transcript puts vowels on silence; a correct one is far louder there (the
        # measured ratio is 5.6 to 370). Vowels against consonants is no test: the prompts' /r n l/
        # are as loud as their vowels.
        if pauses:
            with_pauses += 1
            assert _rms(clip.audio16k, vowels) > 3 * _rms(clip.audio16k, pauses), clip.name
    # codec2's forig is cut tight around the speech: the aligner finds no pause in it.
    assert with_pauses >= len(clips) - 1


def test_openness_target_shape_and_range(clips: list[realspeech.RealClip]) -> None:
    for clip in clips:
        for fps in (25, 30):
            y = realspeech.openness_target(clip, fps)
            assert y.dtype == np.float32
            assert y.shape == (int(np.ceil(clip.audio16k.shape[0] / (16000 / fps))),)
            assert y.min() >= 0.0 and y.max() <= 1.0
            assert y.max() > 0.2  # the mouth opens in every clip ("rear center": 0.29)


def _energy_envelope(audio: np.ndarray, n_frames: int, fps: int = 25) -> np.ndarray:
    """40 ms RMS centred on each video frame's time: the loudness-only baseline."""
    hop, half = 16000 // fps, 320
    x = np.pad(audio.astype(np.float64), (half, n_frames * hop + half))
    centres = np.arange(n_frames) * hop + hop // 2 + half
    return np.array([np.sqrt(np.mean(x[c - half : c + half] ** 2)) for c in centres])


@needs_pocketsphinx
@pytest.mark.slow
def test_allphone_baseline_tracks_forced_alignment(clips: list[realspeech.RealClip]) -> None:
    r_allphone, r_energy = [], []
    for clip in clips:
        target = realspeech.openness_target(clip)
        phones = realspeech.allphone_phonemes(clip.audio16k)
        recognised = realspeech.RealClip(clip.name, clip.audio16k, phones, "", "")
        r_allphone.append(np.corrcoef(realspeech.openness_target(recognised), target)[0, 1])
        r_energy.append(np.corrcoef(_energy_envelope(clip.audio16k, target.shape[0]), target)[0, 1])
    mean_allphone, mean_energy = float(np.mean(r_allphone)), float(np.mean(r_energy))
    print(f"mean Pearson r vs forced-alignment openness: allphone {mean_allphone:.3f}, "
          f"40 ms energy {mean_energy:.3f} over {len(clips)} clips")  # fmt: skip
    assert mean_allphone > 0.5
    assert mean_allphone > mean_energy


@needs_pocketsphinx
@pytest.mark.slow
def test_build_is_deterministic_and_matches_the_stored_json(tmp_path: Path) -> None:
    specs = [s for s in realspeech.CLIPS if s.name in ("alsa_front_left", "codec2_hts1a")]
    missing = sorted({s.package for s in specs if not Path(s.path).is_file()})
    if missing:
        pytest.skip(f"real-speech audio not installed: apt-get install {' '.join(missing)}")
    for path in realspeech.build(tmp_path, specs):
        assert path.read_bytes() == (JSON_DIR / path.name).read_bytes(), path.name

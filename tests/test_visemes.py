"""Phonemes → visemes → mouth targets (coarticulation, lead), and the emotion prosody/face tables."""

from __future__ import annotations

import numpy as np
import pytest

from stream_avatar.data import expressive, visemes
from stream_avatar.data.visemes import TimedPhoneme
from stream_avatar.emotion import facs as emotion
from stream_avatar.motion import rig


@pytest.mark.parametrize(
    ("ipa", "viseme"),
    [
        ("p", "PP"), ("ˈm", "PP"), ("f", "FF"), ("θ", "TH"), ("t", "DD"), ("ɡ", "kk"), ("tʃ", "CH"),
        ("dʒ", "CH"), ("ʃ", "CH"), ("s", "SS"), ("ts.h", "SS"), ("n", "nn"), ("ɹ", "RR"), ("ʁ", "RR"),
        ("aɪ", "aa"), ("ɑː", "aa"), ("ˈe̞", "E"), ("ə", "E"), ("iː", "ih"), ("ɪ", "ih"), ("o̞", "oh"),
        ("ɔ̃", "oh"), ("uː", "ou"), ("ɯᵝ", "ih"), ("w", "ou"), ("j", "ih"), ("a5", "aa"), ("_", "sil"),
        ("ħ", "kk"), ("ʔ", "kk"),
    ],
)  # fmt: skip
def test_viseme_of(ipa: str, viseme: str) -> None:
    assert visemes.viseme_of(ipa) == viseme


def test_unknown_phoneme_names_itself() -> None:
    with pytest.raises(KeyError, match="☃"):
        visemes.viseme_of("☃")


def _timeline(*spec: tuple[str, float]) -> list[TimedPhoneme]:
    out, t = [], 0.2
    for sym, dur in spec:
        out.append(TimedPhoneme(sym, t, t + dur))
        t += dur
    return out


def _at(targets: np.ndarray, t: float, fps: int = 25) -> np.ndarray:
    return targets[int(t * fps)]


def test_lips_close_for_p_and_open_for_a() -> None:
    ph = _timeline(("p", 0.12), ("a", 0.2), ("p", 0.12), ("a", 0.2))
    tg = visemes.mouth_targets(ph, 40, lead_s=0.0)
    press, jaw = rig.index("mouthPressLeft"), rig.index("jawOpen")
    assert _at(tg, 0.26)[press] > 0.35 and _at(tg, 0.26)[jaw] < 0.15  # in the first /p/
    assert _at(tg, 0.42)[jaw] > 0.5  # in the /a/
    assert tg[0, :].max() < 0.05 and tg[-1, :].max() < 0.05  # at rest before and after


def test_coarticulation_rounds_a_t_between_u() -> None:
    pucker = rig.index("mouthPucker")
    rounded = visemes.mouth_targets(_timeline(("u", 0.15), ("t", 0.08), ("u", 0.15)), 25, lead_s=0.0)
    spread = visemes.mouth_targets(_timeline(("i", 0.15), ("t", 0.08), ("i", 0.15)), 25, lead_s=0.0)
    t_mid = 0.2 + 0.15 + 0.04
    assert _at(rounded, t_mid)[pucker] > 0.4
    assert _at(spread, t_mid)[pucker] < 0.05


def test_the_mouth_leads_the_sound() -> None:
    ph = _timeline(("_", 0.4), ("a", 0.3))
    jaw = rig.index("jawOpen")
    lead = visemes.mouth_targets(ph, 30)[:, jaw]
    late = visemes.mouth_targets(ph, 30, lead_s=0.0)[:, jaw]
    onset = int(0.6 * 25)  # the frame where /a/ starts sounding
    assert lead[onset - 1] > late[onset - 1] + 0.05
    assert np.argmax(lead > 0.3) < np.argmax(late > 0.3)


def test_table_markdown_lists_every_viseme() -> None:
    md = visemes.viseme_table_markdown()
    for v in visemes.VISEMES:
        assert f"| {v} |" in md


# ------------------------------------------------------------------------------------ emotion


def _speaker() -> expressive.Speaker:
    return expressive.Speaker("en-00", "en", "en+m1", pitch=45, pitch_range=50, rate_wpm=175, volume=100)


def test_prosody_moves_as_published_and_overlaps() -> None:
    rng = np.random.default_rng(0)
    n = 400
    params = {
        e: np.array(
            [
                [p.pitch, p.pitch_range, p.rate_wpm, p.volume]
                for p in (expressive.prosody_for(_speaker(), e, 1.0, rng) for _ in range(n))
            ],
            float,
        )
        for e in emotion.EMOTIONS
    }
    mean = {e: v.mean(axis=0) for e, v in params.items()}
    pitch, prange, rate, vol = 0, 1, 2, 3
    assert mean["angry"][pitch] > mean["neutral"][pitch] > mean["sad"][pitch]
    assert mean["angry"][vol] > mean["neutral"][vol] > mean["sad"][vol]
    assert mean["angry"][rate] > mean["neutral"][rate] > mean["sad"][rate]
    assert mean["happy"][prange] > mean["neutral"][prange] > mean["sad"][prange]
    assert mean["surprised"][pitch] > mean["happy"][pitch]
    # No single parameter separates neighbouring emotions: their ranges overlap.
    for a, b in (("angry", "happy"), ("sad", "contempt"), ("neutral", "disgusted")):
        for k in range(4):
            lo = max(params[a][:, k].min(), params[b][:, k].min())
            hi = min(params[a][:, k].max(), params[b][:, k].max())
            assert hi > lo, (a, b, k)


def test_face_targets_have_onset_apex_and_gestures() -> None:
    # ~3 s of speech; every fourth vowel lengthened (an accent)
    ph = _timeline(*[("a", 0.2) if i % 8 == 0 else ("a" if i % 2 else "t", 0.1) for i in range(30)])
    n = 100
    mouth = visemes.mouth_targets(ph, n)
    rng = np.random.default_rng(3)
    face = expressive.face_targets(mouth, ph, "surprised", 1.0, rng)
    wide = face[:, rig.index("eyeWideLeft")]
    assert wide[0] < 0.2 * wide.max() and wide.max() > 0.6  # the expression rises, not a cut
    brows = face[:, rig.index("browInnerUp")]
    assert brows.max() > 0.7
    neutral = expressive.face_targets(mouth, ph, "neutral", 0.0, np.random.default_rng(3))
    assert neutral[:, rig.index("eyeWideLeft")].max() == 0.0
    nod = face[:, rig.index("headPitch")]
    assert nod.max() > 0.5 and np.abs(np.diff(nod)).max() < 0.6
    # articulation scales with vocal effort: angry opens the jaw wider than sad
    jaw = rig.index("jawOpen")
    angry = expressive.face_targets(mouth, ph, "angry", 1.0, np.random.default_rng(1))[:, jaw]
    sad = expressive.face_targets(mouth, ph, "sad", 1.0, np.random.default_rng(1))[:, jaw]
    assert angry.mean() > sad.mean()

"""The expression evaluation on the default portrait: the emotions show on re-detected landmarks
(happy's smile, surprised's raised brows, contempt's one-sided corner) and the render stays the person
(dlib descriptor distance, when the ``eval`` extra is installed; skipped visibly otherwise)."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from stream_avatar.avatar.store import DEFAULT_AVATAR_IMAGE
from stream_avatar.eval import expression as ev
from tests.fakes import TEST_CONSENT

EMOTIONS = ("happy", "surprised", "contempt")


def _identity_available() -> bool:
    return (
        importlib.util.find_spec("dlib") is not None
        and importlib.util.find_spec("face_recognition_models") is not None
    )


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return ev.evaluate_expressions(
        {"default": DEFAULT_AVATAR_IMAGE},
        emotions=EMOTIONS,
        conditions=("expression",),
        identity=_identity_available(),
        fit=False,
        consent=TEST_CONSENT,
    )


def _frame(result: dict[str, Any], emotion: str) -> dict[str, Any]:
    frame: dict[str, Any] = result["portraits"]["default"]["conditions"]["expression"][emotion]
    return frame


def _holds(result: dict[str, Any], emotion: str) -> dict[str, bool]:
    return {f"{c['au']}:{c['measure']}": c["holds"] for c in _frame(result, emotion)["cues"]}


def test_the_neutral_render_is_the_reference(result: dict[str, Any]) -> None:
    measures = _frame(result, "neutral")["measures"]
    assert set(measures) == set(ev.MEASURES)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in measures.values())


def test_happy_smiles(result: dict[str, Any]) -> None:
    m = _frame(result, "happy")["measures"]
    assert _holds(result, "happy")["12:corner_rise"]
    # both corners rise, well above the threshold (a smile, not jitter)
    assert min(m["corner_rise_R"], m["corner_rise_L"]) > 2 * ev.THRESHOLD


def test_surprised_raises_the_brows(result: dict[str, Any]) -> None:
    holds = _holds(result, "surprised")
    assert holds["1:inner_brow_raise"] and holds["2:outer_brow_raise"] and holds["5:upper_lid_raise"]
    assert _frame(result, "surprised")["measures"]["brow_lower"] < -ev.THRESHOLD


def test_contempt_is_one_sided(result: dict[str, Any]) -> None:
    m = _frame(result, "contempt")["measures"]
    assert _holds(result, "contempt")["12R:rise_asym_R"]
    assert m["corner_rise_R"] > ev.THRESHOLD
    assert m["corner_rise_L"] < 0.5 * m["corner_rise_R"]  # the subject's left corner stays nearly put


def test_score_cues_needs_the_sign_and_the_threshold() -> None:
    cues = ev.score_cues("sad", {"inner_brow_raise": 0.02, "brow_together": 0.005, "corner_rise": 0.02})
    assert [c["holds"] for c in cues] == [True, False, False]  # AU15 wants the corners down


def test_the_summary_counts_every_cue(result: dict[str, Any]) -> None:
    s = result["summary"]
    assert s["cues"] == sum(len(ev.CUES[e]) for e in EMOTIONS)
    assert s["held"] == s["cues"] - len(s["failures"])


@pytest.mark.skipif(
    not _identity_available(), reason="dlib / face_recognition_models not installed (.[eval])"
)
def test_the_render_stays_the_person(result: dict[str, Any]) -> None:
    from PIL import Image

    cbook = pytest.importorskip("matplotlib.cbook")
    embed = ev.face_embedder()
    assert embed is not None
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        hopper = embed(np.asarray(Image.open(fh).convert("RGB")))
    default = embed(np.asarray(Image.open(DEFAULT_AVATAR_IMAGE).convert("RGB")))
    assert hopper is not None and default is not None
    other_person = float(np.linalg.norm(hopper - default))
    assert other_person > ev.SAME_PERSON_THRESHOLD
    neutral = _frame(result, "neutral")["identity"]
    assert neutral < 0.5 * ev.SAME_PERSON_THRESHOLD < other_person
    for emotion in EMOTIONS:
        assert _frame(result, emotion)["identity"] < ev.SAME_PERSON_THRESHOLD, emotion

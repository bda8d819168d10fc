"""Emotions: the spec syntax, the FACS tables, the easing layer, the engine hook, and — on the rendered
default portrait — that each emotion moves the face the way FACS says it does.

Geometric cues are measured on MediaPipe landmarks re-detected from rendered 512² frames, relative to
the neutral render, in face units (inter-ocular distance, IOD; v points down the face). 512² because
MediaPipe does not resolve the horizontal brow movement of AU4 at 256².
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from stream_avatar.avatar.store import Avatar
from stream_avatar.emotion import facs as emotion
from stream_avatar.emotion.facs import EmotionError, EmotionLayer
from stream_avatar.motion import rig

SIZE = 512

# ------------------------------------------------------------------------------------ the spec


@pytest.mark.parametrize(
    ("spec", "weights"),
    [
        ("happy", {"happy": 1.0}),
        ("happy:0.7", {"happy": 0.7}),
        (" Happy:0.5 + surprised:0.25 ", {"happy": 0.5, "surprised": 0.25}),
        ("neutral", {}),
        ("", {}),
        ("neutral+sad:0.3", {"sad": 0.3}),
    ],
)
def test_parse(spec: str, weights: dict[str, float]) -> None:
    assert emotion.parse(spec) == weights


@pytest.mark.parametrize(
    "spec", ["joy", "happy:1.5", "happy:-0.1", "happy:lots", "happy+happy:0.2", "happy:nan"]
)
def test_parse_rejects(spec: str) -> None:
    with pytest.raises(EmotionError) as exc:
        emotion.parse(spec)
    assert "\n" not in str(exc.value)


def test_validate_and_format_round_trip() -> None:
    assert emotion.validate({"angry": 1, "fear": 0.25, "neutral": 1.0}) == {"angry": 1.0, "fear": 0.25}
    for bad in ({"angry": "1"}, {"angry": True}, {"rage": 0.5}, {"sad": 2}):
        with pytest.raises(EmotionError):
            emotion.validate(bad)
    w = {"happy": 0.5, "surprised": 0.3}
    assert emotion.parse(emotion.format_spec(w)) == w
    assert emotion.format_spec({}) == "neutral"


# ---------------------------------------------------------------------------------- the tables


def test_every_emotion_maps_to_rig_values_in_range() -> None:
    assert set(emotion.EMOTION_AUS) == set(emotion.EMOTIONS)
    assert not emotion.expression_rig({}).any()
    for name in emotion.EMOTIONS[1:]:
        r = emotion.expression_rig({name: 1.0})
        assert r[: rig.NUM_BLENDSHAPES].max() > 0.3, name
        assert (r >= 0).all() and (r[: rig.NUM_BLENDSHAPES] <= 1).all()
        assert not r[rig.NUM_BLENDSHAPES :].any()  # emotions never move the head
        half = emotion.expression_rig({name: 0.5})
        assert np.all(half <= r + 1e-6) and half.sum() < r.sum()


def test_prototypes_follow_facs() -> None:
    def v(name: str, **w: float) -> dict[str, float]:
        return rig.to_dict(emotion.expression_rig(w or {name: 1.0}))

    happy, surprised, angry, sad = v("happy"), v("surprised"), v("angry"), v("sad")
    assert happy["mouthSmileLeft"] == happy["mouthSmileRight"] > 0.5 and happy["cheekSquintLeft"] > 0.5
    assert surprised["browInnerUp"] > 0.5 and surprised["browOuterUpLeft"] > 0.5
    assert surprised["eyeWideLeft"] > 0.5 and surprised["jawOpen"] > 0.1
    assert angry["browDownLeft"] > 0.5 and angry["eyeSquintLeft"] > 0.3 and angry["mouthSmileLeft"] == 0
    assert sad["browInnerUp"] > 0.5 and sad["mouthFrownLeft"] > 0.5
    contempt = v("contempt")  # unilateral: the subject's right side only
    assert contempt["mouthSmileRight"] > 0.3 and contempt["mouthSmileLeft"] == 0
    # A blend adds action units and clamps them: never more than a full expression.
    both = v("", happy=1.0, surprised=1.0)
    assert (
        both["mouthSmileLeft"] == happy["mouthSmileLeft"] and both["browInnerUp"] == surprised["browInnerUp"]
    )
    assert all(0 <= x <= 1 for x in both.values() if x >= 0)


def test_blend_is_bounded_and_keeps_the_head() -> None:
    rng = np.random.default_rng(0)
    scale = np.r_[np.ones(rig.NUM_BLENDSHAPES), np.full(len(rig.HEAD_POSE), 10.0)]
    base = rig.clamp(rng.uniform(-0.2, 1.2, (50, rig.RIG_SIZE)) * scale)
    expr = emotion.expression_rig({"fear": 1.0})
    out = emotion.blend(base, expr)
    k = rig.NUM_BLENDSHAPES
    assert (out[:, :k] >= base[:, :k] - 1e-6).all() and (out[:, :k] <= 1).all()
    np.testing.assert_array_equal(out[:, k:], base[:, k:])
    np.testing.assert_allclose(emotion.blend(base, rig.zeros()), base, atol=1e-7)


def test_layer_eases_into_a_new_emotion() -> None:
    fps = 25
    layer = EmotionLayer(fps, {"happy": 1.0})
    np.testing.assert_allclose(layer.next(), emotion.expression_rig({"happy": 1.0}), atol=1e-6)  # no fade-in
    layer.set({"surprised": 0.8})
    target = emotion.expression_rig({"surprised": 0.8})
    brow = rig.index("browInnerUp")
    seq = np.stack([layer.next() for _ in range(fps)])
    assert 0 < seq[0, brow] < 0.3 * target[brow]  # an onset, not a cut
    assert np.all(np.diff(seq[:, brow]) > 0)  # monotone
    np.testing.assert_allclose(seq[-1], target, atol=0.03)  # there within a second
    assert layer.weights == {"surprised": 0.8}


async def test_engine_applies_and_switches_the_emotion() -> None:
    from stream_avatar.session.engine import AvatarEngine
    from tests.fakes import FakeDriver, FakeIdle, FakeRenderer

    engine = AvatarEngine(
        FakeRenderer(), FakeDriver(), FakeIdle(), emotion=EmotionLayer(25, {"sad": 1.0}, time_constant_s=0.0)
    )
    async with engine:
        assert engine.emotion == {"sad": 1.0}
        engine.push_audio(np.zeros(16000 // 5, np.float32), 16000)  # 5 frames
        items = [await engine.__anext__() for _ in range(5)]
        assert all(it.rig[rig.index("mouthFrownLeft")] > 0.5 for it in items)
        engine.set_emotion({"happy": 1.0})
        engine.push_audio(np.zeros(16000 // 5, np.float32), 16000)
        items = [await engine.__anext__() for _ in range(5)]
        assert items[-1].rig[rig.index("mouthSmileLeft")] > 0.9
        assert items[-1].rig[rig.index("mouthFrownLeft")] == 0


# ------------------------------------------------------------------- on the rendered portrait


@pytest.fixture(scope="module")
def cues(default_avatar: Callable[[int], Avatar]) -> dict[str, dict[str, float]]:
    """Landmark cues of every emotion at intensity 1 vs the neutral render (IOD units)."""
    from stream_avatar.avatar.landmarks import detect_faces
    from stream_avatar.render.facs_basis import face_frame
    from stream_avatar.render.renderer import RendererWrapper

    avatar = default_avatar(SIZE)
    renderer = RendererWrapper(avatar.tensors, "cpu")

    def landmarks(values: np.ndarray) -> np.ndarray:
        frame = np.asarray(renderer.render(values)).reshape(SIZE, SIZE, 3)
        faces = detect_faces(frame)
        assert faces, "no face found in the rendered frame"
        return faces[0]

    neutral = landmarks(rig.zeros())
    frame = face_frame(neutral)
    n = frame.to_face(neutral[:, :2])
    brows = [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]
    inner_pairs = [(55, 285), (65, 295), (66, 296), (52, 282)]

    def measure(p: np.ndarray) -> dict[str, float]:
        up = -(p[:, 1] - n[:, 1])  # upward movement of every point
        return {
            "corner_up_img_left": float(up[61]),  # the subject's right lip corner
            "corner_up_img_right": float(up[291]),
            "brows_up": float(up[brows].mean()),
            "inner_brows_up": float(up[[107, 336]].mean()),
            "brow_gap": float(np.mean([(p[b, 0] - p[a, 0]) - (n[b, 0] - n[a, 0]) for a, b in inner_pairs])),
            "eye_opening": float(
                (
                    (p[145, 1] - p[159, 1])
                    + (p[374, 1] - p[386, 1])
                    - (n[145, 1] - n[159, 1])
                    - (n[374, 1] - n[386, 1])
                )
                / 2
            ),
            "upper_lip_up": float(up[0]),
            "nose_wings_up": float(up[[98, 327]].mean()),
        }

    return {
        name: measure(frame.to_face(landmarks(emotion.expression_rig({name: 1.0}))[:, :2]))
        for name in emotion.EMOTIONS
    }


@pytest.mark.slow
def test_emotions_move_the_cues_facs_predicts(cues: dict[str, dict[str, float]]) -> None:
    summary = {k: {m: round(v, 3) for m, v in c.items()} for k, c in cues.items()}
    assert all(abs(v) < 1e-3 for v in cues["neutral"].values()), summary
    happy, sad, angry = cues["happy"], cues["sad"], cues["angry"]
    fear, disgusted, surprised, contempt = (
        cues["fear"],
        cues["disgusted"],
        cues["surprised"],
        cues["contempt"],
    )
    # happy (AU6 + AU12): both lip corners rise
    assert happy["corner_up_img_left"] > 0.05 and happy["corner_up_img_right"] > 0.05, summary
    # sad (AU1 + AU4 + AU15): inner brows rise, lip corners drop
    assert sad["inner_brows_up"] > 0.02 and sad["corner_up_img_left"] < -0.03, summary
    # angry (AU4 + AU5 + AU7 + AU23): brows lower and draw together, eyes narrow
    assert angry["brows_up"] < -0.03 and angry["brow_gap"] < -0.005 and angry["eye_opening"] < 0, summary
    # surprised (AU1 + AU2 + AU5 + AU26): brows rise, eyes open wider
    assert surprised["brows_up"] > 0.05 and surprised["eye_opening"] > 0.02, summary
    # fear (AU1 + AU2 + AU4 + AU5 + AU20 ...): brows rise, eyes open
    assert fear["inner_brows_up"] > 0.03 and fear["eye_opening"] > 0.01, summary
    # disgusted (AU9 + AU10 + AU15): nose wings and upper lip rise
    assert disgusted["upper_lip_up"] > 0.03 and disgusted["nose_wings_up"] > 0.01, summary
    # contempt (unilateral AU12 + AU14, the subject's right = the image's left): one corner rises
    assert contempt["corner_up_img_left"] - contempt["corner_up_img_right"] > 0.03, summary

"""Other portraits than the default one: a different person, photo size and framing (Grace Hopper's
public-domain portrait shipped with matplotlib, 512×600, a closed mouth and glasses), a much darker
skin tone (the default portrait with its skin tone-mapped: a stand-in, no darker-skinned
public-domain portrait ships with the packages here), and a small face far off-centre in a large
canvas.

For each: enrollment works, the zero rig reproduces the photo, every coefficient renders finite
pixels that stay inside the head and neck, the jaw opens a dark mouth with teeth, and the face is
still a face (re-detected) in every emotion.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stream_avatar.avatar.store import DEFAULT_AVATAR_IMAGE, Avatar, AvatarStore
from stream_avatar.emotion import facs as emotion
from stream_avatar.motion import rig
from stream_avatar.render.renderer import RendererWrapper
from tests.fakes import TEST_CONSENT
from tests.test_render_locality import MAX_OUTSIDE_GREY, _outside

SIZE = 256


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return np.ascontiguousarray(image[:, :, ::-1])


def _write_rgb(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def _hopper(tmp: Path) -> Path:
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        data = fh.read()
    out = tmp / "grace_hopper.jpg"
    out.write_bytes(data)
    return out


def _dark_tone(tmp: Path) -> Path:
    """Skin (saturated warm pixels) tone-mapped to a deep brown; teeth, eye whites and hair keep theirs."""
    import cv2

    rgb = _read_rgb(DEFAULT_AVATAR_IMAGE)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float64)
    skin = ((hsv[..., 0] <= 25) & (hsv[..., 1] >= 50) & (hsv[..., 2] >= 60)).astype(np.float32)
    skin = cv2.GaussianBlur(skin, (0, 0), 2.0)[..., None]
    linear = (rgb.astype(np.float64) / 255.0) ** 2.2
    dark = (linear * np.array([0.22, 0.15, 0.11])) ** (1 / 2.2) * 255.0
    out = skin * dark + (1.0 - skin) * rgb
    return _write_rgb(tmp / "dark.png", np.round(out).astype(np.uint8))


def _small_off_centre(tmp: Path) -> Path:
    import cv2

    rgb = _read_rgb(DEFAULT_AVATAR_IMAGE)
    small = cv2.resize(rgb, (rgb.shape[1] * 5 // 4, rgb.shape[0] * 5 // 4), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((1200, 1800, 3), (96, 110, 120), np.uint8)  # the face ~115 px across in 1800 px
    canvas[60 : 60 + small.shape[0], 1100 : 1100 + small.shape[1]] = small
    return _write_rgb(tmp / "small.png", canvas)


PORTRAITS: dict[str, Callable[[Path], Path]] = {
    "hopper": _hopper,
    "dark_tone": _dark_tone,
    "small_off_centre": _small_off_centre,
}


@pytest.fixture(scope="module", params=sorted(PORTRAITS))
def portrait(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    tmp = tmp_path_factory.mktemp(request.param)
    return AvatarStore(tmp / "store").enroll(PORTRAITS[request.param](tmp), size=SIZE, consent=TEST_CONSENT)


@pytest.mark.slow
def test_every_coefficient_renders_inside_the_head(portrait: Avatar) -> None:
    renderer = RendererWrapper(portrait.tensors, "cpu")
    neutral = renderer.render(rig.zeros())[0]
    assert np.abs(neutral.astype(float) - portrait.image.astype(float)).mean() < 1.0
    outside = _outside(portrait)
    rigs = [rig.from_dict({name: 1.0}) for name in rig.BLENDSHAPES]
    rigs += [rig.from_dict({name: sign * 10.0}) for name in rig.HEAD_POSE for sign in (-1.0, 1.0)]
    frames = renderer.render(np.stack(rigs))
    for values, frame in zip(rigs, frames, strict=True):
        name = rig.RIG_NAMES[int(np.flatnonzero(values)[0])]
        diff = np.abs(frame.astype(float) - neutral.astype(float)).max(axis=2)
        assert diff[outside].max() <= MAX_OUTSIDE_GREY, name
        assert diff[~outside].max() > 2 * MAX_OUTSIDE_GREY, f"{name} moves nothing"


@pytest.mark.slow
def test_the_jaw_opens_a_dark_mouth_with_teeth(portrait: Avatar) -> None:
    renderer = RendererWrapper(portrait.tensors, "cpu")
    lm = portrait.landmarks
    frame = renderer.render(rig.from_dict({"jawOpen": 1.0}))[0].astype(float)
    neutral = renderer.render(rig.zeros())[0].astype(float)
    # Between the lip corners, from the upper lip down to where the lower lip went.
    x0, x1 = int(lm[78, 0]) + 2, int(lm[308, 0]) - 2
    y0, y1 = int(lm[13, 1]), int(lm[14, 1] + 0.2 * np.linalg.norm(lm[468, :2] - lm[473, :2]))
    grey = frame[y0:y1, x0:x1].mean(axis=2)
    before = neutral[y0:y1, x0:x1].mean(axis=2)
    assert np.percentile(grey, 10) < 0.6 * np.percentile(before, 10) + 5, "no dark cavity"
    # teeth: bright against the cavity, whatever the skin tone
    assert np.percentile(grey, 98) > max(110.0, 3.0 * np.percentile(grey, 10)), "no teeth"


@pytest.mark.slow
def test_every_emotion_is_still_a_face(portrait: Avatar) -> None:
    from stream_avatar.avatar.landmarks import detect_faces

    renderer = RendererWrapper(portrait.tensors, "cpu")
    for name in emotion.EMOTIONS:
        frame = renderer.render(emotion.expression_rig({name: 1.0}))[0]
        faces = detect_faces(frame)
        assert len(faces) == 1, name
        # the same place and size as the enrolled face (the person did not move or shrink)
        assert np.abs(faces[0][:, :2].mean(axis=0) - portrait.landmarks[:, :2].mean(axis=0)).max() < 3.0, name

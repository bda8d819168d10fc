"""Enrollment, the avatar store and the shipped default avatar."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import platformdirs
import pytest
import torch
from PIL import Image

from stream_avatar.avatar import landmarks as lm
from stream_avatar.avatar.enroll import (
    EYE_LINE_Y_FRACTION,
    FACE_WIDTH_FRACTION,
    MIN_FACE_WIDTH_PX,
    EnrolledFace,
    EnrollmentError,
    EnrollmentWarning,
    decode_image,
    enroll_image,
)
from stream_avatar.avatar.store import (
    DEFAULT_AVATAR_IMAGE,
    Avatar,
    AvatarNotFoundError,
    AvatarStore,
    AvatarStoreError,
    validate_avatar_id,
)
from tests.fakes import TEST_CONSENT

SIZE = 512


# -- factories -------------------------------------------------------------------------------------


def _portrait() -> np.ndarray:
    """The default portrait's pixels, (512, 512, 3) uint8 RGB."""
    with Image.open(DEFAULT_AVATAR_IMAGE) as im:
        return np.asarray(im.convert("RGB"))


def _encode(pixels: np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that claims width x height but carries almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


class FakeBuilder:
    """Stands in for stream_avatar.render.precompute.build_avatar_tensors; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self, image: np.ndarray, landmarks: np.ndarray, person_mask: np.ndarray
    ) -> dict[str, torch.Tensor]:
        self.calls += 1
        xy = torch.from_numpy(landmarks[:, :2].copy())
        return {
            "control_points": xy,
            "control_points_view": xy[:10],  # shares storage with the above, as real builders may
            "mask_small": torch.from_numpy(cv2.resize(person_mask, (32, 32), interpolation=cv2.INTER_AREA)),
            "image_mean": torch.tensor(image.reshape(-1, 3).mean(axis=0), dtype=torch.float64),
        }


@pytest.fixture(scope="module")
def enrolled_default() -> EnrolledFace:
    return enroll_image(DEFAULT_AVATAR_IMAGE, SIZE)


@pytest.fixture
def store(tmp_path: Path) -> tuple[AvatarStore, FakeBuilder]:
    builder = FakeBuilder()
    return AvatarStore(tmp_path / "avatars", build_tensors=builder, render_version="test"), builder


# -- landmarks ---------------------------------------------------------------------------------------


def test_face_oval_matches_mediapipe() -> None:
    import mediapipe as mp

    oval = sorted({i for edge in mp.solutions.face_mesh.FACEMESH_FACE_OVAL for i in edge})
    assert tuple(oval) == lm.FACE_OVAL
    left_eye = {i for edge in mp.solutions.face_mesh.FACEMESH_LEFT_EYE for i in edge}
    assert set(lm.LEFT_EYE_CORNERS) <= left_eye  # mediapipe's "left" is the subject's left, like the rig's


# -- the default portrait ----------------------------------------------------------------------------


def test_default_portrait_enrollment(enrolled_default: EnrolledFace) -> None:
    face = enrolled_default
    assert face.image.shape == (SIZE, SIZE, 3) and face.image.dtype == np.uint8
    assert face.landmarks.shape == (478, 3) and face.landmarks.dtype == np.float32
    assert face.person_mask.shape == (SIZE, SIZE) and face.person_mask.dtype == np.float32
    assert face.person_mask.min() >= 0.0 and face.person_mask.max() <= 1.0

    # Landmarks are in output pixels: the face lies inside the crop.
    assert (face.landmarks[:, :2] >= 0).all() and (face.landmarks[:, :2] < SIZE).all()
    # Face centred horizontally, eye line level and at the chosen height.
    assert abs(lm.face_center(face.landmarks)[0] - SIZE / 2) < 0.05 * SIZE
    assert abs(lm.roll_deg(face.landmarks)) < 2.0
    eye_y = np.mean(lm.eye_centers(face.landmarks), axis=0)[1]
    assert abs(eye_y / SIZE - EYE_LINE_Y_FRACTION) < 0.03
    # Presenter framing: face about 30 % of the width, so shoulders and background show.
    width_fraction = lm.face_width(face.landmarks) / SIZE
    assert FACE_WIDTH_FRACTION - 0.03 < width_fraction < 0.35

    # The mask covers the person (face centre, shoulders) and not the backdrop beside the head.
    cx, cy = lm.face_center(face.landmarks).astype(int)
    assert face.person_mask[cy, cx] > 0.9
    assert face.person_mask[SIZE - 5, SIZE // 2] > 0.9
    assert face.person_mask[int(eye_y), 10] < 0.1
    assert 0.25 < face.person_mask.mean() < 0.75

    # The photo (91 px face, 3° roll) was enlarged ~1.7x and levelled; a sliver of the top is padding.
    assert face.source_size == (512, 512)
    assert 85 < face.source_face_width_px < 100
    assert 1.5 < face.scale < 1.9
    assert 1.0 < face.roll_deg < 5.0
    assert face.padded_fraction < 0.10


def test_default_avatar_file_and_provenance() -> None:
    assert DEFAULT_AVATAR_IMAGE.is_file()
    with Image.open(DEFAULT_AVATAR_IMAGE) as im:
        assert (im.format, im.size, im.mode) == ("PNG", (512, 512), "RGB")
    provenance = (DEFAULT_AVATAR_IMAGE.parent / "PROVENANCE.md").read_text(encoding="utf-8").lower()
    assert "public domain" in provenance and "astronaut" in provenance


# -- bad input ----------------------------------------------------------------------------------------


def test_random_bytes_are_not_an_image() -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(EnrollmentError) as err:
        enroll_image(data)
    assert "not an image" in _one_line(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EnrollmentError) as err:
        enroll_image(tmp_path / "nope.png")
    assert "cannot read" in _one_line(err)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt: str) -> None:
    data = _encode(_portrait(), fmt)
    with pytest.raises(EnrollmentError) as err:
        enroll_image(data[: len(data) // 2])
    assert "truncated" in _one_line(err)


@pytest.mark.parametrize("kind", ["noise", "flat"])
def test_no_face(kind: str) -> None:
    rng = np.random.default_rng(1)
    pixels = (
        rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        if kind == "noise"
        else np.full((480, 640, 3), (90, 120, 150), dtype=np.uint8)
    )
    with pytest.raises(EnrollmentError) as err:
        enroll_image(_encode(pixels))
    assert "no face" in _one_line(err)


def test_face_too_small() -> None:
    small = cv2.resize(_portrait(), (358, 358), interpolation=cv2.INTER_AREA)  # face ~64 px
    with pytest.raises(EnrollmentError) as err:
        enroll_image(_encode(small))
    message = _one_line(err)
    assert "px across" in message and f"{MIN_FACE_WIDTH_PX:.0f} px" in message


@pytest.mark.parametrize(("width", "height"), [(8000, 6000), (20000, 20000)])
def test_over_40_megapixels_rejected_from_the_header(width: int, height: int) -> None:
    # 8000x6000 is past our limit only; 20000x20000 is also past Pillow's own bomb limit.
    data = _png_header_only(width, height)
    assert len(data) < 200  # nothing of the claimed pixels exists, so none may be decoded
    with pytest.raises(EnrollmentError) as err:
        enroll_image(data)
    assert "megapixels" in _one_line(err) or " MP" in str(err.value)


def test_several_faces_enrolls_the_largest() -> None:
    head = _portrait()[0:320, 60:380]  # face ~92 px across in a 320 px square
    smaller = cv2.resize(head, (224, 224), interpolation=cv2.INTER_AREA)  # face ~64 px
    canvas = np.full((320, 320 + 224, 3), 200, dtype=np.uint8)
    canvas[:, :320] = head
    canvas[:224, 320:] = smaller
    with pytest.warns(EnrollmentWarning, match="2 faces"):
        face = enroll_image(_encode(canvas))
    assert 85 < face.source_face_width_px < 100  # the big one
    assert abs(lm.face_center(face.landmarks)[0] - SIZE / 2) < 0.05 * SIZE


def test_tightly_cropped_photo_warns_about_padding() -> None:
    tight = _portrait()[40:200, 150:310]  # little more than the face
    with pytest.warns(EnrollmentWarning, match="outside"):
        face = enroll_image(_encode(tight))
    assert face.padded_fraction > 0.25
    assert abs(lm.roll_deg(face.landmarks)) < 2.0


def test_small_face_in_a_wide_photo_is_found() -> None:
    # Face Mesh's detector misses a face this small relative to the whole image (6 % of the width);
    # the window search finds it.
    canvas = np.empty((512, 1536, 3), dtype=np.uint8)
    canvas[:] = _portrait()[5:6, 5:6]
    canvas[:, 512:1024] = _portrait()
    face = enroll_image(_encode(canvas))
    assert 85 < face.source_face_width_px < 100
    assert abs(lm.roll_deg(face.landmarks)) < 2.0


def test_large_photo_is_reduced_without_losing_the_framing() -> None:
    # 2048 px square (4 MP): detection runs on a reduced copy, and the crop is area-averaged down.
    big = cv2.resize(_portrait(), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    face = enroll_image(_encode(big, "BMP"), 256)  # BMP: quick to encode and decode
    assert 340 < face.source_face_width_px < 400
    assert 0.15 < face.scale < 0.25
    assert abs(lm.face_center(face.landmarks)[0] - 128) < 0.05 * 256
    assert abs(lm.roll_deg(face.landmarks)) < 2.0
    assert abs(lm.face_width(face.landmarks) / 256 - FACE_WIDTH_FRACTION) < 0.03


def test_exif_orientation_is_applied() -> None:
    sideways = np.ascontiguousarray(np.rot90(_portrait(), k=1))  # stored rotated 90° counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    face = enroll_image(_encode(sideways, "JPEG", quality=95, exif=exif))
    assert abs(face.roll_deg) < 10.0  # decoded upright, not a face lying on its side
    assert abs(lm.roll_deg(face.landmarks)) < 2.0


def test_decode_composites_transparency_over_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[0, 0] = (255, 0, 0, 255)
    rgb = decode_image(_encode(rgba))
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[3, 3]) == (255, 255, 255)


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="even number"):
        enroll_image(DEFAULT_AVATAR_IMAGE, 511)


# -- store --------------------------------------------------------------------------------------------


def _assert_same(a: Avatar, b: Avatar) -> None:
    assert a.id == b.id
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    np.testing.assert_array_equal(a.person_mask, b.person_mask)
    assert a.tensors.keys() == b.tensors.keys()
    for key in a.tensors:
        assert a.tensors[key].dtype == b.tensors[key].dtype
        assert torch.equal(a.tensors[key], b.tensors[key])


def test_store_round_trip(store: tuple[AvatarStore, FakeBuilder], enrolled_default: EnrolledFace) -> None:
    st, builder = store
    avatar = st.enroll(DEFAULT_AVATAR_IMAGE, consent=TEST_CONSENT)
    assert len(avatar.id) == 16 and validate_avatar_id(avatar.id) == avatar.id
    assert avatar.id == st.avatar_id(DEFAULT_AVATAR_IMAGE.read_bytes(), SIZE)
    assert builder.calls == 1

    folder = st.root / avatar.id
    assert sorted(p.name for p in folder.iterdir()) == ["image.png", "meta.json", "tensors.safetensors"]
    assert not [p for p in st.root.iterdir() if p.name.startswith(".")]  # no temporary folders left
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source_name"] == "astronaut.png" and meta["size"] == SIZE
    assert meta["landmark_count"] == 478 and meta["version"] == st.version and "render" in meta["version"]

    # What was enrolled is what is stored (the PNG is lossless; safetensors is exact).
    np.testing.assert_array_equal(avatar.image, enrolled_default.image)
    np.testing.assert_allclose(avatar.landmarks, enrolled_default.landmarks, atol=1e-4)
    assert avatar.tensors["image_mean"].dtype == torch.float64
    assert torch.equal(avatar.tensors["control_points_view"], avatar.tensors["control_points"][:10])

    _assert_same(avatar, st.load(avatar.id))
    # Enrolling the same photo again is a cache hit; a fresh store on the same root sees it too.
    _assert_same(avatar, st.enroll(DEFAULT_AVATAR_IMAGE.read_bytes(), consent=TEST_CONSENT))
    assert builder.calls == 1
    again = AvatarStore(st.root, build_tensors=builder, render_version="test")
    _assert_same(avatar, again.load(avatar.id))
    assert again.ids() == [avatar.id]


def test_ids_depend_on_size_and_version(tmp_path: Path) -> None:
    data = b"same bytes"
    a = AvatarStore(tmp_path, build_tensors=FakeBuilder(), render_version="1")
    b = AvatarStore(tmp_path, build_tensors=FakeBuilder(), render_version="2")
    assert a.avatar_id(data, 512) == a.avatar_id(data, 512)
    assert len({a.avatar_id(data, 512), a.avatar_id(data, 256), b.avatar_id(data, 512)}) == 3


def test_other_version_is_refused(store: tuple[AvatarStore, FakeBuilder]) -> None:
    st, builder = store
    avatar = st.enroll(DEFAULT_AVATAR_IMAGE, consent=TEST_CONSENT)
    newer = AvatarStore(st.root, build_tensors=builder, render_version="test2")
    with pytest.raises(AvatarStoreError) as err:
        newer.load(avatar.id)
    assert "enroll the photo again" in _one_line(err)


def test_damaged_entry_is_reported_and_re_enrolled(store: tuple[AvatarStore, FakeBuilder]) -> None:
    st, builder = store
    avatar = st.enroll(DEFAULT_AVATAR_IMAGE, consent=TEST_CONSENT)
    (st.root / avatar.id / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(AvatarStoreError) as err:
        st.load(avatar.id)
    assert "damaged" in _one_line(err)
    repaired = st.enroll(DEFAULT_AVATAR_IMAGE, consent=TEST_CONSENT)
    assert builder.calls == 2
    _assert_same(repaired, st.load(avatar.id))


@pytest.mark.parametrize(
    "bad_id",
    ["../x", "..", "/etc/passwd", "0123456789abcdef/..", "../0123456789abcd", "0123456789ABCDEF",
     "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg", "", 1234],
)  # fmt: skip
def test_avatar_id_validation(store: tuple[AvatarStore, FakeBuilder], bad_id: object) -> None:
    st, _ = store
    with pytest.raises(AvatarStoreError) as err:
        st.load(bad_id)  # type: ignore[arg-type]
    assert "invalid avatar id" in _one_line(err)
    with pytest.raises(AvatarStoreError):
        st.path_of(bad_id)  # type: ignore[arg-type]


def test_unknown_id(store: tuple[AvatarStore, FakeBuilder]) -> None:
    st, _ = store
    with pytest.raises(AvatarNotFoundError):
        st.load("0123456789abcdef")
    with pytest.raises(AvatarNotFoundError):
        st.resolve("0123456789abcdef")


def test_resolve(store: tuple[AvatarStore, FakeBuilder], tmp_path: Path) -> None:
    st, builder = store
    default = st.resolve(None)  # enrolled on first use ...
    assert builder.calls == 1
    _assert_same(default, st.resolve(None))  # ... then cached
    assert builder.calls == 1
    _assert_same(default, st.resolve(default.id))
    _assert_same(default, st.resolve(DEFAULT_AVATAR_IMAGE))
    _assert_same(default, st.resolve(str(DEFAULT_AVATAR_IMAGE)))
    assert builder.calls == 1

    for bad in ["no/such/file.png", "hello", str(tmp_path)]:
        with pytest.raises(AvatarStoreError) as err:
            st.resolve(bad)
        _one_line(err)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with pytest.raises(EnrollmentError):
        st.resolve(not_an_image, consent=TEST_CONSENT)


def test_default_root_is_per_user_data_dir() -> None:
    assert AvatarStore(build_tensors=FakeBuilder(), render_version="x").root == (
        Path(platformdirs.user_data_dir("stream_avatar")) / "avatars"
    )


@pytest.mark.slow  # the renderer's precompute takes several seconds on a small CPU
def test_store_with_the_real_renderer_precompute(tmp_path: Path) -> None:
    """Uses stream_avatar.render.precompute.build_avatar_tensors (the renderer's module)."""
    st = AvatarStore(tmp_path)
    avatar = st.resolve(None)
    assert avatar.tensors and all(isinstance(t, torch.Tensor) for t in avatar.tensors.values())
    assert "render" in st.version
    _assert_same(avatar, st.load(avatar.id))

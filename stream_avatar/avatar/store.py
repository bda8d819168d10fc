"""The avatar store: enrolled portraits and their renderer tensors, on disk, keyed by content.

Layout, one folder per avatar under the store root::

    <root>/<id>/image.png            the aligned crop, (size, size) RGB
    <root>/<id>/meta.json            source name, sizes, landmark count, format version, framing numbers,
                                     and the consent record (``stream_avatar.avatar.consent``)
    <root>/<id>/tensors.safetensors  "enroll.landmarks" (478, 3) float32 px, "enroll.person_mask"
                                     (size, size) float32, and the renderer's tensors as "render.<name>"

The id is the first 16 hex digits of a SHA-256 over the source file's bytes, the output size and the
format version (enrollment + store + renderer), so the same photo enrolled twice is computed once, and a
format change gives new ids instead of stale tensors. Nothing is pickled: JSON, PNG and safetensors only.
Each avatar folder is written under a temporary name and renamed into place, so readers never see a
half-written avatar and two processes enrolling the same photo at once both end up with the same one.

Enrolling needs a consent record (who agreed, when, for what): ``enroll(..., consent=...)`` refuses
without one. Enrolling a stored photo again with a new record replaces the stored record (meta.json is
rewritten atomically; the id does not change). The shipped default avatar is enrolled with
``consent.DEFAULT_AVATAR_CONSENT``, its public-domain provenance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import platformdirs
from PIL import Image

from stream_avatar.atomic import atomic_path
from stream_avatar.avatar import landmarks as lm
from stream_avatar.avatar.consent import DEFAULT_AVATAR_CONSENT, ConsentLike, make_record
from stream_avatar.avatar.enroll import (
    ENROLL_FORMAT_VERSION,
    EnrolledFace,
    check_size,
    enroll_image,
    read_source,
)

if TYPE_CHECKING:
    import torch

    BuildTensors = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, torch.Tensor]]

STORE_FORMAT_VERSION: str = "1"
AVATAR_ID_LENGTH: int = 16
_ID_RE = re.compile(rf"[0-9a-f]{{{AVATAR_ID_LENGTH}}}")
_META_MAX_BYTES = 1 << 20
_IMAGE_NAME, _META_NAME, _TENSORS_NAME = "image.png", "meta.json", "tensors.safetensors"
_LANDMARKS_KEY, _MASK_KEY, _RENDER_PREFIX = "enroll.landmarks", "enroll.person_mask", "render."

DEFAULT_AVATAR_IMAGE: Path = (
    Path(__file__).resolve().parents[2] / "models" / "default_avatar" / "astronaut.png"
)
"""The shipped default portrait (public domain; see models/default_avatar/PROVENANCE.md)."""


class AvatarStoreError(ValueError):
    """A bad avatar id or reference, or a stored avatar that cannot be used; one-line message."""


class AvatarNotFoundError(AvatarStoreError):
    """A well-formed avatar id that the store does not hold."""


@dataclass(frozen=True, eq=False)
class Avatar:
    """An enrolled avatar.

    Attributes:
        id: 16 lowercase hex digits (content hash; see the module docstring).
        image: (size, size, 3) uint8 RGB aligned crop.
        landmarks: (478, 3) float32 Face Mesh landmarks in crop pixels.
        person_mask: (size, size) float32 in [0, 1].
        tensors: the renderer's precomputed tensors (CPU), from ``build_avatar_tensors``.
        meta: the stored meta.json (source name, sizes, versions, framing numbers).
    """

    id: str
    image: np.ndarray
    landmarks: np.ndarray
    person_mask: np.ndarray
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Side of the square image, pixels."""
        return int(self.image.shape[0])

    @property
    def consent(self) -> dict[str, Any] | None:
        """The stored consent record (``statement``, ``source``, ``recorded_at``), or None."""
        record = self.meta.get("consent")
        return record if isinstance(record, dict) and record.get("statement") else None


def validate_avatar_id(avatar_id: object) -> str:
    """Return ``avatar_id`` if it is 16 lowercase hex digits, else raise AvatarStoreError.

    Checked before any path is built from an id, so no id can name anything outside the store.
    """
    if not isinstance(avatar_id, str) or not _ID_RE.fullmatch(avatar_id):
        shown = repr(avatar_id)[:40]
        raise AvatarStoreError(f"invalid avatar id {shown}: expected {AVATAR_ID_LENGTH} lowercase hex digits")
    return avatar_id


def default_root() -> Path:
    """The per-user store root: ``platformdirs.user_data_dir("stream_avatar") / "avatars"``."""
    return Path(platformdirs.user_data_dir("stream_avatar")) / "avatars"


def _renderer_build() -> tuple[BuildTensors, str]:
    # Imported here: the renderer pulls in torch, and the store's other users (listing, id checks)
    # should not pay for it.
    from stream_avatar.render import precompute

    return precompute.build_avatar_tensors, str(getattr(precompute, "FORMAT_VERSION", "1"))


class AvatarStore:
    """Enrolls, saves, loads and resolves avatars under one root folder.

    Args:
        root: store folder; None → ``default_root()``. Created on first write.
        build_tensors: ``(image, landmarks, person_mask) -> dict[str, Tensor]``; None → the renderer's
            ``stream_avatar.render.precompute.build_avatar_tensors`` (imported on first use).
        render_version: format version of ``build_tensors``' output, part of every id; None → the
            precompute module's ``FORMAT_VERSION`` (``"1"`` when it defines none). Give it whenever
            ``build_tensors`` is given.
        default_image: the portrait ``resolve(None)`` enrolls; None → ``DEFAULT_AVATAR_IMAGE``.
        default_consent: its consent record; None → ``DEFAULT_AVATAR_CONSENT`` for the shipped
            portrait (another ``default_image`` needs one).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        build_tensors: BuildTensors | None = None,
        render_version: str | None = None,
        default_image: str | os.PathLike[str] | None = None,
        default_consent: ConsentLike | None = None,
    ) -> None:
        if build_tensors is not None and render_version is None:
            raise ValueError("render_version is required with a custom build_tensors")
        self.root = Path(root) if root is not None else default_root()
        self.default_image = Path(default_image) if default_image is not None else DEFAULT_AVATAR_IMAGE
        if default_consent is None and default_image is None:
            default_consent = DEFAULT_AVATAR_CONSENT
        self.default_consent = default_consent
        self._build = build_tensors
        self._render_version = render_version

    # -- versions and ids -------------------------------------------------------------------------

    def _builder(self) -> tuple[BuildTensors, str]:
        if self._build is None:
            self._build, version = _renderer_build()
            if self._render_version is None:
                self._render_version = version
        assert self._render_version is not None
        return self._build, self._render_version

    @property
    def version(self) -> str:
        """The format version folded into ids: enrollment, store layout and renderer tensors."""
        render_version = self._render_version
        if render_version is None:
            render_version = self._builder()[1]
        return f"enroll{ENROLL_FORMAT_VERSION}.store{STORE_FORMAT_VERSION}.render{render_version}"

    def avatar_id(self, source: bytes, size: int = 512) -> str:
        """The id an enrollment of ``source`` (the file's bytes) at ``size`` gets."""
        digest = hashlib.sha256()
        # Length-prefixed header fields, so no (version, size, bytes) triple can collide with another.
        for part in (self.version.encode(), str(check_size(size)).encode()):
            digest.update(len(part).to_bytes(8, "little") + part)
        digest.update(source)
        return digest.hexdigest()[:AVATAR_ID_LENGTH]

    def path_of(self, avatar_id: str) -> Path:
        """Folder of an avatar (the id is validated first)."""
        return self.root / validate_avatar_id(avatar_id)

    def ids(self) -> list[str]:
        """Ids of the avatars in the store, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _ID_RE.fullmatch(p.name) and p.is_dir())

    # -- enroll / load / resolve ------------------------------------------------------------------

    def enroll(
        self, path: str | os.PathLike[str] | bytes, size: int = 512, *, consent: ConsentLike | None = None
    ) -> Avatar:
        """Enroll a photo (path or file bytes), or load it when this photo and size are stored already.

        consent: the consent record (``consent.make_record``: a statement, or a record from
            ``consent.read_consent_file``); stored with the avatar, replacing an older one.

        Raises:
            ConsentError: no consent record, or an empty one (checked before anything else).
            EnrollmentError: the photo cannot be enrolled (one-line message).

        Warns:
            EnrollmentWarning: as ``enroll_image``.
        """
        label = "" if isinstance(path, bytes) else Path(path).name
        if isinstance(consent, Mapping) and _is_record(consent):
            record = dict(consent)
        else:
            record = make_record(consent, name=label)
        size = check_size(size)
        data, name = read_source(path)
        avatar_id = self.avatar_id(data, size)
        folder = self.path_of(avatar_id)
        if (folder / _META_NAME).is_file():
            try:
                avatar = self.load(avatar_id)
            except AvatarStoreError:
                pass  # damaged entry: enroll again and replace it below
            else:
                return self._with_consent(avatar, record)
        build, _ = self._builder()
        face = enroll_image(data, size, name=name)
        tensors = build(face.image, face.landmarks, face.person_mask)
        meta = self._meta(avatar_id, name, size, face, tensors)
        meta["consent"] = record
        self._write(folder, face, tensors, meta)
        return self.load(avatar_id)

    def load(self, avatar_id: str) -> Avatar:
        """Load a stored avatar by id.

        Raises:
            AvatarStoreError: invalid id, damaged files, or enrolled for another format version.
            AvatarNotFoundError: no such avatar.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = self.path_of(avatar_id)
        meta_path = folder / _META_NAME
        if not meta_path.is_file():
            raise AvatarNotFoundError(f"no avatar {avatar_id} in {self.root}")
        try:
            with meta_path.open("rb") as f:
                meta = json.loads(f.read(_META_MAX_BYTES))
            if not isinstance(meta, dict):
                raise ValueError("meta.json is not an object")
            version = meta.get("version")
            if version != self.version:
                raise AvatarStoreError(
                    f"avatar {avatar_id} was enrolled for format {version!r}, this build uses "
                    f"{self.version!r}: enroll the photo again"
                )
            size = int(meta["size"])
            stored = load_file(folder / _TENSORS_NAME)
            with Image.open(folder / _IMAGE_NAME, formats=["PNG"]) as im:
                image = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except AvatarStoreError:
            raise
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            raise AvatarStoreError(f"avatar {avatar_id} is damaged: {type(err).__name__}") from None

        landmarks = stored.pop(_LANDMARKS_KEY, None)
        mask = stored.pop(_MASK_KEY, None)
        if (
            landmarks is None
            or mask is None
            or tuple(landmarks.shape) != (lm.NUM_LANDMARKS, 3)
            or tuple(mask.shape) != (size, size)
            or image.shape != (size, size, 3)
        ):
            raise AvatarStoreError(f"avatar {avatar_id} is damaged: missing or mis-shaped arrays")
        tensors = {
            key[len(_RENDER_PREFIX) :]: value
            for key, value in stored.items()
            if key.startswith(_RENDER_PREFIX)
        }
        return Avatar(
            id=avatar_id,
            image=image,
            landmarks=landmarks.numpy().astype(np.float32, copy=False),
            person_mask=mask.numpy().astype(np.float32, copy=False),
            tensors=tensors,
            meta=meta,
        )

    def resolve(
        self, spec: str | os.PathLike[str] | None, size: int = 512, *, consent: ConsentLike | None = None
    ) -> Avatar:
        """Turn a user's avatar choice into an Avatar.

        Args:
            spec: None → the default portrait (enrolled on first use with its consent record, then
                cached in the store); a stored avatar's id → that avatar; an image file path →
                enrolled with ``consent`` (cached by content: a stored photo needs none again).
            size: output size for enrollments.
            consent: the consent record for an image enrolled here (see ``enroll``).

        Raises:
            AvatarStoreError: neither an image file nor a stored id (AvatarNotFoundError for an
                unknown id); ConsentError (one) for a new image without a consent record.
            EnrollmentError: the image cannot be enrolled.
        """
        if spec is None:
            if not self.default_image.is_file():
                raise AvatarStoreError(f"default avatar image missing: {self.default_image}")
            return self.enroll(self.default_image, size, consent=self.default_consent)
        if isinstance(spec, str) and _ID_RE.fullmatch(spec) and (self.root / spec / _META_NAME).is_file():
            return self.load(spec)
        path = Path(spec)
        if path.is_file():
            if consent is None:
                stored = self.avatar_id(read_source(path)[0], size)
                if (self.root / stored / _META_NAME).is_file():
                    with contextlib.suppress(AvatarStoreError):
                        return self.load(stored)
            return self.enroll(path, size, consent=consent)
        if isinstance(spec, str) and _ID_RE.fullmatch(spec):
            raise AvatarNotFoundError(f"no avatar {spec} in {self.root}")
        if path.is_dir():
            raise AvatarStoreError(f"{str(spec)!r} is a folder, not an image file or avatar id")
        raise AvatarStoreError(
            f"{str(spec)[:200]!r} is neither an image file nor an avatar id ({AVATAR_ID_LENGTH} hex digits)"
        )

    def entries(self) -> list[dict[str, Any]]:
        """The stored avatars' meta.json (id, source name, size, consent, ...), sorted by id; no
        tensors are read. A damaged entry is listed as ``{"id": ..., "damaged": True}``."""
        out: list[dict[str, Any]] = []
        for avatar_id in self.ids():
            try:
                with (self.root / avatar_id / _META_NAME).open("rb") as f:
                    meta = json.loads(f.read(_META_MAX_BYTES))
                if not isinstance(meta, dict):
                    raise ValueError("meta.json is not an object")
            except (OSError, ValueError):
                meta = {"damaged": True}
            out.append({**meta, "id": avatar_id})
        return out

    # -- writing ----------------------------------------------------------------------------------

    def _with_consent(self, avatar: Avatar, record: dict[str, Any]) -> Avatar:
        """``avatar`` with ``record`` as its consent; meta.json rewritten (atomically) when the
        statement or source differs from the stored one."""
        old = avatar.consent
        if old is not None and (old.get("statement"), old.get("source")) == (
            record["statement"],
            record["source"],
        ):
            return avatar
        meta = {**avatar.meta, "consent": record}
        folder = self.path_of(avatar.id)
        with atomic_path(folder / _META_NAME) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return dataclasses.replace(avatar, meta=meta)

    def _meta(
        self,
        avatar_id: str,
        name: str | None,
        size: int,
        face: EnrolledFace,
        tensors: Mapping[str, torch.Tensor],
    ) -> dict[str, Any]:
        return {
            "id": avatar_id,
            "version": self.version,
            "source_name": name,
            "source_size": list(face.source_size),
            "size": size,
            "landmark_count": int(face.landmarks.shape[0]),
            "source_face_width_px": round(face.source_face_width_px, 2),
            "scale": round(face.scale, 4),
            "roll_deg": round(face.roll_deg, 3),
            "padded_fraction": round(face.padded_fraction, 4),
            "render_tensors": sorted(tensors),
        }

    def _write(
        self,
        folder: Path,
        face: EnrolledFace,
        tensors: Mapping[str, torch.Tensor],
        meta: dict[str, Any],
    ) -> None:
        import torch
        from safetensors.torch import save_file

        to_save: dict[str, torch.Tensor] = {
            _LANDMARKS_KEY: torch.from_numpy(np.ascontiguousarray(face.landmarks, dtype=np.float32)),
            _MASK_KEY: torch.from_numpy(np.ascontiguousarray(face.person_mask, dtype=np.float32)),
        }
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"build_tensors returned a {type(value).__name__} for {key!r}, not a Tensor")
            # clone(): safetensors refuses tensors that share storage, which a builder may return.
            to_save[_RENDER_PREFIX + key] = value.detach().to("cpu").contiguous().clone()

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=self.root))
        try:
            Image.fromarray(face.image).save(tmp / _IMAGE_NAME, format="PNG")
            save_file(to_save, str(tmp / _TENSORS_NAME), metadata={"version": meta["version"]})
            (tmp / _META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            if folder.exists():
                # A damaged entry (enroll() could not load it): move it aside, then replace it.
                stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}-stale-", dir=self.root))
                os.replace(folder, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, folder)
            except OSError:
                # Another process renamed the same avatar into place first; its copy is identical.
                if not (folder / _META_NAME).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _is_record(consent: object) -> bool:
    """A record made already (``make_record`` / ``read_consent_file``): stored as it is."""
    return isinstance(consent, Mapping) and {"statement", "source", "recorded_at"} <= set(consent)

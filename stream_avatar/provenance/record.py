"""Provenance of rendered files: what made them, from which avatar and emotion, and who reviewed them.

Two layers, both read back by ``stream-avatar verify``:

- **The provenance record**, always: a JSON object in the MP4's ``comment`` metadata tag (a tag every
  player and ``ffprobe`` shows) — generator name and version, avatar id, emotion settings, driver,
  creation time (UTC), and the reviews. ``stream-avatar review FILE --by NAME`` appends a review by
  remuxing the file (packets copied, nothing re-encoded). Plain metadata proves nothing on its own
  (anyone can edit it); the watermark in the pixels and the signed manifest below are what survive
  or detect tampering.
- **A signed C2PA manifest**, when the ``c2pa-python`` package is installed and a signing key and
  certificate chain are given (``SigningConfig``; the CLI's ``--c2pa-cert`` / ``--c2pa-key`` or the
  ``STREAM_AVATAR_C2PA_CERT`` / ``STREAM_AVATAR_C2PA_KEY`` environment variables): a ``c2pa.actions``
  assertion (``c2pa.created``, digital source type *trainedAlgorithmicMedia*: the IPTC term for
  content made by a trained model) and an ``org.stream_avatar.provenance`` assertion holding the
  record. A review re-signs the file with the previous signed file as its parent ingredient and an
  ``org.stream_avatar.review`` assertion, so the chain of custody stays verifiable.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from stream_avatar.atomic import atomic_path

GENERATOR = "stream_avatar"
TAG = "comment"
PREFIX = "stream_avatar provenance "
PROVENANCE_LABEL = "org.stream_avatar.provenance"
REVIEW_LABEL = "org.stream_avatar.review"
# IPTC digital source type for media created by a trained model (what C2PA's actions refer to).
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CERT_ENV, KEY_ENV = "STREAM_AVATAR_C2PA_CERT", "STREAM_AVATAR_C2PA_KEY"


class ProvenanceError(ValueError):
    """A file cannot carry or give back provenance (message says which file and why)."""


def generator_version() -> str:
    try:
        return importlib_metadata.version(GENERATOR)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def make_record(
    avatar_id: str | None, emotion: str | None, *, driver: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The record of one render (JSON-serialisable; ``extra`` adds fields such as the instance id)."""
    rec: dict[str, Any] = {
        "generator": GENERATOR,
        "version": generator_version(),
        "ai_generated": True,
        "avatar_id": avatar_id,
        "emotion": emotion,
        "driver": driver,
        "created": utc_now(),
        "reviews": [],
    }
    rec.update(extra)
    return rec


def container_metadata(record: Mapping[str, Any]) -> dict[str, str]:
    """Metadata for ``av.open(..., "w").metadata`` (set before the first packet is written)."""
    return {TAG: PREFIX + json.dumps(record, sort_keys=True, separators=(",", ":"))}


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance record of a media file, or None when it has none (or is not a media file)."""
    import av

    try:
        with av.open(str(path)) as container:
            text = container.metadata.get(TAG, "")
    except (av.error.FFmpegError, OSError):
        return None
    if not text.startswith(PREFIX):
        return None
    try:
        rec = json.loads(text[len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def _remux(src: Path, dst: Path, record: Mapping[str, Any]) -> None:
    """Copy every stream's packets of ``src`` into ``dst`` with ``record`` as the metadata."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        out.metadata.update(container_metadata(record))
        mapping = {
            s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")
        }
        for packet in inp.demux(*[s for s in inp.streams if s.index in mapping]):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)


# ------------------------------------------------------------------------------------ C2PA


@dataclass(frozen=True)
class SigningConfig:
    """A PEM certificate chain (signer first, then its issuers) and the signer's PEM private key."""

    cert_chain: Path
    private_key: Path
    alg: str = "es256"
    tsa_url: str | None = None

    @classmethod
    def from_args(
        cls, cert: str | os.PathLike[str] | None = None, key: str | os.PathLike[str] | None = None
    ) -> SigningConfig | None:
        """From explicit paths, else the environment; None when neither names both files."""
        cert = cert or os.environ.get(CERT_ENV) or None
        key = key or os.environ.get(KEY_ENV) or None
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise ProvenanceError("C2PA signing needs both a certificate chain and a private key")
        for p in (cert, key):
            if not Path(p).is_file():
                raise ProvenanceError(f"C2PA signing: {p} is not a file")
        return cls(Path(cert), Path(key))


def c2pa_available() -> bool:
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def require_c2pa() -> Any:
    try:
        import c2pa
    except ImportError:
        raise ProvenanceError(
            "C2PA signing needs the c2pa-python package: pip install 'stream_avatar[c2pa]'"
        ) from None
    return c2pa


def _signer(c2pa: Any, signing: SigningConfig) -> Any:
    alg = getattr(c2pa.C2paSigningAlg, signing.alg.upper(), None)
    if alg is None:
        raise ProvenanceError(f"unknown C2PA signing algorithm {signing.alg!r}")
    info = c2pa.C2paSignerInfo(
        alg, signing.cert_chain.read_bytes(), signing.private_key.read_bytes(), signing.tsa_url
    )
    return c2pa.Signer.from_info(info)


def _sign(
    path: Path,
    record: Mapping[str, Any],
    signing: SigningConfig,
    *,
    review: Mapping[str, Any] | None = None,
    parent: Path | None = None,
) -> None:
    c2pa = require_c2pa()
    actions: list[dict[str, Any]] = []
    if parent is None:
        actions.append({"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA})
    else:
        actions.append({"action": "c2pa.opened", "parameters": {"ingredientIds": ["parent"]}})
    assertions: list[dict[str, Any]] = [
        {"label": "c2pa.actions", "data": {"actions": actions}},
        {"label": PROVENANCE_LABEL, "data": dict(record)},
    ]
    if review is not None:
        assertions.append({"label": REVIEW_LABEL, "data": dict(review)})
    manifest = {
        "claim_generator_info": [{"name": GENERATOR, "version": str(record.get("version", ""))}],
        "title": path.name,
        "format": "video/mp4",
        "assertions": assertions,
    }
    signer = _signer(c2pa, signing)
    try:
        builder = c2pa.Builder(manifest)
        try:
            if parent is not None:
                with parent.open("rb") as fh:
                    ingredient = {"title": path.name, "relationship": "parentOf", "label": "parent"}
                    builder.add_ingredient(ingredient, "video/mp4", fh)
            with atomic_path(path, path.suffix) as tmp, path.open("rb") as src, tmp.open("w+b") as dst:
                builder.sign(signer, "video/mp4", src, dst)
        finally:
            builder.close()
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"C2PA signing of {path} failed: {exc}") from None
    finally:
        signer.close()


def sign_file(path: str | os.PathLike[str], signing: SigningConfig) -> None:
    """Sign a rendered file (its provenance record goes into the manifest) in place."""
    p = Path(path)
    record = read_record(p)
    if record is None:
        raise ProvenanceError(f"{p}: no stream_avatar provenance record to sign")
    _sign(p, record, signing)


def read_c2pa(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The active C2PA manifest's state, provenance and reviews; None without c2pa-python or a manifest."""
    if not c2pa_available():
        return None
    import c2pa

    try:
        reader = c2pa.Reader(str(path))
    except c2pa.C2paError:
        return None
    try:
        active = reader.get_active_manifest() or {}
        state = reader.get_validation_state()
        store = json.loads(reader.json())
    finally:
        reader.close()
    by_label = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    reviews = []
    for m in store.get("manifests", {}).values():
        for a in m.get("assertions", []):
            if a.get("label") == REVIEW_LABEL:
                reviews.append(a.get("data"))
    sig = active.get("signature_info") or {}
    return {
        "validation_state": state,
        "provenance": by_label.get(PROVENANCE_LABEL),
        "actions": (by_label.get("c2pa.actions.v2") or by_label.get("c2pa.actions") or {}).get("actions", []),
        "reviews": sorted(reviews, key=lambda r: str(r.get("at", ""))),
        "signer": sig.get("common_name") or sig.get("issuer"),
        "manifests": len(store.get("manifests", {})),
    }


# ------------------------------------------------------------------------------------ review


def review_file(
    path: str | os.PathLike[str], by: str, note: str | None = None, signing: SigningConfig | None = None
) -> dict[str, Any]:
    """Mark a rendered file as reviewed by ``by``: the review joins its provenance record (and, with
    ``signing``, a re-signed C2PA manifest whose parent is the file as it was). Returns the record."""
    p = Path(path)
    by = by.strip()
    if not by:
        raise ProvenanceError("a review needs the reviewer's name (--by)")
    if not p.is_file():
        raise ProvenanceError(f"{p}: no such file")
    record = read_record(p)
    if record is None:
        raise ProvenanceError(f"{p}: not a stream_avatar render (no provenance record)")
    review = {"by": by, "at": utc_now(), **({"note": note} if note else {})}
    record = {**record, "reviews": [*record.get("reviews", []), review]}
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".parent.mp4", dir=p.parent)
    os.close(fd)
    parent = Path(name)
    try:
        if signing is not None:
            parent.write_bytes(p.read_bytes())  # the file as it was: the new manifest's parent
        with atomic_path(p, p.suffix) as tmp:
            _remux(p, tmp, record)
        if signing is not None:
            _sign(p, record, signing, review=review, parent=parent)
    finally:
        parent.unlink(missing_ok=True)
    return record

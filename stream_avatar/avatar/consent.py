"""Consent records: who agreed to have their face enrolled, when, and for what.

Enrolling a portrait needs one (``stream-avatar enroll IMAGE --consent "..."`` or ``--consent-file
PATH``, a text or JSON file); it is stored in the avatar's ``meta.json`` as::

    "consent": {"statement": "Jane Doe agreed on 2026-12-01 to ...",   # text, or the JSON file's object
                "source": "--consent" | "file consent.json" | "shipped default avatar" | ...,
                "recorded_at": "2026-12-05T10:00:00Z"}

and shown by ``stream-avatar avatars list``. The server and the render commands refuse avatars stored
without one (enrolled before records were kept) unless ``allow_unconsented_avatars`` is set.
The shipped default avatar carries ``DEFAULT_AVATAR_CONSENT``: its public-domain provenance.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MAX_CONSENT_BYTES = 64 * 1024
HOW_TO = 'give a consent record: --consent "who agreed, when, for what" or --consent-file PATH (text or JSON)'

DEFAULT_AVATAR_CONSENT: dict[str, Any] = {
    "statement": (
        "Public domain: NASA official portrait of astronaut Eileen Collins, a work of the US federal "
        "government, distributed with scikit-image as skimage.data.astronaut() ('No known copyright "
        "restrictions, released into the public domain'); shipped as the default avatar for "
        "demonstrations. See models/default_avatar/PROVENANCE.md."
    ),
    "source": "shipped default avatar",
}


class ConsentError(ValueError):
    """Enrollment or use refused: no (usable) consent record. One-line message.

    ``code`` is the protocol error code the server answers with.
    """

    code = "no_consent"


ConsentLike = str | Mapping[str, Any]


def make_record(consent: ConsentLike | None, *, source: str = "--consent", name: str = "") -> dict[str, Any]:
    """A consent record to store: ``consent`` is the statement (text), or a mapping with a
    ``statement`` (and optionally ``source``, ``recorded_at``), or any other JSON object (stored whole
    as the statement).

    Raises ConsentError when there is none or it is empty.
    """
    label = f" for {name!r}" if name else ""
    if consent is None:
        raise ConsentError(f"enrollment{label} refused: no consent record; {HOW_TO}")
    if isinstance(consent, Mapping):
        if "statement" in consent:
            statement = consent["statement"]
            source = str(consent.get("source") or source)
            recorded = consent.get("recorded_at")
        else:
            statement, recorded = dict(consent), None
    else:
        statement, recorded = str(consent).strip(), None
    if not statement or (isinstance(statement, str) and not statement.strip()):
        raise ConsentError(f"enrollment{label} refused: the consent record is empty; {HOW_TO}")
    if not isinstance(statement, str | Mapping):
        kind = type(statement).__name__
        raise ConsentError(f"the consent statement must be text or a JSON object, got {kind}")
    return {
        "statement": statement.strip() if isinstance(statement, str) else dict(statement),
        "source": source,
        "recorded_at": str(recorded) if recorded else _now(),
    }


def read_consent_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A record from a file: a JSON object (the whole object is the statement unless it has a
    ``statement`` key) or plain text. Raises ConsentError (unreadable, empty, over 64 KiB)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_CONSENT_BYTES + 1)
    except OSError as exc:
        raise ConsentError(f"cannot read consent file {p.name!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONSENT_BYTES:
        raise ConsentError(f"consent file {p.name!r} is over {MAX_CONSENT_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConsentError(f"consent file {p.name!r} is not UTF-8 text or JSON") from None
    value: Any = text
    if text.lstrip().startswith(("{", "[")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{exc.msg} (line {exc.lineno})"
            raise ConsentError(f"consent file {p.name!r} is not valid JSON: {where}") from None
        if not isinstance(value, dict):
            raise ConsentError(f"consent file {p.name!r}: a JSON consent record must be an object")
    return make_record(value, source=f"file {p.name}", name=p.name)


def summary(record: Any, width: int = 100) -> str:
    """One line for listings: the statement (a JSON object compact), cut to ``width`` characters."""
    if not isinstance(record, Mapping) or not record.get("statement"):
        return "NONE (no consent record)"
    statement = record["statement"]
    text = statement if isinstance(statement, str) else json.dumps(statement, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def has_consent(meta: Mapping[str, Any]) -> bool:
    record = meta.get("consent")
    return isinstance(record, Mapping) and bool(record.get("statement"))


def require_consent(avatar: Any, *, allow_unconsented: bool = False) -> Any:
    """``avatar`` if its stored meta holds a consent record (or ``allow_unconsented``), else
    ConsentError naming the avatar and the way out."""
    if allow_unconsented or has_consent(getattr(avatar, "meta", {}) or {}):
        return avatar
    raise ConsentError(
        f"avatar {avatar.id} has no consent record: enroll its photo again with --consent or "
        "--consent-file, or set allow_unconsented_avatars = true to use it anyway"
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

"""The audit log: which avatar each session (or offline render) used, when, and from where.

One JSON object per line, appended to one file that is never rotated or rewritten: each record is a
single ``os.write`` on a descriptor opened with ``O_APPEND`` (the kernel puts it at the end even
with several processes writing), unbuffered, so a line is on disk as soon as the call returns.
Records hold identifiers and numbers only, never audio or images::

    {"time": "2026-12-05T10:00:00.123Z", "event": "session_start", "session": "3f9c...",
     "kind": "session", "avatar": "0123456789abcdef", "consented": true, "remote": "127.0.0.1:50312"}
    {"time": ..., "event": "session_end", "session": "3f9c...", ..., "duration_s": 12.4, "frames": 310}

Events: ``session_start`` / ``session_end`` (a browser session, a watch-only viewer, a PCM stream;
``kind`` says which), ``avatar_change`` (a session switched avatars), ``render_start`` /
``render_end`` (an offline render: ``out`` is the MP4's path, ``audio`` the input file's name).
The default file is ``audit.jsonl`` beside the avatar store (``default_audit_path``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

AUDIT_FILE_NAME = "audit.jsonl"


def default_audit_path(store_dir: str | os.PathLike[str] | None = None) -> Path:
    """``audit.jsonl`` in the avatar store's folder when one is configured, else in the per-user data
    directory that holds the default store (``platformdirs.user_data_dir("stream_avatar")``)."""
    if store_dir is not None:
        return Path(store_dir) / AUDIT_FILE_NAME
    import platformdirs

    return Path(platformdirs.user_data_dir("stream_avatar")) / AUDIT_FILE_NAME


class AuditLog:
    """Appends audit records to ``path`` (created with its folder on first use, mode 0600).

    ``record(event, **fields)`` writes one line; a failure to write is logged as an error and
    otherwise ignored, so a full disk does not end live sessions (``check()`` at start makes a
    misconfigured path fail early instead).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()

    def check(self) -> None:
        """Open the file for appending (creating it) and close it: raises OSError if unusable."""
        self._write(b"")

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append ``{"time", "event", **fields}`` as one line; returns the record."""
        entry: dict[str, Any] = {"time": _now(), "event": event, **fields}
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
        try:
            self._write(line.encode("utf-8"))
        except OSError:
            logger.exception("cannot write the audit log", extra={"path": str(self.path), "event": event})
        return entry

    def _write(self, data: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:  # one write for a line in practice; loop for a short write
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

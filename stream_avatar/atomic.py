"""Files replaced whole or not at all: write to a temporary file beside the target, then rename it.

``atomic_path(target)`` yields a fresh temporary path in the target's folder (same file system, so the
final ``os.replace`` is atomic); on success it replaces ``target``, on any exception it is deleted and
``target`` is left as it was. Used for rendered MP4s, provenance rewrites and avatar metadata.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``target``; renamed onto it on success, deleted on any failure."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)

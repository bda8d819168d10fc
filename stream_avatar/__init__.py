"""stream_avatar: a real-time streaming avatar engine (README.md).

The Python API (``stream_avatar.api``): ``open_engine`` to embed the engine, ``PcmPublisher`` and
``AvatarClient`` to drive and watch a running server. Names load on first use, so ``import
stream_avatar`` stays light (no torch, no aiortc until asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AvatarClient", "AvatarEngine", "OutputItem", "PcmPublisher", "PcmSource", "open_engine"]

_WHERE = {
    "open_engine": "stream_avatar.api",
    "AvatarEngine": "stream_avatar.session.engine",
    "OutputItem": "stream_avatar.session.engine",
    "PcmPublisher": "stream_avatar.server.client",
    "AvatarClient": "stream_avatar.server.client",
    "PcmSource": "stream_avatar.server.client",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'stream_avatar' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

"""The JSON signaling/control protocol (docs/protocol.md): parsing and validation of client messages.

Every failure is a ``ProtocolError`` with a stable ``code`` and a one-line message; the session sends
it back as ``{"type": "error", ...}`` and carries on.
"""

from __future__ import annotations

import json
import re
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SDP_CHARS = 60 * 1024
AVATAR_ID = re.compile(r"^(default|[0-9a-f]{16})$")

CLIENT_TYPES = ("offer", "clear", "avatar", "emotion", "ping")


class ProtocolError(ValueError):
    """A client message the server cannot act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_message(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": " ".join(message.split())}


def parse(raw: str | bytes) -> dict[str, Any]:
    """One WebSocket message -> a validated dict with a known ``type``; ProtocolError otherwise."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", 'a message must be a JSON object with a string "type"')
    kind = msg["type"]
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind[:40]!r} (known: {', '.join(CLIENT_TYPES)})"
        )
    if kind == "offer":
        sdp = msg.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_CHARS:
            raise ProtocolError("bad_field", '"offer" needs "sdp": an SDP text starting with "v=0"')
    elif kind == "avatar":
        avatar = msg.get("avatar")
        if not isinstance(avatar, str) or not AVATAR_ID.match(avatar):
            raise ProtocolError("bad_field", '"avatar" needs "avatar": an enrolled avatar id or "default"')
    elif kind == "emotion":
        msg["weights"] = _emotion_weights(msg)
    elif kind == "ping":
        t = msg.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ProtocolError("bad_field", '"ping" needs "t": a number')
    return msg


def _emotion_weights(msg: dict[str, Any]) -> dict[str, float]:
    """``emotion``: a spec string ("happy:0.7", "happy:0.5+surprised:0.3") or ``weights``: an object
    {name: intensity}; exactly one of them."""
    from stream_avatar.emotion.facs import EmotionError, parse, validate

    spec, weights = msg.get("emotion"), msg.get("weights")
    try:
        if isinstance(spec, str) and weights is None and len(spec) <= 200:
            return parse(spec)
        if spec is None and isinstance(weights, dict) and len(weights) <= 16:
            return validate(weights)
    except EmotionError as exc:
        raise ProtocolError("bad_field", f'"emotion": {exc}') from None
    raise ProtocolError(
        "bad_field",
        '"emotion" needs either "emotion": "NAME[:INTENSITY]" (terms joined by +) or "weights": {name: 0..1}',
    )

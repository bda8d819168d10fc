"""The JSON signaling/control protocol (docs/protocol.md): parsing and validation of client messages.

Every failure is a ``ProtocolError`` with a stable ``code`` and a one-line message; the session sends
it back as ``{"type": "error", ...}`` and carries on.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

PROTOCOL_VERSION = 8
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SDP_CHARS = 60 * 1024
AVATAR_ID = re.compile(r"^(default|[0-9a-f]{16})$")
# What a viewer may name to watch: a session's or PCM stream's id, or a WHIP stream's name (chosen by
# its publisher). Letters, digits, ``_`` and ``-`` only: safe in URLs, logs and task names.
STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch only (``$`` would let a final newline in)
# ``emotion_ref``: a short face clip, at most this many bytes once decoded (a few seconds of 720p WebM
# or MP4 from a phone or MediaRecorder is 1-4 MiB). Its base64 text is 4/3 of that, and only this
# message type may exceed MAX_MESSAGE_BYTES (up to MAX_REFERENCE_MESSAGE_BYTES).
MAX_REFERENCE_BYTES = 8 * 1024 * 1024
MAX_REFERENCE_BASE64_CHARS = 4 * -(-MAX_REFERENCE_BYTES // 3)
# ``emotion_ref``'s optional ``neutral``: a photo of the clip's person at rest (JPEG/PNG/WebP), at most
# this many bytes once decoded.
MAX_NEUTRAL_BYTES = 4 * 1024 * 1024
MAX_NEUTRAL_BASE64_CHARS = 4 * -(-MAX_NEUTRAL_BYTES // 3)
MAX_REFERENCE_MESSAGE_BYTES = MAX_REFERENCE_BASE64_CHARS + MAX_NEUTRAL_BASE64_CHARS + 1024

CLIENT_TYPES = ("offer", "clear", "avatar", "emotion", "emotion_ref", "ping")


class ProtocolError(ValueError):
    """A client message the server cannot act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_message(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": " ".join(message.split())}


def parse(raw: str | bytes) -> dict[str, Any]:
    """One WebSocket message -> a validated dict with a known ``type``; ProtocolError otherwise."""
    big = len(raw) > MAX_MESSAGE_BYTES  # allowed for emotion_ref only, checked once the type is known
    too_large = ProtocolError("too_large", f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(raw) > MAX_REFERENCE_MESSAGE_BYTES:
        raise too_large
    try:
        msg = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if big:
            raise too_large from None
        raise ProtocolError("bad_json", f"not JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        if big:
            raise too_large
        raise ProtocolError("bad_message", 'a message must be a JSON object with a string "type"')
    kind = msg["type"]
    if big and kind != "emotion_ref":
        raise too_large
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind[:40]!r} (known: {', '.join(CLIENT_TYPES)})"
        )
    if kind == "offer":
        sdp = msg.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_CHARS:
            raise ProtocolError("bad_field", '"offer" needs "sdp": an SDP text starting with "v=0"')
        watch = msg.get("watch")
        if watch is not None and (not isinstance(watch, str) or not STREAM_NAME.fullmatch(watch)):
            raise ProtocolError(
                "bad_field", '"watch" must name a stream: its id from its hello, or a WHIP stream\'s name'
            )
    elif kind == "avatar":
        avatar = msg.get("avatar")
        if not isinstance(avatar, str) or not AVATAR_ID.fullmatch(avatar):
            raise ProtocolError("bad_field", '"avatar" needs "avatar": an enrolled avatar id or "default"')
    elif kind == "emotion":
        msg["weights"] = _emotion_weights(msg)
    elif kind == "emotion_ref":
        data = msg.get("data")
        if not isinstance(data, str) or not data:
            raise ProtocolError("bad_field", '"emotion_ref" needs "data": the clip (MP4 or WebM) as base64')
        if len(data) > MAX_REFERENCE_BASE64_CHARS:
            raise _too_large("reference clip", len(data) * 3 // 4, MAX_REFERENCE_BYTES)
        neutral = msg.get("neutral")
        if neutral is not None:
            if not isinstance(neutral, str) or not neutral:
                raise ProtocolError(
                    "bad_field",
                    '"neutral" (optional) is a photo of the person at rest (JPEG, PNG, WebP) as base64',
                )
            if len(neutral) > MAX_NEUTRAL_BASE64_CHARS:
                raise _too_large("neutral photo", len(neutral) * 3 // 4, MAX_NEUTRAL_BYTES)
    elif kind == "ping":
        t = msg.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ProtocolError("bad_field", '"ping" needs "t": a number')
    return msg


def decode_reference(data: str) -> tuple[bytes, str]:
    """``emotion_ref``'s base64 text -> (clip bytes, file suffix ".mp4" or ".webm"); ProtocolError for
    malformed base64 (``bad_field``), an oversized clip (``too_large``) or neither container
    (``bad_reference``). ~35 ms for 8 MiB: call it off the event loop."""
    clip = _decode_limited(data, "data", MAX_REFERENCE_BYTES, "reference clip")
    if clip[4:8] == b"ftyp":  # ISO BMFF (MP4, MOV, 3GP): the first box is the file type box
        return clip, ".mp4"
    if clip[:4] == b"\x1a\x45\xdf\xa3":  # EBML header: Matroska / WebM (what MediaRecorder writes)
        return clip, ".webm"
    raise ProtocolError("bad_reference", "the reference clip is neither an MP4 nor a WebM file")


def decode_neutral(data: str) -> bytes:
    """``emotion_ref``'s ``neutral`` base64 text -> the photo's bytes; ProtocolError for malformed base64
    (``bad_field``) or an oversized photo (``too_large``). Whether it is an image with a face is for the
    analysis to say (``bad_reference``)."""
    return _decode_limited(data, "neutral", MAX_NEUTRAL_BYTES, "neutral photo")


def _decode_limited(data: str, field: str, limit: int, what: str) -> bytes:
    """``emotion_ref``'s base64 ``field`` -> bytes; ``bad_field`` if malformed, ``too_large`` if over."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_field", f'"emotion_ref": "{field}" is not valid base64') from None
    if len(raw) > limit:
        raise _too_large(what, len(raw), limit)
    return raw


def _too_large(what: str, size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        "too_large",
        f"{what} of {size} bytes exceeds the limit of {limit // (1024 * 1024)} MiB ({limit} bytes)",
    )


def _emotion_weights(msg: dict[str, Any]) -> dict[str, float]:
    """``emotion``: a spec string ("happy:0.7", "happy:0.5+surprised:0.3", "auto", "auto+happy:0.3") or
    ``weights``: an object {name: intensity} ({"auto": 1, "happy": 0.3}); exactly one of them."""
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
        '"emotion" needs either "emotion": "NAME[:INTENSITY]" (terms joined by +, NAME may be auto) or'
        ' "weights": {name: 0..1}',
    )


# ---------------------------------------------------------------------------------- PCM ingest

# The PCM endpoint (``/pcm``): JSON text messages of these types, and binary messages of s16le mono
# samples belonging to the utterance the last ``utterance`` message opened.
PCM_CLIENT_TYPES = ("utterance", "end", "clear", "emotion", "ping")
PCM_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_PCM_MESSAGE_BYTES = 1 << 20  # one binary message: ~10.9 s at 48 kHz, ~65 s at 8 kHz
UTTERANCE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def parse_pcm(raw: str) -> dict[str, Any]:
    """One text message on the PCM endpoint -> a validated dict; ProtocolError otherwise."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc.msg}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", 'a message must be a JSON object with a string "type"')
    kind = msg["type"]
    if kind not in PCM_CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind[:40]!r} (known: {', '.join(PCM_CLIENT_TYPES)})"
        )
    if kind == "utterance":
        rate = msg.get("sample_rate")
        if isinstance(rate, bool) or rate not in PCM_RATES_HZ:
            raise ProtocolError(
                "bad_field", f'"utterance" needs "sample_rate": one of {", ".join(map(str, PCM_RATES_HZ))}'
            )
        uid = msg.get("id")
        if uid is not None and (not isinstance(uid, str) or not UTTERANCE_ID.fullmatch(uid)):
            raise ProtocolError("bad_field", '"id" must be 1-64 characters of A-Z a-z 0-9 _ . : -')
    elif kind == "emotion":
        msg["weights"] = _emotion_weights(msg)
    elif kind == "ping":
        t = msg.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ProtocolError("bad_field", '"ping" needs "t": a number')
    return msg


def pcm_samples(data: bytes) -> Any:
    """A binary message -> (n,) int16 samples (s16le mono); ProtocolError when it cannot be one."""
    import numpy as np

    if len(data) > MAX_PCM_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"PCM message of {len(data)} bytes exceeds {MAX_PCM_MESSAGE_BYTES}")
    if len(data) % 2:
        raise ProtocolError("bad_pcm", f"PCM must be 16-bit samples: {len(data)} bytes is an odd count")
    return np.frombuffer(data, dtype="<i2")

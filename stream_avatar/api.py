"""The Python API: embed the engine in a program, or drive and watch a running server.

``import stream_avatar`` gives (loaded on first use, so the import itself stays light):

- ``open_engine(avatar="default", ...)`` → an ``AvatarEngine`` with the real pieces (renderer,
  learned mouth driver, idle life, emotion): ``push_audio(pcm, rate)`` (live, never blocks) or
  ``await feed(pcm, rate)`` (TTS, waits for room), ``clear()`` (barge-in), ``end_input()``, and
  ``async for item in engine`` → ``OutputItem`` (RGB frame, its 40 ms of 16 kHz audio, rig,
  emotion probabilities), in audio time. ``examples/embed_engine.py`` runs it.
- ``PcmPublisher`` (a stream driven by PCM over ``/pcm``: TTS, voice agents) and ``AvatarClient``
  (a WebRTC peer: a microphone presenter, or ``watch=STREAM_ID`` a viewer) for a running server
  (``stream-avatar serve``). ``examples/tts_to_viewer.py`` runs both.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["open_engine"]


def open_engine(
    avatar: str | os.PathLike[str] | None = "default",
    *,
    size: int = 512,
    driver: str = "learned",
    emotion: str = "auto",
    fps: int = 25,
    device: str = "auto",
    store_dir: str | os.PathLike[str] | None = None,
    consent: Any = None,
    allow_unconsented_avatars: bool = False,
    disclosure: Any = None,
    watermark: Any = None,
    **engine_kwargs: Any,
) -> Any:
    """An engine for one avatar, not started (``async with engine:`` starts and closes it).

    avatar: "default" (the shipped portrait), an enrolled avatar id, or a portrait image file
      (enrolled on first use into the store, as ``stream-avatar enroll`` would).
    size: output frames are size × size. driver: "learned" (default) or "dsp".
    emotion: an emotion spec ("auto" = from the voice, "happy:0.7", "auto+happy:0.3"; see
      ``stream_avatar.emotion.facs.parse``). device: "auto", "cpu" or "cuda".
    store_dir: the avatar store (default: the configured one). Other keyword arguments go to
      ``AvatarEngine`` (``max_buffer_s``, ``max_output_frames``, ``warn_when_behind``...).
    consent: the consent record for a portrait image enrolled here (who agreed, when, for what).
    allow_unconsented_avatars: use an avatar stored without a consent record (else ConsentError).
    disclosure: ``stream_avatar.config.DisclosureConfig`` of the "AI-generated" badge every frame
      carries (None: the default, on; ``enabled=False`` turns it off, with a logged warning).
    watermark: ``stream_avatar.config.WatermarkConfig`` of the invisible mark in every frame (None: the
      default, on, instance = host name; ``enabled=False`` turns it off, with a logged warning).
    Raises ValueError (and the store's errors) for an unknown avatar, driver or emotion.
    """
    from stream_avatar.avatar.consent import require_consent
    from stream_avatar.avatar.store import AvatarStore
    from stream_avatar.emotion import facs
    from stream_avatar.provenance.disclosure import make_badge
    from stream_avatar.session.engine import build_engine, resolve_device

    weights = facs.parse(emotion)
    store = AvatarStore(store_dir) if store_dir is not None else AvatarStore()
    portrait = store.resolve(None if avatar in (None, "default") else avatar, size=size, consent=consent)
    require_consent(portrait, allow_unconsented=allow_unconsented_avatars)
    return build_engine(
        portrait,
        driver=driver,
        fps=fps,
        device=resolve_device(device),
        emotion=weights,
        disclosure=make_badge(disclosure),
        watermark=watermark if watermark is not None else "default",
        **engine_kwargs,
    )

"""Offline rendering: an audio file in, an MP4 (H.264 + AAC) of the talking avatar out.

The file goes through the same streaming engine as live input, in 20 ms chunks, so an offline render
shows exactly what a live session would. It is unpaced: chunks are fed with ``AvatarEngine.feed``
(backpressure) as fast as frames are computed. The audio track written is the engine's per-frame
audio (16000 / fps samples per frame, 16 kHz mono, which FFmpeg's AAC encoder accepts as is), so
sound and picture share one timeline by construction.

The MP4 is written to a temporary file beside the target and renamed into place at the end: a failed
or interrupted render leaves no partial file behind.

``render_file`` is a user-facing output like a live session: the frames carry the visible
"AI-generated" badge (``disclosure``; off only when configured, with a warning), the avatar must
have a consent record (unless ``allow_unconsented_avatars``), and the render is written to the
audit log (start and end: avatar, output path, input file name, frames; never audio).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np
from tqdm import tqdm

from stream_avatar.atomic import atomic_path
from stream_avatar.motion import rig as rig_mod
from stream_avatar.session.engine import SAMPLE_RATE_HZ, AvatarEngine, OutputItem

logger = logging.getLogger(__name__)

CHUNK_MS = 20  # the live input's packet size (WebRTC/Opus and the VAD both use 20 ms)
VIDEO_CODEC = "libx264"
VIDEO_OPTIONS = {"crf": "20", "preset": "veryfast"}
AUDIO_CODEC = "aac"
AUDIO_BIT_RATE = 64_000  # speech at 16 kHz mono; well under AAC's per-channel limit at this rate


@dataclass(frozen=True)
class RenderResult:
    """What an offline render produced.

    path: the MP4. rig_path: the JSONL of per-frame rigs, if asked for. frames: video frames written.
    duration_s: frames / fps. wall_s: wall-clock time of the render (engine + encoding).
    frames_per_s: frames / wall_s (real time is fps).
    """

    path: Path
    rig_path: Path | None
    frames: int
    fps: int
    duration_s: float
    wall_s: float
    frames_per_s: float


class Mp4Writer:
    """H.264 (yuv420p) video at ``fps`` + AAC mono audio at 16 kHz, written frame by frame.

    ``write(item)`` takes one engine OutputItem: its frame (H, W, 3) uint8 RGB at pts ``item.pts``
    (time base 1/fps) and its audio (16000 / fps,) float32 at sample pts ``item.pts * 16000 / fps``.
    Streams are created on the first item, when the frame size is known. ``close()`` flushes both
    encoders and finalises the file.
    """

    def __init__(self, path: Path, fps: int, metadata: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.fps = fps
        self.samples_per_frame = SAMPLE_RATE_HZ // fps
        # faststart puts the index first, so browsers can start playing before the download ends.
        self._container: Any = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
        if metadata:  # container tags (the provenance record): known before the header is written
            self._container.metadata.update(metadata)
        self._video: Any = None
        self._audio: Any = None
        self.frames = 0

    def _add_streams(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"frame size {width}x{height} must be even for yuv420p video")
        video = self._container.add_stream(VIDEO_CODEC, rate=self.fps, options=dict(VIDEO_OPTIONS))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, self.fps)
        audio = self._container.add_stream(AUDIO_CODEC, rate=SAMPLE_RATE_HZ, layout="mono")
        audio.bit_rate = AUDIO_BIT_RATE
        self._video, self._audio = video, audio

    def write(self, item: OutputItem) -> None:
        frame = np.ascontiguousarray(item.frame)
        if self._video is None:
            self._add_streams(frame.shape[0], frame.shape[1])
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = item.pts
        vf.time_base = Fraction(1, self.fps)
        self._container.mux(self._video.encode(vf))
        af = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(item.audio, dtype=np.float32)[None, :], format="fltp", layout="mono"
        )
        af.sample_rate = SAMPLE_RATE_HZ
        af.pts = item.pts * self.samples_per_frame
        af.time_base = Fraction(1, SAMPLE_RATE_HZ)
        self._container.mux(self._audio.encode(af))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoders and close the file (also after an error, to release it)."""
        if self._video is None:
            # No stream was ever added (no frame): FFmpeg cannot write a header for an empty MP4;
            # the caller discards the file anyway.
            with contextlib.suppress(av.error.FFmpegError):
                self._container.close()
            return
        try:
            self._container.mux(self._video.encode(None))
            self._container.mux(self._audio.encode(None))
        finally:
            self._container.close()


async def _feed_file(
    engine: AvatarEngine,
    samples: np.ndarray,
    sample_rate_hz: int,
    schedule: Sequence[tuple[int, Mapping[str, float]]] = (),
) -> None:
    """Feed like live input (20 ms chunks), as fast as the engine takes them, then end the input.

    schedule: (sample index, emotion weights) in order: before the chunk holding that sample is fed,
    the engine's queued input is let drain, then its emotion is set (a presenter script's segments).
    """
    chunk = max(1, round(sample_rate_hz * CHUNK_MS / 1000))
    pending = list(schedule)
    for start in range(0, samples.size, chunk):
        while pending and pending[0][0] < start + chunk:
            _, weights = pending.pop(0)
            while engine.stats()["buffered_s"] > 0:
                await asyncio.sleep(0.002)
            engine.set_emotion(weights)
        await engine.feed(samples[start : start + chunk], sample_rate_hz)
    engine.end_input()


async def render_engine_to_file(
    engine: AvatarEngine,
    samples: np.ndarray,
    sample_rate_hz: int,
    out_path: str | os.PathLike[str],
    *,
    rig_out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    emotion_schedule: Sequence[tuple[int, Mapping[str, float]]] = (),
    metadata: Mapping[str, str] | None = None,
) -> RenderResult:
    """Render ``samples`` through ``engine`` into an MP4 (and optionally a rig JSONL).

    samples: (n,) float32 mono in [-1, 1] (or int16) at ``sample_rate_hz``.
    The engine is started here and closed on return (it serves one stream).
    rig_out: JSONL path; one line per frame: ``{"pts": seconds, "rig": {name: value}}``, plus
      ``"emotion": {name: p}`` (the frame's emotion probabilities) when the engine reports them.
    emotion_schedule: (sample index, emotion weights): the emotion from that sample on.
    metadata: MP4 container tags (``provenance.record.container_metadata``).
    Raises ValueError when the audio yields no frame; nothing is left at ``out_path``/``rig_out`` on error.
    """
    out = Path(out_path)
    rig_path = Path(rig_out) if rig_out is not None else None
    fps = engine.fps
    expected = math.ceil(samples.size * fps / sample_rate_hz)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp_mp4 = stack.enter_context(atomic_path(out, ".part.mp4"))
        rig_file: IO[str] | None = None
        if rig_path is not None:
            tmp_rig = stack.enter_context(atomic_path(rig_path, ".part"))
            rig_file = stack.enter_context(tmp_rig.open("w", encoding="utf-8"))
        bar = stack.enter_context(
            tqdm(total=expected, unit="frame", desc=out.name, disable=not progress, leave=False)
        )
        writer = Mp4Writer(tmp_mp4, fps, metadata)
        stack.callback(writer.close)  # runs before the rename (ExitStack unwinds in reverse)
        engine.start()
        feeder = asyncio.create_task(_feed_file(engine, samples, sample_rate_hz, emotion_schedule))
        try:
            async for item in engine:
                writer.write(item)
                if rig_file is not None:
                    line: dict[str, Any] = {"pts": round(item.time_s, 6), "rig": rig_mod.to_dict(item.rig)}
                    if item.emotion is not None:
                        line["emotion"] = item.emotion
                    rig_file.write(json.dumps(line, separators=(",", ":")) + "\n")
                bar.update(1)
            await feeder  # re-raises a feeding error (e.g. malformed samples)
        finally:
            if not feeder.done():
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            stats = engine.stats()
            await engine.aclose()
        if writer.frames == 0:
            raise ValueError("the audio is too short to make a single video frame")
    wall = time.perf_counter() - t0
    result = RenderResult(
        path=out,
        rig_path=rig_path,
        frames=writer.frames,
        fps=fps,
        duration_s=writer.frames / fps,
        wall_s=wall,
        frames_per_s=writer.frames / wall if wall > 0 else math.inf,
    )
    logger.info(
        "render done",
        extra={
            "frames": result.frames,
            "wall_s": round(wall, 3),
            "frames_per_s": round(result.frames_per_s, 2),
            "render_ms_p50": stats.get("render_ms_p50"),
        },
    )
    return result


def render_file(
    audio_path: str | os.PathLike[str] | None,
    out_path: str | os.PathLike[str],
    avatar: Any = None,
    driver_name: str = "learned",
    size: int = 512,
    rig_out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    store_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    fps: int = 25,
    max_buffer_s: float = 2.0,
    emotion: Mapping[str, float] | None = None,
    emotion_prior_neutral: float | None = None,
    script: str | os.PathLike[str] | None = None,
    consent: Any = None,
    allow_unconsented_avatars: bool = False,
    disclosure: Any = None,
    audit_log: str | os.PathLike[str] | None = None,
    watermark: Any = None,
    signing: Any = None,
) -> RenderResult:
    """Render an audio file (or a presenter script) with an avatar into an MP4 (blocking; runs its
    own event loop).

    audio_path: any audio FFmpeg reads (wav, mp3, m4a, ogg, flac, a video's audio track); None with
      ``script``: a presenter script (``stream_avatar.script``: segments of audio, espeak-ng text and
      pauses, each with its emotion, which replaces ``emotion``).
    avatar: an ``Avatar``, an image path, an enrolled avatar id, or None for the default avatar
      (image paths and None are enrolled at ``size`` through the store at ``store_dir``).
    driver_name: motion driver (``stream_avatar.session.engine.DRIVERS``).
    rig_out: optional JSONL of per-frame rigs. progress: tqdm bar on stderr.
    emotion: the operator's emotion as weights (``stream_avatar.emotion.facs.parse``); None: neutral.
    emotion_prior_neutral: with ``auto``, the prior share of neutral the voice is read with (None: the
      emotion model's own).
    consent: the consent record for an image ``avatar`` enrolled here (``AvatarStore.enroll``).
    allow_unconsented_avatars: render an avatar stored without a consent record (else refused).
    disclosure: the badge's ``DisclosureConfig`` (None: the default, on; disabled: logged warning).
    audit_log: the audit file (None: ``default_audit_path(store_dir)``).
    watermark: the invisible mark's ``WatermarkConfig`` (None: the default, on; disabled: logged).
    signing: a ``provenance.record.SigningConfig``: the file also gets a signed C2PA manifest (needs
      c2pa-python). Every render carries its provenance record (``provenance.record``) either way.

    Raises AudioFormatError (bad audio), ScriptError (bad script), EnrollmentError /
    AvatarStoreError (bad avatar), ConsentError (no consent record), all ValueErrors with one-line
    messages; checked before anything is written.
    """
    from stream_avatar.audio.io import load_audio
    from stream_avatar.avatar.consent import has_consent, require_consent
    from stream_avatar.emotion.facs import format_spec
    from stream_avatar.provenance import record as provenance
    from stream_avatar.provenance.audit import AuditLog, default_audit_path
    from stream_avatar.provenance.disclosure import make_badge
    from stream_avatar.provenance.watermark import instance_name
    from stream_avatar.session.engine import build_engine

    if signing is not None:
        provenance.require_c2pa()  # before any work: a configured signature must not be skipped
    schedule: list[tuple[int, Mapping[str, float]]] = []
    if (audio_path is None) == (script is None):
        raise ValueError("give an audio file or a presenter script, not both")
    if script is not None:
        from stream_avatar.script import SAMPLE_RATE_HZ as SCRIPT_RATE
        from stream_avatar.script import build_track, load_script

        samples, schedule = build_track(load_script(script))  # first: a bad script fails early
        rate = SCRIPT_RATE
        emotion = schedule[0][1]
    else:
        assert audio_path is not None
        samples, rate = load_audio(audio_path)  # first: a bad file fails before any heavy work
    resolved = _resolve_avatar(avatar, size, store_dir, consent)
    require_consent(resolved, allow_unconsented=allow_unconsented_avatars)
    if allow_unconsented_avatars and not has_consent(resolved.meta):
        logger.warning(
            "rendering an avatar without a consent record (setting avatar.allow_unconsented_avatars)",
            extra={"avatar": resolved.id, "setting": "avatar.allow_unconsented_avatars"},
        )
    badge = make_badge(disclosure)
    audit = AuditLog(audit_log if audit_log is not None else default_audit_path(store_dir))
    audit.check()  # an unusable audit path fails before any work
    engine = build_engine(
        resolved,
        driver=driver_name,
        fps=fps,
        max_buffer_s=max_buffer_s,
        device=device,
        emotion=emotion,
        emotion_prior_neutral=emotion_prior_neutral,
        warn_when_behind=False,  # slower than real time is expected offline on a CPU
        disclosure=badge,
        watermark=watermark if watermark is not None else "default",
    )
    marked = engine.watermarked
    record = provenance.make_record(
        resolved.id,
        format_spec(emotion or {})
        if not schedule
        else "script: " + ", ".join(format_spec(w) for _, w in schedule),
        driver=driver_name,
        instance_id=instance_name(watermark) if marked else None,
        disclosure=badge is not None,
        watermark=marked,
    )
    job = render_engine_to_file(
        engine,
        samples,
        rate,
        out_path,
        rig_out=rig_out,
        progress=progress,
        emotion_schedule=schedule,
        metadata=provenance.container_metadata(record),
    )
    source = Path(os.fspath(audio_path if audio_path is not None else script)).name  # type: ignore[arg-type]
    fields: dict[str, Any] = {
        "session": secrets.token_hex(6),
        "kind": "render",
        "avatar": resolved.id,
        "consented": has_consent(resolved.meta),
        "remote": None,  # a local render
        "out": str(Path(out_path).resolve()),
        "input": source,
        "disclosure": badge is not None,
        "watermark": marked,
    }
    audit.record("render_start", **fields)
    t0 = time.monotonic()
    try:
        result = asyncio.run(job)
    except BaseException as exc:
        audit.record("render_end", **fields, status="failed", error=type(exc).__name__)
        raise
    if signing is not None:
        provenance.sign_file(result.path, signing)
    audit.record(
        "render_end",
        **fields,
        status="ok",
        c2pa=signing is not None,
        duration_s=round(result.duration_s, 3),
        frames=result.frames,
        wall_s=round(time.monotonic() - t0, 3),
    )
    return result


def _resolve_avatar(
    avatar: Any, size: int, store_dir: str | os.PathLike[str] | None, consent: Any = None
) -> Any:
    from stream_avatar.avatar.store import Avatar, AvatarStore

    if isinstance(avatar, Avatar):
        return avatar
    spec = os.fspath(avatar) if isinstance(avatar, os.PathLike) else avatar
    return AvatarStore(store_dir).resolve(spec, size=size, consent=consent)

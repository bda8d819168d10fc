"""Embed the engine: push live audio in 20 ms chunks, interrupt, and take the frames with their audio.

    python examples/embed_engine.py speech.wav [--size 256] [--driver learned] [--emotion auto] [--realtime]

Prints one JSON line: frames produced, seconds of audio out, the mouth's mean opening while the
input was loud and while it was quiet, and what ``clear()`` dropped. Any audio file FFmpeg reads
works (the engine resamples it).
"""

from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np

import stream_avatar
from stream_avatar.audio.io import load_audio
from stream_avatar.motion import rig


async def main(args: argparse.Namespace) -> dict[str, object]:
    pcm, rate = load_audio(args.wav)  # any file FFmpeg reads, mono float32 at its own rate
    engine = stream_avatar.open_engine(
        "default", size=args.size, driver=args.driver, emotion=args.emotion, store_dir=args.store
    )
    jaw: list[float] = []
    loud: list[bool] = []
    audio_s = 0.0
    chunk = rate // 50  # 20 ms, as live audio arrives
    async with engine:

        async def produce() -> float:
            """Live (--realtime: like a microphone, never blocks) or as fast as frames come (feed
            waits for room); halfway, an interrupt (barge-in) drops what is queued."""
            dropped = 0.0
            half = pcm.size // 2
            for start in range(0, pcm.size, chunk):
                if args.realtime:
                    engine.push_audio(pcm[start : start + chunk], rate)
                    await asyncio.sleep(0.02)
                else:
                    await engine.feed(pcm[start : start + chunk], rate)
                if start <= half < start + chunk:
                    dropped = engine.clear()
            engine.end_input()
            return dropped

        producer = asyncio.ensure_future(produce())
        async for item in engine:  # OutputItem: frame (H, W, 3) RGB, audio (640,) 16 kHz, rig, emotion
            jaw.append(float(item.rig[rig.index("jawOpen")]))
            loud.append(float(np.sqrt(np.mean(item.audio**2))) > 0.02)
            audio_s += item.audio.size / 16000
        dropped_s = await producer
    j, m = np.array(jaw), np.array(loud)
    return {
        "frames": len(jaw),
        "audio_out_s": round(audio_s, 2),
        "jaw_when_loud": round(float(j[m].mean()), 3) if m.any() else None,
        "jaw_when_quiet": round(float(j[~m].mean()), 3) if (~m).any() else None,
        "cleared_s": round(dropped_s, 3),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wav")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--driver", default="learned", choices=("learned", "dsp"))
    p.add_argument("--emotion", default="auto")
    p.add_argument("--store", default=None, help="avatar store folder (default: the configured one)")
    p.add_argument("--realtime", action="store_true", help="pace the input like a microphone")
    print(json.dumps(asyncio.run(main(p.parse_args()))))

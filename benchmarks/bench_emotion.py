"""Emotion stage cost: ms per 40 ms video frame, streaming — embedder + bank + motion model together.

Usage: python benchmarks/bench_emotion.py [--seconds 20] [--rounds 5] [--threads 1]

Per round a fresh ``EmotionStream`` and ``LearnedMouthDriver`` take a speech-like signal one 40 ms
frame at a time (what the engine's worker hands them); every call is timed: the emotion tokens
(features, level, pitch), every 5th frame the 2 s window through embedder + bank, and the motion
model's step. The first second (warm-up) is not timed. Median, p95 and mean over all timed frames:
the mean includes the 5 Hz window update spread over its frames; p95 shows the update frames.

Writes benchmarks/results/emotion_cost.json (records keyed by device/threads) and emotion_cost.png.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from bench_motion import speechlike
from results_io import merge_records

from stream_avatar.emotion.inference import EmotionModel, EmotionStream
from stream_avatar.motion.learned import LearnedMouthDriver, MotionModel

RESULTS = Path(__file__).resolve().parent / "results"
SR = 16000
TARGET_MS = 3.0  # the budget for embedder + bank + motion model per 40 ms frame on this CPU


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (engine worker: 1)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    emotion, motion = EmotionModel.load(), MotionModel.load()
    audio = speechlike(args.seconds)
    chunk = SR // 25
    parts: dict[str, list[float]] = {"emotion": [], "motion": [], "total": []}
    for _ in range(args.rounds):
        stream, driver = EmotionStream(emotion), LearnedMouthDriver(model=motion)
        for i in range(0, audio.size - chunk + 1, chunk):
            x = audio[i : i + chunk]
            t0 = time.perf_counter()
            stream.push(x)
            t1 = time.perf_counter()
            driver.push(x)
            t2 = time.perf_counter()
            if i >= SR:
                parts["emotion"].append((t1 - t0) * 1000.0)
                parts["motion"].append((t2 - t1) * 1000.0)
                parts["total"].append((t2 - t0) * 1000.0)
    device = f"cpu ({platform.processor() or platform.machine()})"
    rec: dict[str, object] = {"benchmark": "emotion_cost", "device": device, "threads": args.threads}
    for name, ts in parts.items():
        a = np.asarray(ts)
        rec[f"{name}_median_ms"] = round(float(np.median(a)), 4)
        rec[f"{name}_p95_ms"] = round(float(np.percentile(a, 95)), 4)
        rec[f"{name}_mean_ms"] = round(float(np.mean(a)), 4)
        print(
            f"{name:8s} median {np.median(a):.3f}  p95 {np.percentile(a, 95):.3f}  mean {np.mean(a):.3f} ms"
            f"  ({a.size} frames)"
        )
    rec["frames"] = len(parts["total"])
    rec["params_emotion"] = sum(p.numel() for p in emotion.net.parameters())
    rec["target_ms"] = TARGET_MS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    merge_records(out / "emotion_cost.json", [rec], key=lambda r: (r["device"], r["threads"]))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.boxplot([parts[k] for k in parts], tick_labels=list(parts), showfliers=False)
    ax.axhline(TARGET_MS, color="grey", ls="--", lw=0.8, label=f"budget {TARGET_MS} ms")
    ax.set_ylabel("ms per 40 ms frame")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "emotion_cost.png", dpi=110)


if __name__ == "__main__":
    main()

"""Motion driver cost: ms per 40 ms video frame, streaming, learned vs DSP.

Usage: python benchmarks/bench_motion.py [--seconds 20] [--rounds 5] [--chunk-ms 40] [--threads 1]

Feeds real-time-sized chunks (default one 40 ms frame = 640 samples at 16 kHz, what the engine hands
a driver per frame) of a speech-like signal through a fresh driver per round and times every
``push`` call: feature extraction, level normalisation, the network step with its carried state and
decoding — everything the engine's worker pays per frame. Rounds alternate the drivers so background
load spreads over both; warm-up (the first second) is not timed. Median and p95 over all timed calls.

Writes benchmarks/results/motion.json (records keyed by device/driver/chunk/threads) and
motion.png beside it.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from results_io import merge_records

from stream_avatar.motion.dsp_driver import DSPMouthDriver
from stream_avatar.motion.learned import LearnedMouthDriver, MotionModel

RESULTS = Path(__file__).resolve().parent / "results"
SR = 16000
TARGET_MS = 2.0  # the budget for the learned model per 40 ms frame on this CPU


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 2
    return (0.3 * env * voiced + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk-ms", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (engine worker: 1)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = MotionModel.load()
    audio = speechlike(args.seconds)
    chunk = SR * args.chunk_ms // 1000
    makers = {"learned": lambda: LearnedMouthDriver(model=model), "dsp": DSPMouthDriver}
    times: dict[str, list[float]] = {k: [] for k in makers}
    for _ in range(args.rounds):
        for name, make in makers.items():
            drv = make()
            for i in range(0, audio.size - chunk + 1, chunk):
                t0 = time.perf_counter()
                drv.push(audio[i : i + chunk])
                dt = (time.perf_counter() - t0) * 1000.0
                if i >= SR:
                    times[name].append(dt)
    device = f"cpu ({platform.processor() or platform.machine()})"
    records = []
    for name, ts in times.items():
        a = np.asarray(ts)
        records.append(
            {
                "benchmark": "motion_driver",
                "device": device,
                "driver": name,
                "chunk_ms": args.chunk_ms,
                "threads": args.threads,
                "calls": int(a.size),
                "median_ms": round(float(np.median(a)), 4),
                "p95_ms": round(float(np.percentile(a, 95)), 4),
                "params": sum(p.numel() for p in model.net.parameters()) if name == "learned" else 0,
            }
        )
        print(f"{name:8s} median {np.median(a):.3f} ms  p95 {np.percentile(a, 95):.3f} ms  ({a.size} calls)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    merge_records(
        out / "motion.json", records, key=lambda r: (r["device"], r["driver"], r["chunk_ms"], r["threads"])
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.boxplot([times[k] for k in makers], tick_labels=list(makers), showfliers=False)
    ax.axhline(TARGET_MS, color="grey", ls="--", lw=0.8, label=f"budget {TARGET_MS} ms")
    ax.set_ylabel(f"ms per {args.chunk_ms} ms chunk")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "motion.png", dpi=110)


if __name__ == "__main__":
    main()

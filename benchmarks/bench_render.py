"""Renderer speed: ms per frame of the warp renderer on the shipped default avatar.

Usage: python benchmarks/bench_render.py [--sizes 256 512] [--frames 200] [--rounds 3] [--out DIR]

Times ``RendererWrapper.render`` (what the engine calls: numpy rig in, numpy RGB out), batch 1, on a
moving rig sequence (speech-like jaw, blinks, head sway) so every frame has a different flow. Rounds
alternate the sizes so background load on a noisy machine spreads over all of them; the median and p95
are over all timed frames. Warm-up frames are not timed. On CUDA the clock waits for the device.

Writes benchmarks/results/render.json: a list of records {"device", "backend", "size", "batch",
"median_ms", "p95_ms"} (records of other benchmarks in the file are kept; a record with the same
device/backend/size/batch is replaced) and render.png beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import merge_records

from stream_avatar.avatar.store import AvatarStore
from stream_avatar.motion import rig
from stream_avatar.render.renderer import RendererWrapper

RESULTS = Path(__file__).resolve().parent / "results"
CPU_TARGET_MS_512 = 8.0


def rig_sequence(n: int, fps: int = 25, seed: int = 0) -> np.ndarray:
    """(n, RIG_SIZE) rig frames that keep the whole pipeline busy: jaw, lips, blinks, head sway."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    seq = rig.zeros(n)
    seq[:, rig.index("jawOpen")] = np.clip(
        0.35 + 0.35 * np.sin(2 * np.pi * 3.1 * t) + 0.05 * rng.standard_normal(n), 0, 1
    )
    seq[:, rig.index("mouthFunnel")] = np.clip(0.3 * np.sin(2 * np.pi * 1.3 * t), 0, 1)
    seq[:, rig.index("mouthSmileLeft")] = seq[:, rig.index("mouthSmileRight")] = 0.3
    blink = (np.sin(2 * np.pi * 0.3 * t) > 0.97).astype(np.float32)
    seq[:, rig.index("eyeBlinkLeft")] = seq[:, rig.index("eyeBlinkRight")] = blink
    seq[:, rig.index("browInnerUp")] = np.clip(0.4 * np.sin(2 * np.pi * 0.5 * t), 0, 1)
    seq[:, rig.index("headYaw")] = 3 * np.sin(2 * np.pi * 0.23 * t)
    seq[:, rig.index("headPitch")] = 2 * np.sin(2 * np.pi * 0.31 * t)
    seq[:, rig.index("headRoll")] = 1.5 * np.sin(2 * np.pi * 0.17 * t)
    return seq


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def time_frames(wrapper: RendererWrapper, seq: np.ndarray, warmup: int, device: str) -> list[float]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for i in range(warmup):
        wrapper.render(seq[i % len(seq)])
    sync()
    out = []
    for frame in seq:
        t0 = time.perf_counter()
        wrapper.render(frame)
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _record_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["device"], r["backend"], r["size"], r["batch"])


def plot(records: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(records, key=lambda r: (str(r["device"]), str(r["backend"]), int(r["size"])))  # type: ignore[call-overload]
    labels = [f"{r['size']}²\n{r['backend']}\n{str(r['device']).split(' (')[0]}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows)), 4))
    ax.bar(x - 0.18, [r["median_ms"] for r in rows], 0.36, label="median")
    ax.bar(x + 0.18, [r["p95_ms"] for r in rows], 0.36, label="p95")
    ax.axhline(CPU_TARGET_MS_512, color="red", linestyle="--", linewidth=1, label="CPU target at 512² (8 ms)")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("ms per frame (batch 1)")
    ax.set_title("Warp renderer: time per frame")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--frames", type=int, default=200, help="timed frames per size per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    ap.add_argument("--store", type=Path, default=None, help="avatar store (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = AvatarStore(root=args.store or Path(tmp))
        avatars = {size: store.resolve(None, size=size) for size in args.sizes}
        seq = rig_sequence(args.frames)
        records = []
        for device in devices:
            wrappers = {size: RendererWrapper(a.tensors, device=device) for size, a in avatars.items()}
            times: dict[int, list[float]] = {size: [] for size in args.sizes}
            for rnd in range(args.rounds):
                for size in args.sizes:
                    times[size] += time_frames(
                        wrappers[size], np.roll(seq, rnd * 7, axis=0), args.warmup, device
                    )
            for size in args.sizes:
                t = np.asarray(times[size])
                rec = {
                    "device": device_name(device),
                    "backend": "eager",
                    "size": size,
                    "batch": 1,
                    "median_ms": round(float(np.median(t)), 3),
                    "p95_ms": round(float(np.percentile(t, 95)), 3),
                    "frames": int(t.size),
                }
                records.append(rec)
                print(json.dumps(rec))
    merged = merge_records(args.out / "render.json", records, key=_record_key)
    plot([r for r in merged if r.get("batch") == 1], args.out / "render.png")
    print(f"wrote {args.out / 'render.json'} and {args.out / 'render.png'}")


if __name__ == "__main__":
    main()

"""Invisible watermark: detection after the re-encodes a recording meets, false marks, and cost.

Usage: python benchmarks/bench_watermark.py [--clips 40] [--clip-frames 16] [--unmarked 1000]
                                            [--runs 300] [--threads 1]

Robustness: ``--clips`` 512x512 talking-head clips (crops of the shipped portrait and renderer-like
frames, ``tests/test_watermark.py``'s builders), each marked with its own payload, go through each
attack; a clip counts as detected when ``verify_frames`` (single frames + averaged windows, voting)
returns exactly its payload. The single-frame rate (each frame read alone) and any wrong payload
read are reported too. Attacks: H.264 at 300/500/1000 kbit/s (PyAV libx264, veryfast, 25 fps),
JPEG quality 75, half-size rescale (INTER_AREA) and combined (H.264 500 kbit/s, then half size, then
JPEG 75). False marks: ``--unmarked`` varied unmarked frames read one by one, and the unmarked clips
through H.264 500 kbit/s read as recordings; the largest mean |z| seen is the margin to the
threshold. Cost: ``mark`` and ``detect`` per 512x512 frame, median and p95 over ``--runs`` calls
after warm-up, with OpenCV limited to ``--threads`` (the engine's worker marks on its own thread),
plus the once-per-second payload change.

Writes benchmarks/results/watermark.json (records keyed by benchmark/device/threads) and
watermark.png beside it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from results_io import merge_records

from stream_avatar.provenance import watermark as wmk
from stream_avatar.provenance.watermark import Payload, Watermarker, detect, residual, verify_frames, zscores

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/test_watermark.py's frame builders and attacks
RESULTS = Path(__file__).resolve().parent / "results"
BUDGET_MS = 40.0  # one video frame at 25 fps
T0 = 1_780_000_000


def attacks(tw):
    def combined(frames):
        return [tw.jpeg(tw.half(f)) for f in tw.h264_roundtrip(frames, 500)]

    out = {
        "none": lambda fr: fr,
        "h264_300k": lambda fr: tw.h264_roundtrip(fr, 300),
        "h264_500k": lambda fr: tw.h264_roundtrip(fr, 500),
        "h264_1000k": lambda fr: tw.h264_roundtrip(fr, 1000),
        "jpeg75": lambda fr: [tw.jpeg(f) for f in fr],
        "half_size": lambda fr: [tw.half(f) for f in fr],
        "h264_500k+half+jpeg75": combined,
    }
    if tw.H264 is None:
        print("no H.264 encoder in this PyAV build: H.264 attacks skipped")
        out = {k: v for k, v in out.items() if "h264" not in k}
    return out


def robustness(tw, n_clips: int, n_frames: int) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(7)
    bases = tw.clip_bases(n_clips, seed=11)
    marks = [Watermarker.for_ids(f"inst-{i}", f"avatar-{i}", T0 + 97 * i) for i in range(n_clips)]
    clips = [tw.talking_clip(b, n_frames, rng) for b in bases]
    marked = [[wm.mark(f) for f in c] for wm, c in zip(marks, clips, strict=True)]
    psnr = [cv2.PSNR(c[0], m[0]) for c, m in zip(clips, marked, strict=True)]
    rows = []
    for name, attack in attacks(tw).items():
        clip_ok = frame_ok = wrong = frames = 0
        conf = []
        for wm, frames_in in zip(marks, marked, strict=True):
            got = attack(frames_in)
            rep = verify_frames(got)
            clip_ok += rep["marked"] and rep["payload"] == wm.payload.to_dict()
            wrong += rep["marked"] and rep["payload"] != wm.payload.to_dict()
            for f in got:
                d = detect(f)
                frame_ok += d is not None and d.payload == wm.payload
                wrong += d is not None and d.payload != wm.payload
                conf.append(float(np.mean(np.abs(zscores(residual(f))))))
            frames += len(got)
        rows.append(
            {
                "attack": name,
                "clips": n_clips,
                "clip_detection_rate": round(clip_ok / n_clips, 4),
                "frame_detection_rate": round(frame_ok / frames, 4),
                "wrong_payloads": int(wrong),
                "median_mean_abs_z": round(float(np.median(conf)), 3),
            }
        )
        print(
            f"{name:24s} clips {clip_ok}/{n_clips}  frames {frame_ok}/{frames}  wrong {wrong}  "
            f"median mean|z| {np.median(conf):.2f}",
            flush=True,
        )
    unmarked_clips = 0
    if tw.H264 is not None:
        unmarked_clips = sum(verify_frames(tw.h264_roundtrip(c, 500))["marked"] for c in clips)
    return rows, {
        "psnr_db_median": round(float(np.median(psnr)), 2),
        "psnr_db_min": round(float(np.min(psnr)), 2),
        "unmarked_clips_h264_500k": n_clips if tw.H264 is not None else 0,
        "unmarked_clips_marked": int(unmarked_clips),
    }


def false_marks(tw, n: int) -> dict:
    frames = tw.unmarked_frames(n, seed=5)
    hits = sum(detect(f) is not None for f in frames)
    stat = np.array([np.mean(np.abs(zscores(residual(f)))) for f in frames])
    print(f"unmarked frames: {hits}/{n} marked; mean|z| median {np.median(stat):.3f} max {stat.max():.3f}")
    return {
        "unmarked_frames": n,
        "false_marks": int(hits),
        "mean_abs_z_median": round(float(np.median(stat)), 3),
        "mean_abs_z_max": round(float(stat.max()), 3),
        "threshold": wmk.MIN_MEAN_ABS_Z,
    }


def cost(tw, runs: int) -> dict:
    img = tw.portrait()
    wm = Watermarker.for_ids("inst", "astronaut", T0)
    marked = wm.mark(img)
    for _ in range(20):
        wm.mark(img)
        detect(marked)
    from stream_avatar.provenance.disclosure import DisclosureBadge

    badge = DisclosureBadge()  # the visible "AI-generated" label, applied before the mark
    frame = img.copy()
    badge.apply(frame[None])
    t_mark, t_detect, t_repattern, t_badge = [], [], [], []
    for i in range(runs):
        t0 = time.perf_counter()
        wm.mark(img)
        t1 = time.perf_counter()
        detect(marked)
        t2 = time.perf_counter()
        badge.apply(frame[None])
        t3 = time.perf_counter()
        t_mark.append((t1 - t0) * 1000.0)
        t_detect.append((t2 - t1) * 1000.0)
        t_badge.append((t3 - t2) * 1000.0)
        if i % 10 == 0:  # a new second: new payload, pattern rebuilt on the next mark
            wm.set_payload(Payload(wm.payload.instance_hash, wm.payload.avatar_hash, T0 + i + 1))
            t0 = time.perf_counter()
            wm.mark(img)
            t_repattern.append((time.perf_counter() - t0) * 1000.0)

    def stats(ts: list[float]) -> dict:
        a = np.asarray(ts)
        return {"median_ms": round(float(np.median(a)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3)}

    out = {
        "mark": stats(t_mark),
        "detect": stats(t_detect),
        "mark_after_payload_change": stats(t_repattern),
        "badge": stats(t_badge),
    }
    for k, v in out.items():
        print(f"{k:26s} median {v['median_ms']:.2f} ms  p95 {v['p95_ms']:.2f} ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--clip-frames", type=int, default=16)
    ap.add_argument("--unmarked", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (engine worker: 1)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    from tests import test_watermark as tw

    device = f"cpu ({platform.processor() or platform.machine()})"
    timing = cost(tw, args.runs)
    fp = false_marks(tw, args.unmarked)
    rows, extra = robustness(tw, args.clips, args.clip_frames)
    record = {
        "benchmark": "watermark",
        "device": device,
        "threads": args.threads,
        "frame_size": [512, 512],
        "payload_bits": wmk.PAYLOAD_BITS,
        "grid_chips": list(wmk.GRID),
        "strength": wmk.DEFAULT_STRENGTH,
        "h264_encoder": tw.H264,
        "clip_frames": args.clip_frames,
        "cost_per_frame": timing,
        "budget_ms": BUDGET_MS,
        "false_positives": {
            **fp,
            "unmarked_clips_h264_500k": extra.pop("unmarked_clips_h264_500k"),
            "unmarked_clips_marked": extra.pop("unmarked_clips_marked"),
        },
        "quality": extra,
        "attacks": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    merge_records(out / "watermark.json", [record], key=lambda r: (r["benchmark"], r["device"], r["threads"]))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["clip_detection_rate"] for r in rows], 0.4, label=f"clips ({args.clip_frames} frames)")
    ax.bar(x + 0.2, [r["frame_detection_rate"] for r in rows], 0.4, label="single frames")
    ax.axhline(0.95, color="grey", ls="--", lw=0.8)
    ax.set_xticks(x, [r["attack"].replace("+", "+\n") for r in rows], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("read with the right payload")
    ax.set_title(
        f"mark {timing['mark']['median_ms']:.1f} ms, detect {timing['detect']['median_ms']:.2f} ms per 512²; "
        f"{fp['false_marks']}/{fp['unmarked_frames']} false marks",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "watermark.png", dpi=110)


if __name__ == "__main__":
    main()

"""Streams: PCM ingest → viewer latency (against the microphone path in the same run), barge-in at the
viewer, and how many direct viewers one stream serves.

Usage: python benchmarks/bench_streams.py [--sizes 512] [--bursts 30] [--viewers 1 2 4 6] [--out DIR]

`stream-avatar serve` runs in its own process; publishers and viewers are in this one (on loopback,
on the same 2 cores: a remote viewer costs the server its encode only, here every viewer's decode
competes too). Everything is measured on this process's monotonic clock:

* audio→mouth, PCM: a ``PcmPublisher`` sends the same espeak-ng bursts as bench_e2e.py, paced (20 ms
  per message, real time) as one utterance; a watch-only viewer (``AvatarClient(watch=...)``)
  receives. From the moment the message holding a burst's onset is sent to the arrival of the first
  video frame whose rig has jawOpen > 0.15 (as in bench_e2e.py). The same stimulus through the
  microphone path (``AvatarClient`` with a ``PcmSource``), in the same run, is the reference.
* barge-in: a burst utterance plays for 1-2 s, then ``clear``; at the viewer: the arrival of the
  first video frame after which every rig has jawOpen < 0.05 (the face at rest) and of the first
  audio packet after which every packet's RMS is below -40 dBFS (silent), after ``clear`` was sent.
* viewers: N viewers watch one stream playing speech for ``--viewer-seconds``; the stream's late
  frames (its ``stats``) and the slowest viewer's fps. The largest N with < 1 % late frames is the
  record's ``max_viewers``.

Writes benchmarks/results/streams.json (a record per device and size, replaced on re-run) and
streams.png beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from bench_e2e import (
    FPS,
    NOISE_RMS,
    RATE,
    RESULTS,
    VIDEO_TICKS_PER_FRAME,
    Server,
    Stimulus,
    _pct,
    analyse,
    device_name,
    first_open_frame,
    make_stimulus,
    synth_phrases,
)
from results_io import merge_records

from stream_avatar.server.client import AvatarClient, PcmPublisher, PcmSource

REST_JAW = 0.05
SILENT_RMS = 0.01  # -40 dBFS
LATE_OK = 0.01


def _with_noise(x: np.ndarray, seed: int) -> np.ndarray:
    """The stimulus with the -60 dBFS room noise the microphone client adds (same input both ways)."""
    return (x + np.random.default_rng(seed).standard_normal(x.size) * NOISE_RMS).astype(np.float32)


def pcm_latencies(publisher: PcmPublisher, viewer: AvatarClient, stim: Stimulus, uid: str) -> dict[str, Any]:
    rigs = sorted(viewer.received.rig, key=lambda r: r[0])
    video_at = {pts // VIDEO_TICKS_PER_FRAME: t for t, pts, _ in viewer.received.video}
    rig_t = np.array([t for t, _ in rigs])
    rig_k = np.array([int(m["frame"]) for _, m in rigs])
    rig_jaw = np.array([float(m["rig"]["jawOpen"]) for _, m in rigs])
    latencies, missed = [], 0
    for onset in stim.onsets:
        sent = publisher.sent_time_of(uid, onset)
        i = None if sent is None else first_open_frame(rig_t, rig_k, rig_jaw, sent)
        if sent is None or i is None:
            missed += 1
            continue
        latencies.append(1000.0 * (video_at.get(int(rig_k[i]), float(rig_t[i])) - sent))
    return {"latencies": latencies, "missed": missed}


async def wait_accepting(url: str, timeout_s: float = 15.0) -> None:
    """Until the server would take a new stream (the previous phase's session has closed and the
    machine has settled): each phase measures one stream, not a queue of refusals."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        raw = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url.rstrip("/") + "/status", timeout=5).read()
        )
        if json.loads(raw).get("accepting"):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the server did not accept a stream within {timeout_s} s")


async def run_pcm_latency(url: str, stim: Stimulus) -> dict[str, Any]:
    publisher = PcmPublisher(url)
    await publisher.connect()
    viewer = AvatarClient(url, None, watch=publisher.stream)
    try:
        await viewer.connect()
        await asyncio.sleep(1.0)
        samples = _with_noise(stim.samples, 0)
        await publisher.say(samples, RATE, "bursts", paced=True)
        await publisher.next_event("playback_finished", id="bursts", timeout_s=30)
        await asyncio.sleep(0.5)
        out = pcm_latencies(publisher, viewer, stim, "bursts")
        stats = [m for _, m in publisher.events if m.get("type") == "stats"]
        out["late_ratio"] = stats[-1]["late_frames"] / max(1, stats[-1]["frames_sent"]) if stats else None
        return out
    finally:
        await viewer.close()
        await publisher.close()


async def run_mic_latency(url: str, stim: Stimulus) -> dict[str, Any]:
    client = AvatarClient(url, PcmSource(stim.samples, noise_rms=NOISE_RMS, seed=0))
    try:
        await client.connect()
        await asyncio.sleep(stim.samples.size / RATE + 1.5)
        return analyse(client, stim)
    finally:
        await client.close()


async def run_barge_in(url: str, phrases: list[np.ndarray], trials: int) -> dict[str, Any]:
    publisher = PcmPublisher(url)
    await publisher.connect()
    viewer = AvatarClient(url, None, watch=publisher.stream)
    rest_ms, silent_ms, played_err_ms = [], [], []
    rng = np.random.default_rng(1)
    try:
        await viewer.connect()
        await asyncio.sleep(1.0)
        long = np.concatenate(phrases)  # speech without gaps: the mouth is open when clear comes
        for i in range(trials):
            uid = f"t{i}"
            await publisher.say(_with_noise(long, i), RATE, uid)
            t_start, _ = await publisher.next_event("playback_started", id=uid)
            await asyncio.sleep(float(rng.uniform(1.0, 2.0)))
            t_clear = await publisher.clear()
            _, finished = await publisher.next_event("playback_finished", id=uid, after=t_clear)
            played_err_ms.append(finished["played_ms"] - 1000.0 * (t_clear - t_start))
            await asyncio.sleep(1.0)
            rigs = [(t, m) for t, m in viewer.received.rig if t > t_clear]
            video_at = {pts // VIDEO_TICKS_PER_FRAME: t for t, pts, _ in viewer.received.video}
            open_after = [t for t, m in rigs if m["rig"]["jawOpen"] >= REST_JAW]
            rest = [
                t
                for t, m in rigs
                if m["rig"]["jawOpen"] < REST_JAW and (not open_after or t > max(open_after))
            ]
            if rest:
                k = next(int(m["frame"]) for t, m in rigs if t == rest[0])
                rest_ms.append(1000.0 * (video_at.get(k, rest[0]) - t_clear))
            audio = [
                (t, float(np.sqrt(np.mean(a**2)))) for t, _, a in viewer.received.audio if t > t_clear - 0.2
            ]
            loud = [t for t, r in audio if r >= SILENT_RMS]
            quiet = [t for t, r in audio if r < SILENT_RMS and (not loud or t > max(loud))]
            if quiet:
                silent_ms.append(max(0.0, 1000.0 * (quiet[0] - t_clear)))
    finally:
        await viewer.close()
        await publisher.close()
    return {
        "trials": trials,
        "face_at_rest_ms": _pct(rest_ms, (50, 95)),
        "audio_silent_ms": _pct(silent_ms, (50, 95)),
        "played_ms_error": _pct([abs(x) for x in played_err_ms], (50, 95)),
        "_rest": rest_ms,
        "_silent": silent_ms,
    }


async def run_viewers(url: str, speech: np.ndarray, n: int, seconds: float) -> dict[str, Any]:
    publisher = PcmPublisher(url)
    await publisher.connect()
    viewers: list[AvatarClient] = []
    refused: list[str] = []
    try:
        for _ in range(n):
            v = AvatarClient(url, None, watch=publisher.stream)
            try:
                await v.connect()
            except websockets.InvalidStatus as exc:  # admission control: 503 busy
                refused.append(
                    str(json.loads(exc.response.body or b"{}").get("message", exc.response.status_code))
                )
                continue
            viewers.append(v)
        await asyncio.sleep(1.0)
        stats0 = [m for _, m in publisher.events if m.get("type") == "stats"]
        reps = int(np.ceil(seconds * RATE / speech.size))
        t0 = time.monotonic()
        await publisher.say(np.tile(speech, reps)[: int(seconds * RATE)], RATE, "talk", paced=True)
        await publisher.next_event("playback_finished", id="talk", timeout_s=seconds + 10)
        stats = [m for _, m in publisher.events if m.get("type") == "stats"]
        a, b = (stats0[-1] if stats0 else {"late_frames": 0, "frames_sent": 0}), stats[-1]
        late = (b["late_frames"] - a["late_frames"]) / max(1, b["frames_sent"] - a["frames_sent"])
        fps = []
        for v in viewers:
            arr = np.array([t for t, _, _ in v.received.video if t > t0 + 1.0])
            fps.append((arr.size - 1) / (arr[-1] - arr[0]) if arr.size > 1 else 0.0)
        return {
            "viewers": n,
            "admitted": len(viewers),
            "refused_reasons": refused,
            "late_frame_ratio": round(late, 4),
            "min_viewer_fps": round(min(fps), 2) if fps else None,
        }
    finally:
        for v in viewers:
            await v.close()
        await publisher.close()


async def bench(
    size: int, args: argparse.Namespace, phrases: list[np.ndarray], store: Path
) -> dict[str, Any]:
    stim = make_stimulus(phrases, args.bursts, seed=0)
    with tempfile.TemporaryDirectory(prefix="bench-streams-log-") as tmp:
        server = Server(size, store, None, Path(tmp) / "server.log")
        try:
            url = await server.url()
            print(f"size {size}: server at {url}", file=sys.stderr)
            print("  mic path", file=sys.stderr)
            mic = await run_mic_latency(url, stim)
            print("  PCM path", file=sys.stderr)
            await wait_accepting(url)
            pcm = await run_pcm_latency(url, stim)
            print("  barge-in", file=sys.stderr)
            await wait_accepting(url)
            barge = await run_barge_in(url, phrases[:6], args.trials)
            viewers = []
            for n in args.viewers:
                print(f"  {n} viewer(s)", file=sys.stderr)
                await wait_accepting(url)
                viewers.append(await run_viewers(url, np.concatenate(phrases[:8]), n, args.viewer_seconds))
        finally:
            server.stop()
    ok = [
        v["viewers"]
        for v in viewers
        if v["admitted"] == v["viewers"]
        and v["late_frame_ratio"] < LATE_OK
        and (v["min_viewer_fps"] or 0) > FPS - 2
    ]
    return {
        "device": device_name(),
        "size": size,
        "bursts": len(stim.onsets),
        "mic_audio_to_mouth_ms": _pct(mic["latencies"], (50, 95, 99)),
        "pcm_audio_to_mouth_ms": _pct(pcm["latencies"], (50, 95, 99)),
        "mic_missed": mic["missed"],
        "pcm_missed": pcm["missed"],
        "pcm_late_frame_ratio": pcm["late_ratio"],
        "barge_in": {k: v for k, v in barge.items() if not k.startswith("_")},
        "viewers": viewers,
        "max_viewers": max(ok) if ok else 0,
        "_mic": mic["latencies"],
        "_pcm": pcm["latencies"],
    }


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in records:
        if "_mic" in r:
            axes[0].hist([r["_mic"], r["_pcm"]], bins=20, label=[f"mic {r['size']}²", f"PCM {r['size']}²"])
        xs = [v["viewers"] for v in r["viewers"]]
        axes[1].plot(xs, [100 * v["late_frame_ratio"] for v in r["viewers"]], "o-", label=f"{r['size']}²")
    axes[0].set_xlabel("audio → mouth at the viewer (ms)")
    axes[0].legend()
    axes[1].axhline(100 * LATE_OK, color="grey", ls="--")
    axes[1].set_xlabel("direct viewers of one stream")
    axes[1].set_ylabel("late frames (%)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512])
    p.add_argument("--bursts", type=int, default=30)
    p.add_argument("--trials", type=int, default=10, help="barge-in trials")
    p.add_argument("--viewers", type=int, nargs="+", default=[1, 2, 4, 6])
    p.add_argument("--viewer-seconds", type=float, default=15.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    phrases = synth_phrases()
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-streams-store-") as store:
        for size in args.sizes:
            records.append(asyncio.run(bench(size, args, phrases, Path(store))))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(records, args.out / "streams.png")
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    merged = merge_records(args.out / "streams.json", clean, lambda r: (r["device"], r["size"]))
    for r in clean:
        print(r)
    print(f"{len(merged)} records in {args.out / 'streams.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()

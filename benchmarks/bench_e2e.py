"""End-to-end latency: `stream-avatar serve` in one process, WebRTC clients in another, on loopback.

Usage: python benchmarks/bench_e2e.py [--sizes 512 256] [--sessions 1] [--bursts 60] [--out DIR]

With ``--sessions N`` (N > 1) the clients connect 4 s apart, as users arrive; the server's admission
control may refuse some (HTTP 503 ``busy``): the record says how many were admitted and refused, and
the late frames of the admitted ones (mean and worst).

Each client is a real aiortc peer (``stream_avatar.server.client.AvatarClient``, receiving like a
browser: a video frame is released when its last packet is in). Its microphone plays espeak-ng speech
bursts (different phrases, voices and rates; the onset of a burst is where its 10 ms RMS first
reaches 10 % of its loudest 10 ms) separated by 0.9-1.4 s of quiet room noise, in real time,
20 ms per packet. Everything is measured at the client, on its monotonic clock:

* audio→mouth: from the moment the packet holding a burst's onset leaves the client to the
  arrival (decoded) of the first video frame whose rig (data channel, matched to the frame by its
  index) has jawOpen > 0.15. A burst whose onset finds the mouth already open, or that gets no
  opening within 1 s, is counted as missed and left out of the percentiles.
* A/V offset: |arrival of video frame k - arrival of the audio packet stamped for frame k| (both
  stamped from the server's one media clock), over all frames.
* mouth after sound (media time): frame of the first open mouth minus the frame of the first received
  audio packet carrying the burst, in ms. This is the lip-sync a browser shows once it aligns the two
  streams by their timestamps (positive: the mouth follows the sound).
* fps: received video frames per second after the first second; first frame: first video frame
  arrival minus the answer's arrival; late-frame ratio: the server's `late_frames / frames_sent`
  from its last `stats` message (a repeated frame cannot be told apart from a still face at the client).

Writes benchmarks/results/e2e.json, a list of records {"device", "size", "sessions",
"audio_to_mouth_ms": {"p50", "p95", "p99"}, "av_offset_ms": {"p50", "p95"}, "fps",
"late_frame_ratio", "first_frame_ms", "admitted", "refused", "refusal_reasons", ...} (a record
with the same device/size/sessions/budget is replaced), and e2e.png beside it. Needs the `espeak-ng` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from results_io import merge_records

from stream_avatar.audio.io import load_audio
from stream_avatar.audio.resample import resample
from stream_avatar.server.client import AvatarClient, PcmSource

RESULTS = Path(__file__).resolve().parent / "results"
RATE = 48000
FPS = 25
VIDEO_TICKS_PER_FRAME = 90000 // FPS
AUDIO_SAMPLES_PER_FRAME = RATE // FPS
JAW_OPEN = 0.15
MISS_AFTER_S = 1.0
NOISE_RMS = 1e-3  # -60 dBFS room noise: espeak-ng writes exact zeros between words
SERVER_START_TIMEOUT_S = 120.0
TARGETS = {"audio_to_mouth_p50": 100.0, "audio_to_mouth_p95": 150.0, "first_frame": 500.0, "av_offset": 20.0}

# Phrases that open on a vowel or a glide, so the first audible sound is one the mouth opens for (a
# phrase opening on /p/ or /m/ keeps the lips shut, correctly, for the first 50-100 ms).
PHRASES = (
    "Hello there, how are you today?",
    "Open the window, please.",
    "I would like a cup of coffee.",
    "Are you ready to go?",
    "All the papers are on the desk.",
    "Every morning we walk to work.",
    "Actually, that is a good idea.",
    "Only a few minutes left.",
    "Ask me anything you want.",
    "Are the lights still on?",
    "Oh, I almost forgot the keys.",
    "Usually it takes an hour.",
)
VOICES = (("en", 175), ("en-us", 160), ("en+f3", 190), ("en-gb-x-rp", 170))


ONSET_WINDOW = RATE // 100  # 10 ms
ONSET_FRACTION = 0.1  # a burst starts where its 10 ms RMS first reaches 10 % of its loudest 10 ms


@dataclass(frozen=True)
class Stimulus:
    samples: np.ndarray  # (n,) float32 at 48 kHz
    onsets: tuple[int, ...]  # sample index of each burst's energy onset


def energy_onset(speech: np.ndarray) -> int:
    """First sample of the first 10 ms window whose RMS reaches ONSET_FRACTION of the loudest one."""
    n = speech.size // ONSET_WINDOW
    rms = np.sqrt(np.mean(speech[: n * ONSET_WINDOW].reshape(n, ONSET_WINDOW) ** 2, axis=1))
    return int(np.argmax(rms >= ONSET_FRACTION * rms.max())) * ONSET_WINDOW


def synth_phrases() -> list[np.ndarray]:
    """Every phrase in every voice, trimmed, 48 kHz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit("error: espeak-ng is not installed (Debian/Ubuntu: sudo apt-get install espeak-ng)")
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        for i, text in enumerate(PHRASES):
            voice, wpm = VOICES[i % len(VOICES)]
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run([exe, "-v", voice, "-s", str(wpm), "-w", str(wav), "--", text], check=True)
            x, rate = load_audio(wav)
            x = resample(x, rate, RATE)
            idx = np.flatnonzero(np.abs(x) > 1e-3)
            out.append(x[idx[0] : idx[-1] + 1].astype(np.float32))
    return out


def make_stimulus(phrases: list[np.ndarray], bursts: int, seed: int) -> Stimulus:
    rng = np.random.default_rng(seed)
    parts = [np.zeros(RATE, np.float32)]  # 1 s of quiet first: the session settles
    onsets = []
    pos = RATE
    for b in range(bursts):
        speech = phrases[(b * 5 + int(rng.integers(len(phrases)))) % len(phrases)]
        speech = speech[: int(1.4 * RATE)]  # bursts of at most 1.4 s keep the run short
        gap = np.zeros(int(rng.uniform(0.9, 1.4) * RATE), np.float32)
        onsets.append(pos + energy_onset(speech))
        parts += [speech * float(rng.uniform(0.5, 1.0)), gap]
        pos += speech.size + gap.size
    samples = np.concatenate(parts)
    return Stimulus(samples, tuple(onsets))


# ------------------------------------------------------------------------------------ server


class Server:
    """`python -m stream_avatar serve --port 0 ...` in its own process group; the URL is its stdout."""

    def __init__(self, size: int, store: Path, budget_ms: int | None, log: Path) -> None:
        cmd = [sys.executable, "-m", "stream_avatar", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--size", str(size), "--store", str(store), "--max-sessions", "16"]
        if budget_ms is not None:
            cmd += ["--latency-budget-ms", str(budget_ms)]
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )

    async def url(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), SERVER_START_TIMEOUT_S)
        url = line.decode().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"server did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
        return url

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log_file.close()


# ---------------------------------------------------------------------------------- analysis


def _pct(values: list[float], qs: tuple[int, ...]) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in qs}


def first_open_frame(rig_t: np.ndarray, rig_k: np.ndarray, rig_jaw: np.ndarray, sent: float) -> int | None:
    """Index (into the rig arrays) of the first rig after ``sent`` with the mouth open within
    MISS_AFTER_S; None when the mouth was already open just before (no onset to time) or never opens."""
    before = rig_jaw[(rig_t >= sent - 0.12) & (rig_t < sent)]
    window = np.flatnonzero((rig_t >= sent) & (rig_t < sent + MISS_AFTER_S) & (rig_jaw > JAW_OPEN))
    if before.size == 0 or before.max() > JAW_OPEN or window.size == 0:
        return None
    return int(window[0])


def analyse(client: AvatarClient, stim: Stimulus) -> dict[str, Any]:
    rec = client.received
    video = list(rec.video)
    audio = list(rec.audio)
    rigs = sorted(rec.rig, key=lambda r: r[0])
    video_at = {pts // VIDEO_TICKS_PER_FRAME: t for t, pts, _ in video}
    audio_at: dict[int, float] = {}
    for t, pts, _ in audio:
        if pts % AUDIO_SAMPLES_PER_FRAME == 0:
            audio_at[pts // AUDIO_SAMPLES_PER_FRAME] = t
    rig_t = np.array([t for t, _ in rigs])
    rig_k = np.array([int(m["frame"]) for _, m in rigs])
    rig_jaw = np.array([float(m["rig"]["jawOpen"]) for _, m in rigs])
    # Received audio by frame index, for the sound onset in media time.
    audio_rms = {pts // AUDIO_SAMPLES_PER_FRAME: float(np.sqrt(np.mean(x**2))) for _, pts, x in audio}

    latencies: list[float] = []
    after_sound: list[float] = []
    missed = 0
    for onset in stim.onsets:
        assert client.source is not None
        sent = client.source.sent_time_of(onset)
        i = None if sent is None else first_open_frame(rig_t, rig_k, rig_jaw, sent)
        if sent is None or i is None:
            missed += 1
            continue
        k = int(rig_k[i])
        arrival = video_at.get(k, float(rig_t[i]))
        latencies.append(1000.0 * (arrival - sent))
        # The burst's first loud received packet, searched from 0.5 s before the mouth frame.
        loud = [j for j in range(k - FPS // 2, k + FPS // 2) if audio_rms.get(j, 0.0) > 8 * NOISE_RMS]
        if loud:
            after_sound.append(1000.0 * (k - loud[0]) / FPS)

    offsets = [abs(video_at[k] - audio_at[k]) * 1000.0 for k in video_at if k in audio_at]
    # Video encode + transport + decode: a frame's arrival after its rig message (sent at the same tick).
    rig_at = dict(zip(rig_k.tolist(), rig_t.tolist(), strict=True))
    video_after_rig = [1000.0 * (t - rig_at[k]) for k, t in video_at.items() if k in rig_at]
    t_first = video[0][0] if video else None
    steady = [t for t, _, _ in video if t_first is not None and t >= t_first + 1.0]
    fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    stats = rec.stats[-1] if rec.stats else {}
    late_ratio = stats.get("late_frames", 0) / max(1, stats.get("frames_sent", 0))
    first_ms = 1000.0 * (t_first - client.answered_at) if t_first and client.answered_at else None
    return {
        "latencies": latencies,
        "after_sound": after_sound,
        "offsets": offsets,
        "video_after_rig": video_after_rig,
        "missed": missed,
        "fps": fps,
        "late_ratio": late_ratio,
        "first_ms": first_ms,
        "server": stats,
    }


# --------------------------------------------------------------------------------------- run


async def run_clients(
    url: str, stim: Stimulus, sessions: int, stagger_s: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Open ``sessions`` clients ``stagger_s`` apart (the server measures each before the next
    asks); those refused (HTTP 503, ``busy``) are counted with the server's reason."""
    clients: list[AvatarClient] = []
    refused: list[str] = []
    try:
        for i in range(sessions):
            if i:
                await asyncio.sleep(stagger_s)
            c = AvatarClient(url, PcmSource(stim.samples, noise_rms=NOISE_RMS, seed=i))
            try:
                await c.connect()
            except websockets.InvalidStatus as exc:
                body = json.loads(exc.response.body or b"{}")
                refused.append(str(body.get("message", exc.response.status_code)))
                print(f"  session {i + 1} refused: {refused[-1]}", file=sys.stderr)
                continue
            clients.append(c)
        duration = stim.samples.size / RATE
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration + 1.5:
            await asyncio.sleep(1.0)
            done = time.monotonic() - t0
            print(f"\r  {done:5.0f} / {duration:.0f} s", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        errors = [e for c in clients for e in c.received.errors]
        if errors:
            raise RuntimeError(f"server errors: {errors}")
        return [analyse(c, stim) for c in clients], refused
    finally:
        for c in clients:
            await c.close()


def device_name() -> str:
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, server+client)"


async def bench(
    size: int, sessions: int, stim: Stimulus, store: Path, budget_ms: int | None, stagger_s: float = 4.0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-log-") as tmp:
        server = Server(size, store, budget_ms, Path(tmp) / "server.log")
        try:
            url = await server.url()
            print(f"size {size}, {sessions} session(s): server at {url}", file=sys.stderr)
            results, refused = await run_clients(url, stim, sessions, stagger_s)
        finally:
            server.stop()
    lat = [x for r in results for x in r["latencies"]]
    after = [x for r in results for x in r["after_sound"]]
    offs = [x for r in results for x in r["offsets"]]
    var = [x for r in results for x in r["video_after_rig"]]
    firsts = [r["first_ms"] for r in results if r["first_ms"] is not None]
    server_stats = results[0]["server"]
    return {
        "device": device_name(),
        "size": size,
        "sessions": sessions,
        "admitted": len(results),
        "refused": len(refused),
        "refusal_reasons": refused,
        "latency_budget_ms": budget_ms if budget_ms is not None else 80,
        "audio_to_mouth_ms": _pct(lat, (50, 95, 99)),
        "av_offset_ms": _pct(offs, (50, 95)),
        "mouth_after_sound_ms": _pct(after, (50, 95)),
        "video_after_rig_ms": _pct(var, (50, 95)),
        "fps": round(float(np.mean([r["fps"] for r in results])), 2),
        "late_frame_ratio": round(float(np.mean([r["late_ratio"] for r in results])), 4),
        "late_frame_ratio_max": round(float(np.max([r["late_ratio"] for r in results])), 4),
        "first_frame_ms": round(float(np.median(firsts)), 1) if firsts else None,
        "bursts": len(stim.onsets) * len(results),
        "missed_bursts": sum(r["missed"] for r in results),
        "server_render_ms_p50": server_stats.get("render_ms_p50"),
        "server_mouth_latency_ms_p50": server_stats.get("mouth_latency_ms"),
        "server_mouth_latency_ms_p95_max": max(
            (r["server"].get("mouth_latency_ms_p95") or 0.0 for r in results), default=None
        ),
        "_latencies": lat,
    }


def _record_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["device"], r["size"], r["sessions"], r.get("latency_budget_ms"))


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in records:
        lat = np.sort(r["_latencies"])
        if lat.size:
            ax1.plot(
                lat, np.arange(1, lat.size + 1) / lat.size, label=f"{r['size']}², {r['sessions']} session(s)"
            )
    ax1.axvline(TARGETS["audio_to_mouth_p50"], color="grey", linestyle="--", linewidth=1, label="p50 target")
    ax1.axvline(TARGETS["audio_to_mouth_p95"], color="red", linestyle="--", linewidth=1, label="p95 target")
    ax1.set_xlabel("audio→mouth at the client (ms)")
    ax1.set_ylabel("fraction of bursts")
    ax1.set_title("Audio→mouth latency (CDF)")
    ax1.legend(fontsize=8)
    labels = [f"{r['size']}²\n{r['sessions']} sess." for r in records]
    x = np.arange(len(records))
    ax2.bar(x - 0.27, [r["av_offset_ms"]["p95"] or 0 for r in records], 0.27, label="A/V offset p95")
    ax2.bar(x, [r["first_frame_ms"] or 0 for r in records], 0.27, label="first frame")
    ax2.bar(x + 0.27, [r["audio_to_mouth_ms"]["p95"] or 0 for r in records], 0.27, label="audio→mouth p95")
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_ylabel("ms")
    ax2.set_title("Per configuration")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1], help="concurrent sessions per run")
    ap.add_argument("--bursts", type=int, default=60, help="speech bursts per session (>= 50 for the table)")
    ap.add_argument("--latency-budget-ms", type=int, default=None, help="server playout budget (default 80)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", type=Path, default=None, help="avatar store (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    stim = make_stimulus(synth_phrases(), args.bursts, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-store-") as tmp:
        store = args.store or Path(tmp)
        for size in args.sizes:
            for sessions in args.sessions:
                rec = asyncio.run(bench(size, sessions, stim, store, args.latency_budget_ms))
                print(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}))
                records.append(rec)
    merged = merge_records(
        args.out / "e2e.json",
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in records],
        key=_record_key,
    )
    plot(records, args.out / "e2e.png")
    print(f"wrote {args.out / 'e2e.json'} ({len(merged)} records) and {args.out / 'e2e.png'}")


if __name__ == "__main__":
    main()

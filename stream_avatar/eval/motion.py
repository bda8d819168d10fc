"""Lip-sync evaluation (``stream-avatar eval motion``): how well a driver's mouth follows speech.

Metric: Pearson r between a driver's predicted mouth opening (jawOpen per 25 fps frame) and the
phone-derived target opening (the jawOpen of ``visemes.mouth_targets`` from a phone timeline), per
clip, averaged over the clips of a split; and the lag of best correlation (searched over ±200 ms;
positive = the prediction comes late). Drivers run causally in 20 ms chunks, as live audio arrives.

Splits: the synthetic dataset's held-out speakers and held-out language (and each synthesizer in
them), and the real-speech set (``stream_avatar.data.realspeech``: recorded human speech with
forced-aligned phones) clean, with babble (other real clips) and white noise at 10 dB SNR (four
draws each), and through an 8 kHz telephone channel (300-3400 Hz). Systems in the same run: the
learned driver, the DSP driver, a 40 ms energy envelope, and on the real set an offline pocketsphinx
allphone recognizer (phones → visemes, whole utterance in view) — the bar a causal model is measured
against.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_avatar.audio.features import SAMPLE_RATE_HZ
from stream_avatar.data import visemes
from stream_avatar.motion import rig

__all__ = ["EvalClip", "best_lag", "evaluate_motion", "pearson", "predict_jaw"]

FPS = 25
SPF = SAMPLE_RATE_HZ // FPS
CHUNK = 320  # 20 ms: how live audio arrives
MAX_LAG_FRAMES = 5  # ±200 ms
_JAW = rig.index("jawOpen")


@dataclass
class EvalClip:
    """One clip: 16 kHz audio, its target openness per frame, and where it comes from."""

    name: str
    audio: np.ndarray  # (n,) float32 16 kHz
    target: np.ndarray  # (ceil(n / SPF),) float32
    group: str  # e.g. "test_speaker/festival"
    phonemes: list[visemes.TimedPhoneme] | None = None


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two equal-length series; nan when either is constant."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else float("nan")


def best_lag(pred: np.ndarray, target: np.ndarray, max_lag: int = MAX_LAG_FRAMES) -> tuple[int, float]:
    """(lag in frames, r at that lag): pred[t + lag] against target[t]; positive lag = pred late."""
    best = (0, -2.0)
    n = min(len(pred), len(target))
    for lag in range(-max_lag, max_lag + 1):
        a, b = (pred[lag:n], target[: n - lag]) if lag >= 0 else (pred[: n + lag], target[-lag:n])
        r = pearson(a, b)
        if np.isfinite(r) and r > best[1]:
            best = (lag, r)
    return best


def n_frames(n_samples: int) -> int:
    return math.ceil(n_samples / SPF)


def predict_jaw(make_driver: Callable[[], Any], audio: np.ndarray) -> np.ndarray:
    """Run a fresh driver on ``audio`` in 20 ms chunks (+ flush) → jawOpen per frame (n_frames,)."""
    drv = make_driver()
    n = n_frames(audio.size)
    x = np.zeros(n * SPF, np.float32)
    x[: audio.size] = audio
    frames = []
    for i in range(0, x.size, CHUNK):
        frames.extend(drv.push(x[i : i + CHUNK]))
    flush = getattr(drv, "flush", None)
    if callable(flush):
        frames.extend(flush())
    jaw = np.array([f.rig[_JAW] for f in frames], np.float32)
    if jaw.size != n:
        raise RuntimeError(f"driver returned {jaw.size} frames for {n}")
    return jaw


def energy_envelope(audio: np.ndarray) -> np.ndarray:
    """Causal 40 ms RMS envelope in dB per frame (the trivial loudness baseline)."""
    n = n_frames(audio.size)
    x = np.zeros(n * SPF, np.float64)
    x[: audio.size] = audio
    rms = np.sqrt(np.mean(x.reshape(n, SPF) ** 2, axis=1) + 1e-10)
    return (20.0 * np.log10(rms)).astype(np.float32)


def _target(phonemes: Sequence[visemes.TimedPhoneme], n: int) -> np.ndarray:
    return visemes.mouth_targets(phonemes, n, FPS, unknown=visemes.UNKNOWN_VISEME)[:, _JAW]


def synthetic_clips(data_dir: str | Path, splits: Sequence[str], per_group: int) -> list[EvalClip]:
    """Up to ``per_group`` utterances per (split, synthesizer), in manifest order."""
    from stream_avatar.data.synth import read_dataset

    out: list[EvalClip] = []
    counts: dict[str, int] = {}
    for split in splits:
        for utt in read_dataset(data_dir, split):
            group = f"{split}/{utt.record.get('synthesizer', 'espeak')}"
            if counts.get(group, 0) >= per_group:
                continue
            counts[group] = counts.get(group, 0) + 1
            phon = visemes.phonemes_from_samples(utt.phonemes, SAMPLE_RATE_HZ)
            out.append(EvalClip(utt.record["id"], utt.audio, _target(phon, n_frames(utt.audio.size)), group))
    return out


def real_clips(seed: int = 0, draws: int = 4) -> list[EvalClip]:
    """The real-speech set clean, + babble 10 dB, + white noise 10 dB, + 8 kHz telephone band.

    Babble and noise come in ``draws`` independent mixes per clip (other clips' speech, placed at
    random; fresh noise), all in their group: one draw alone swings the group's r by ±0.02."""
    from stream_avatar.audio.resample import resample
    from stream_avatar.data import augment, realspeech

    clips = realspeech.load_clips()
    out: list[EvalClip] = []
    for i, c in enumerate(clips):
        audio = np.asarray(c.audio16k, np.float32)
        target = _target(c.phonemes, n_frames(audio.size))
        others = [np.asarray(o.audio16k, np.float32) for j, o in enumerate(clips) if j != i]
        variants: list[tuple[str, np.ndarray]] = [("real", audio)]
        for d in range(draws):
            rng = np.random.default_rng([seed, i, d])
            variants.append(
                ("real+babble10dB", augment.add_noise(audio, rng, 10.0, "babble", babble_sources=others))
            )
            variants.append(("real+noise10dB", augment.add_noise(audio, rng, 10.0, "white")))
        narrow = resample(augment.band_limit(audio, 300.0, 3400.0), SAMPLE_RATE_HZ, 8000)
        variants.append(("real+telephone8k", resample(narrow, 8000, SAMPLE_RATE_HZ)))
        for group, a in variants:
            a = np.clip(np.asarray(a, np.float32), -1.0, 1.0)
            if a.size < audio.size:
                a = np.concatenate([a, np.zeros(audio.size - a.size, np.float32)])
            out.append(EvalClip(c.name, a[: audio.size], target, group, list(c.phonemes)))
    return out


def _score(preds: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, Any]:
    rs, lags, best = [], [], []
    for p, t in zip(preds, targets, strict=True):
        r = pearson(p, t)
        if not np.isfinite(r):
            continue
        lag, rb = best_lag(p, t)
        rs.append(r)
        lags.append(lag)
        best.append(rb)
    pooled = pearson(np.concatenate(preds), np.concatenate(targets)) if preds else float("nan")
    # Lag of the pooled cross-correlation: one number per split, less noisy than per-clip lags.
    pl, _ = best_lag(np.concatenate(preds), np.concatenate(targets)) if preds else (0, 0.0)
    return {
        "clips": len(rs),
        "r_mean": round(float(np.mean(rs)), 4) if rs else None,
        "r_median": round(float(np.median(rs)), 4) if rs else None,
        "r_pooled": round(pooled, 4),
        "best_lag_ms": int(pl * 1000 // FPS),
        "r_at_best_lag_mean": round(float(np.mean(best)), 4) if best else None,
    }


def evaluate_motion(
    *,
    model_dir: str | Path | None = None,
    data_dir: str | Path | Sequence[str | Path] | None = None,
    per_group: int = 40,
    real: bool = True,
    allphone: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every system on every split; returns the report dict (see ``write_report``)."""
    from stream_avatar.motion.dsp_driver import DSPMouthDriver
    from stream_avatar.motion.learned import LearnedMouthDriver, MotionModel

    model = MotionModel.load(model_dir)
    systems: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "learned": lambda a: predict_jaw(lambda: LearnedMouthDriver(model=model), a),
        "dsp": lambda a: predict_jaw(DSPMouthDriver, a),
        "energy": energy_envelope,
    }
    clips: list[EvalClip] = []
    if data_dir is not None:
        dirs = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
        for d in dirs:
            clips += synthetic_clips(d, ("test_speaker", "test_language"), per_group)
    if real:
        clips += real_clips()
    groups = sorted({c.group for c in clips}, key=lambda g: (g.startswith("real"), g))
    preds: dict[str, dict[str, list[np.ndarray]]] = {s: {g: [] for g in groups} for s in systems}
    targets: dict[str, list[np.ndarray]] = {g: [] for g in groups}
    t0 = time.perf_counter()
    for c in clips:
        targets[c.group].append(c.target)
        for name, fn in systems.items():
            preds[name][c.group].append(fn(c.audio))
    if allphone and real:
        from stream_avatar.data import realspeech

        preds["pocketsphinx_offline"] = {g: [] for g in groups}
        for c in clips:
            if c.group.startswith("real"):
                phon = realspeech.allphone_phonemes(c.audio)
                preds["pocketsphinx_offline"][c.group].append(_target(phon, c.target.size))
    log(f"evaluated {len(clips)} clips in {time.perf_counter() - t0:.1f} s")
    results: dict[str, dict[str, Any]] = {}
    for name, by_group in preds.items():
        results[name] = {g: _score(p, targets[g]) for g, p in by_group.items() if p}
    # Whole synthetic splits (all synthesizers together).
    for split in ("test_speaker", "test_language"):
        gs = [g for g in groups if g.startswith(split + "/")]
        if not gs:
            continue
        for name in systems:
            results[name][split] = _score(
                [p for g in gs for p in preds[name][g]], [t for g in gs for t in targets[g]]
            )
    example = next((c for c in clips if c.group == "real"), None)
    plot = None
    if example is not None:
        i = [c for c in clips if c.group == "real"].index(example)
        plot = {
            "clip": example.name,
            "target": example.target.round(4).tolist(),
            **{s: preds[s]["real"][i].round(4).tolist() for s in ("learned", "dsp")},
        }
    return {
        "model": str(model_dir or "models/motion"),
        "data": [str(d) for d in ([data_dir] if isinstance(data_dir, (str, Path)) else data_dir or [])],
        "model_config": model.config.to_json(),
        "lookahead_ms": model.config.lookahead_rows * 10,
        "metric": "Pearson r, predicted vs phone-derived jawOpen per 25 fps frame; mean over clips",
        "results": results,
        "example": plot,
    }


def _md_table(report: dict[str, Any]) -> str:
    res = report["results"]
    systems = list(res)
    groups: list[str] = []
    for s in systems:
        groups += [g for g in res[s] if g not in groups]
    head = "| split | " + " | ".join(f"{s} r (lag ms)" for s in systems) + " | clips |"
    rows = [head, "|---" * (len(systems) + 2) + "|"]
    for g in groups:
        cells = []
        n = 0
        for s in systems:
            v = res[s].get(g)
            if v is None or v["r_mean"] is None:
                cells.append("–")
            else:
                cells.append(f"{v['r_mean']:.3f} ({v['best_lag_ms']:+d})")
                n = v["clips"]
        rows.append(f"| {g} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(rows)


def write_report(report: dict[str, Any], out_dir: str | Path, name: str = "motion_eval") -> list[Path]:
    """JSON + markdown + plots into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / f"{name}.json"
    js.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    md = out / f"{name}.md"
    md.write_text(
        f"# Lip-sync evaluation\n\n{report['metric']}; lookahead {report['lookahead_ms']} ms. "
        "Lag: best-correlation lag of the pooled series (positive = prediction late).\n\n"
        + _md_table(report)
        + "\n",
        encoding="utf-8",
    )
    files = [js, md]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return files
    ex = report.get("example")
    if ex:
        fig, ax = plt.subplots(figsize=(10, 3.2))
        t = np.arange(len(ex["target"])) / FPS
        ax.plot(t, ex["target"], label="target (forced-aligned phones)", color="k", lw=1.5)
        ax.plot(t, ex["learned"], label="learned (causal, 40 ms lookahead)", lw=1.2)
        ax.plot(t, ex["dsp"], label="dsp", lw=1.0, alpha=0.7)
        ax.set_xlabel("s")
        ax.set_ylabel("jawOpen")
        ax.set_title(f"real speech: {ex['clip']}")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        p = out / f"{name}_example.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)
    res = report["results"]
    groups = [g for g in res["learned"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) + 2), 3.6))
    width = 0.8 / len(res)
    for k, (s, by) in enumerate(res.items()):
        vals = [by.get(g, {}).get("r_mean") or 0.0 for g in groups]
        ax.bar(np.arange(len(groups)) + k * width, vals, width, label=s)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean Pearson r")
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / f"{name}_splits.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    files.append(p)
    return files

"""Reference-clip emotion read back: every emotion rendered on each benchmark portrait, then
``clip_emotion`` (Face Mesh → inverse fitter → the visual branch → the bank), fitted against the default
portrait's neutral face and against the portrait's own photo.

Usage: python benchmarks/bench_reference.py [--size 256] [--seconds 3] [--sdist PATH] [--no-download]
                                            [--out DIR]

For each portrait of ``bench_expression.py`` (the default, Hopper, the default's deep-tone and small
off-centre copies, Obama and Biden when the sdist is there) and each of the 8 emotions (intensity 0.8;
neutral: none), ``stream_avatar.offline.render_file`` renders a clip of real recorded speech (the
real-speech set's ``codec2_speech_orig_16k``, its first ``--seconds``), and the clip is read back the way
``--emotion-ref`` reads any clip: fitted against the default portrait's neutral face (a stand-in), and
against the portrait's own photo (``--emotion-ref-neutral``). Writes, under benchmarks/results/:

- reference_clips.json: per portrait × emotion the probabilities and the weights the clip selects;
- reference_clips.md: per way of fitting, the read-back table, the share correct, the confusion matrix;
- reference_clips.png: the two confusion matrices.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

from bench_expression import BENCH_CONSENT, RESULTS, add_portrait_args, portraits_for  # noqa: E402

from stream_avatar.emotion import facs  # noqa: E402

SPEECH_CLIP = "codec2_speech_orig_16k"
LEVEL = 0.8


def _write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = np.clip(np.rint(np.asarray(audio, np.float64) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


# How a clip is fitted: against the default portrait's neutral face (what ``--emotion-ref`` does alone),
# or against the photo of the clip's person (``--emotion-ref-neutral``: here the portrait itself).
NEUTRALS = ("stand_in", "own_photo")
NEUTRAL_TITLES = {
    "stand_in": "fitted against the default portrait's neutral face (`--emotion-ref CLIP`)",
    "own_photo": "fitted against the portrait's own photo (`--emotion-ref CLIP --emotion-ref-neutral PHOTO`)",
}


def run(portraits: dict[str, Path], size: int, seconds: float, tmp: Path) -> dict[str, Any]:
    from stream_avatar.avatar.store import AvatarStore
    from stream_avatar.capture.reference import clip_rigs, neutral_landmarks
    from stream_avatar.config import WatermarkConfig
    from stream_avatar.data import realspeech
    from stream_avatar.emotion.inference import EmotionModel
    from stream_avatar.emotion.reference import rig_emotion
    from stream_avatar.offline import render_file

    clip = next(c for c in realspeech.load_clips() if c.name == SPEECH_CLIP)
    wav = tmp / "speech.wav"
    _write_wav(wav, np.asarray(clip.audio16k, np.float32)[: int(16000 * seconds)])
    model = EmotionModel.load()
    store = AvatarStore(tmp / "store")
    t0 = time.perf_counter()
    n_emo = len(facs.EMOTIONS)
    out: dict[str, Any] = {"size": size, "seconds": seconds, "speech": SPEECH_CLIP, "level": LEVEL}
    for mode in NEUTRALS:
        out[mode] = {"portraits": {}, "confusion": np.zeros((n_emo, n_emo), np.int64)}
    for name, path in portraits.items():
        avatar = store.enroll(path, size=size, consent=BENCH_CONSENT)
        neutral = {"stand_in": None, "own_photo": neutral_landmarks(path)}
        for i, emotion in enumerate(facs.EMOTIONS):
            mp4 = tmp / f"{name}-{emotion}.mp4"
            spec = facs.parse("neutral" if emotion == "neutral" else f"{emotion}:{LEVEL}")
            render_file(
                wav,
                mp4,
                avatar=avatar,
                size=size,
                progress=False,
                emotion=spec,
                device="cpu",
                watermark=WatermarkConfig(enabled=False),  # the mark carries the time: same pixels every run
            )
            for mode in NEUTRALS:
                weights, probs = rig_emotion(model, clip_rigs(mp4, neutral[mode]))
                read = max(probs, key=lambda k: probs[k])
                out[mode]["confusion"][i, facs.EMOTIONS.index(read)] += 1
                out[mode]["portraits"].setdefault(name, {})[emotion] = {
                    "read": read,
                    "correct": read == emotion,
                    "weights": weights,
                    "probabilities": probs,
                }
        print(
            f"{name:18s} "
            + " | ".join(
                f"{mode} {sum(r['correct'] for r in out[mode]['portraits'][name].values())}/8"
                for mode in NEUTRALS
            ),
            flush=True,
        )
    for mode in NEUTRALS:
        m = out[mode]["confusion"]
        n = int(m.sum())
        out[mode].update(correct=int(np.trace(m)), clips=n, share=round(int(np.trace(m)) / max(1, n), 4))
        out[mode]["confusion"] = m.tolist()
    out["seconds_total"] = round(time.perf_counter() - t0, 1)
    return out


def write_markdown(result: dict[str, Any], path: Path, notes: list[str]) -> None:
    emos = list(facs.EMOTIONS)
    lines = [
        "# Reference clips read back (`--emotion-ref`)",
        "",
        "Generated by `python benchmarks/bench_reference.py`. Each emotion (intensity "
        f"{result['level']}; neutral: none) rendered on each portrait at {result['size']} px over "
        f"{result['seconds']:.0f} s of recorded speech ({result['speech']}), read back through Face Mesh → "
        "inverse fitter → the visual branch → the bank, fitted two ways. A cell shows the emotion read "
        "(✓ when it is the one rendered).",
        "",
        "| how the clip is read | correct |",
        "|---|---|",
    ]
    for mode in NEUTRALS:
        r = result[mode]
        lines.append(
            f"| {NEUTRAL_TITLES[mode]} | **{r['correct']}/{r['clips']} = {100 * r['share']:.1f} %** |"
        )
    for mode in NEUTRALS:
        r = result[mode]
        lines += ["", f"## {NEUTRAL_TITLES[mode][0].upper()}{NEUTRAL_TITLES[mode][1:]}", ""]
        lines += ["| portrait | " + " | ".join(emos) + " | correct |", "|---" * (len(emos) + 2) + "|"]
        for name, rows in r["portraits"].items():
            cells = [f"{rows[e]['read']}{' ✓' if rows[e]['correct'] else ''}" for e in emos]
            lines.append(
                f"| {name} | " + " | ".join(cells) + f" | {sum(x['correct'] for x in rows.values())}/8 |"
            )
        lines += ["", "Confusion (rows: rendered, columns: read):", "", "| | " + " | ".join(emos) + " |"]
        lines.append("|---" * (len(emos) + 1) + "|")
        for e, row in zip(emos, r["confusion"], strict=True):
            lines.append(f"| {e} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", *notes]
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emos = list(facs.EMOTIONS)
    fig, axes = plt.subplots(1, len(NEUTRALS), figsize=(10.5, 4.8))
    for ax, mode in zip(axes, NEUTRALS, strict=True):
        r = result[mode]
        m = np.asarray(r["confusion"])
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(emos)), emos, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(emos)), emos, fontsize=8)
        for i in range(len(emos)):
            for j in range(len(emos)):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8)
        ax.set_xlabel("read back")
        ax.set_ylabel("rendered")
        label = "default portrait's face" if mode == "stand_in" else "the portrait's own photo"
        ax.set_title(f"fitted against {label}: {r['correct']}/{r['clips']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length (the visual window is 2 s)")
    add_portrait_args(ap)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not 2.0 <= args.seconds <= 10.0:
        ap.error("--seconds must lie in 2..10 (the visual window is 2 s; clips are read up to 10 s)")
    args.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result = run(portraits_for(args, tmp, notes), args.size, args.seconds, tmp)
    (args.out / "reference_clips.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_markdown(result, args.out / "reference_clips.md", notes)
    plot(result, args.out / "reference_clips.png")
    scores = ", ".join(f"{m} {result[m]['correct']}/{result[m]['clips']}" for m in NEUTRALS)
    print(f"correct: {scores} ({result['seconds_total']:.0f} s); wrote {args.out}")


if __name__ == "__main__":
    main()

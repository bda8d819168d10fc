"""`stream-avatar eval emotion`: how well the voice's emotion is read, and what it does to the face.

Report (``benchmarks/results/emotion_eval.{json,md}`` + plots):

- audio-only 8-class accuracy and confusion matrix on held-out speakers (``test_speaker``) and the
  held-out language (``test_language``), per synthesizer too. The prediction of an utterance is the
  estimate in force at its last frame (the 2 s window before it, exactly what a stream shows then),
  read with the training prior (uniform, as the balanced test sets are drawn) and, beside it, with
  the model's voice prior (what a stream uses; see ``emotion.inference``). Each held-out speaker is
  one session, utterances in the dataset's order, so a model's speaker baseline
  (``features.SpeakerBaseline``) has heard the speaker's earlier utterances, as a live session has;
  ``accuracy_cold`` reads every utterance as a session's first;
- the discriminator's accuracy on generated motion: the learned driver's mouth + idle life + the
  emotion layer driven by the inferred emotion (``auto``), in 1.6 s windows, against the utterance's
  label; beside it the discriminator on the data engine's own face tracks;
- a linear probe (logistic regression) predicting the speaker from mu on held-out speakers' windows
  (half of each speaker's utterances to fit, half to test), next to chance and to the same probe on
  the window's mean audio tokens (how much speaker information the embedding removed);
- the prototype similarity matrix of the bank (cosine between emotions' mean prototypes; plot);
- on the real-speech set (neutral narration and prompts): the share of frames where a non-neutral
  emotion dominates, with the voice prior (what a stream shows) and with the training prior; every
  clip a session of its own (a cold baseline).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream_avatar.emotion.facs import EMOTIONS
from stream_avatar.emotion.features import SpeakerBaseline
from stream_avatar.emotion.inference import UNIFORM_NEUTRAL, EmotionModel, clip_estimates, prior_with_neutral
from stream_avatar.motion import rig

FPS = 25


def _confusion(y: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    m = np.zeros((len(EMOTIONS), len(EMOTIONS)), np.int64)
    for a, b in zip(y, pred, strict=True):
        m[int(a), int(b)] += 1
    return m.tolist()


def _utterances(data_dirs: Sequence[str | Path], split: str, limit: int) -> list[Any]:
    from stream_avatar.data.synth import read_dataset

    out: list[Any] = []
    for d in data_dirs:
        for utt in read_dataset(d, split):
            if len(out) >= limit:
                return out
            out.append(utt)
    return out


def generated_rigs(
    model: EmotionModel,
    audio: np.ndarray,
    motion_model: Any,
    seed: int = 0,
    spec: str = "auto",
    baseline: SpeakerBaseline | None = None,
) -> np.ndarray:
    """What the engine would show (without pixels) for a clip with emotion ``spec``: (frames, RIG).
    ``baseline``: the session's speaker baseline before the clip (moved on past it; default fresh)."""
    from stream_avatar.emotion.facs import EmotionLayer, parse
    from stream_avatar.motion.idle import IdleLife, combine
    from stream_avatar.motion.learned import LearnedMouthDriver

    estimates = clip_estimates(model, audio, baseline=baseline)
    driver = LearnedMouthDriver(model=motion_model)
    frames = list(driver.push(audio)) + list(driver.flush())
    idle = IdleLife(fps=FPS, seed=seed)
    layer = EmotionLayer(FPS, parse(spec))
    out = []
    for k, f in enumerate(frames[: len(estimates)]):
        layer.set_inferred(estimates[k].weights())
        out.append(layer.apply(combine(np.asarray(f.rig, np.float32), idle.next(bool(f.speaking)))))
    return np.stack(out) if out else np.zeros((0, rig.RIG_SIZE), np.float32)


def _windows(rigs: np.ndarray, length: int, step: int) -> list[np.ndarray]:
    if rigs.shape[0] < length:
        return []
    return [rigs[e - length : e] for e in range(length, rigs.shape[0] + 1, step)]


def evaluate_emotion(
    data_dirs: Sequence[str | Path],
    model_dir: str | Path | None = None,
    *,
    per_split: int = 400,
    real: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from stream_avatar.emotion.features import clip_tokens
    from stream_avatar.motion.learned import MotionModel

    model = EmotionModel.load(model_dir)
    motion = MotionModel.load()
    cfg = model.config
    report: dict[str, Any] = {"emotions": list(EMOTIONS), "window_s": cfg.window_frames / FPS}
    probe_rows: list[tuple[str, np.ndarray, np.ndarray, int]] = []  # speaker, mu, mean tokens, utt
    for split in ("test_speaker", "test_language"):
        utts = _utterances(data_dirs, split, per_split)
        ys, preds, preds_voice, preds_cold, groups = [], [], [], [], []
        uniform = prior_with_neutral(UNIFORM_NEUTRAL)
        disc_gen, disc_track, disc_op = [], [], []
        sessions: dict[str, SpeakerBaseline | None] = {}
        for i, utt in enumerate(utts):
            rec = utt.record
            y = EMOTIONS.index(rec.get("emotion", "neutral"))
            # One session per speaker, its utterances in the dataset's order: the speaker baseline of
            # a model trained with one has heard that speaker's earlier utterances (a live session
            # hears its speaker all along); ``cold`` reads each utterance as a session's first.
            speaker = str(rec["speaker"])
            session = sessions.setdefault(speaker, model.new_baseline())
            before = copy.deepcopy(session)
            est = clip_estimates(model, utt.audio, prior=uniform, baseline=session)
            if not est:
                continue
            cold = est if session is None else clip_estimates(model, utt.audio, prior=uniform)
            ys.append(y)
            preds.append(int(np.argmax(est[-1].probs)))
            preds_cold.append(int(np.argmax(cold[-1].probs)))
            preds_voice.append(int(np.argmax(est[-1].probs * model.voice_prior)))
            groups.append(str(rec.get("synthesizer", "espeak")))
            if split == "test_speaker":
                tokens = clip_tokens(utt.audio)
                n = min(cfg.window_frames, tokens.shape[0])
                probe_rows.append((speaker, est[-1].mu, tokens[-n:].mean(axis=0), i))
            # Discriminator: on generated motion (auto) and on the data engine's face track.
            gen = generated_rigs(model, utt.audio, motion, seed=i, baseline=copy.deepcopy(before))
            for w in _windows(gen, cfg.disc_frames, cfg.disc_frames // 2)[-2:]:
                disc_gen.append((y, w))
            track = np.asarray(utt.targets, np.float32)
            for w in _windows(track, cfg.disc_frames, cfg.disc_frames // 2)[-2:]:
                disc_track.append((y, w))
            # The same pipeline with the true label chosen by an operator (the generator's part alone).
            op_spec = f"{EMOTIONS[y]}:{max(0.3, float(rec.get('intensity', 1.0))):.2f}" if y else "neutral"
            op = generated_rigs(model, utt.audio, motion, seed=i, spec=op_spec, baseline=before)
            for w in _windows(op, cfg.disc_frames, cfg.disc_frames // 2)[-2:]:
                disc_op.append((y, w))
        y_arr, p_arr = np.array(ys), np.array(preds)
        per_synth = {
            g: round(float(np.mean(p_arr[np.array(groups) == g] == y_arr[np.array(groups) == g])), 4)
            for g in sorted(set(groups))
        }
        entry: dict[str, Any] = {
            "utterances": int(y_arr.size),
            "accuracy": round(float(np.mean(p_arr == y_arr)), 4) if y_arr.size else None,
            "accuracy_voice_prior": round(float(np.mean(np.array(preds_voice) == y_arr)), 4)
            if y_arr.size
            else None,
            "accuracy_cold": round(float(np.mean(np.array(preds_cold) == y_arr)), 4) if y_arr.size else None,
            "speaker_baseline": model.baseline_config is not None,
            "per_synthesizer": per_synth,
            "confusion": _confusion(y_arr, p_arr),
        }
        for name, rows in (
            ("discriminator_generated", disc_gen),
            ("discriminator_generated_operator", disc_op),
            ("discriminator_tracks", disc_track),
        ):
            if rows:
                probs = model.discriminate(np.stack([w for _, w in rows]))
                entry[name] = round(float(np.mean(probs.argmax(axis=1) == np.array([y for y, _ in rows]))), 4)
        report[split] = entry
        log(f"{split}: {json.dumps({k: v for k, v in entry.items() if k != 'confusion'})}")
    report["prosody_ceiling"] = _prosody_ceiling(data_dirs)
    log(f"prosody ceiling: {report['prosody_ceiling']}")
    report["speaker_probe"] = _speaker_probe(probe_rows)
    log(f"speaker probe: {report['speaker_probe']}")
    # Operator control through the bank: each label's learned prior, read back by the bank.
    priors = {}
    for name in EMOTIONS[1:]:
        prior = model.operator_estimate({name: 1.0})
        priors[name] = {
            "p": round(float(prior.probs[EMOTIONS.index(name)]), 4),
            "intensity": round(prior.intensity, 3),
        }
    report["operator_priors"] = priors
    protos = model.net.bank.prototypes.detach().numpy().reshape(len(EMOTIONS), cfg.per_emotion, -1)
    means = protos.mean(axis=1)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    report["prototype_similarity"] = np.round(unit @ unit.T, 3).tolist()
    if real:
        report["real_neutral"] = _real_neutral(model)
        log(f"real speech: {report['real_neutral']}")
    report["meta"] = {k: model.meta.get(k) for k in ("train_seconds", "train_utterances", "train_speakers")}
    return report


def _prosody_ceiling(data_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """How much of the label the data's audio can carry at most: a classifier given the very prosody
    parameters each utterance was synthesised with (espeak pitch, range, rate, volume, the intensity and,
    where rendered, the voice quality), fit on train and scored on the held-out splits. Not a model of
    ours: a ceiling."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rows: dict[str, tuple[list[list[float]], list[int]]] = {}
    for d in data_dirs:
        with (Path(d) / "manifest.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                p = r.get("prosody")
                if not p:
                    continue
                x, y = rows.setdefault(r["split"], ([], []))
                vq = r.get("voice_quality") or {}
                x.append(
                    [p["pitch"], p["pitch_range"], p["rate_wpm"], p["volume"], r.get("intensity", 0.0)]
                    + [vq.get(k, 0.0) for k in ("tilt_db", "breath", "tremor", "tension")]
                    + [vq.get("range_factor", 1.0)]
                )
                y.append(EMOTIONS.index(r.get("emotion", "neutral")))
    if "train" not in rows:
        return {}
    clf = HistGradientBoostingClassifier(random_state=0).fit(*rows["train"])
    return {s: round(float(clf.score(*rows[s])), 4) for s in ("test_speaker", "test_language") if s in rows}


def _speaker_probe(rows: list[tuple[str, np.ndarray, np.ndarray, int]]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    speakers = sorted({r[0] for r in rows})
    if len(speakers) < 2:
        return {}
    by: dict[str, list[int]] = {s: [] for s in speakers}
    for j, r in enumerate(rows):
        by[r[0]].append(j)
    train_idx = [j for s in speakers for j in by[s][0::2]]
    test_idx = [j for s in speakers for j in by[s][1::2]]
    y = np.array([speakers.index(r[0]) for r in rows])

    def probe(x: np.ndarray) -> float:
        sc = StandardScaler().fit(x[train_idx])
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(x[train_idx]), y[train_idx])
        return round(float(np.mean(clf.predict(sc.transform(x[test_idx])) == y[test_idx])), 4)

    return {
        "speakers": len(speakers),
        "windows": len(rows),
        "chance": round(1.0 / len(speakers), 4),
        "accuracy_mu": probe(np.stack([r[1] for r in rows])),
        "accuracy_audio_tokens": probe(np.stack([r[2] for r in rows])),
    }


def _real_neutral(model: EmotionModel) -> dict[str, Any]:
    """Frames of the real-speech set (neutral) where a non-neutral emotion dominates, and where the
    face shows one: with the model's voice prior (what a stream does) and with the training prior."""
    from stream_avatar.data import realspeech

    try:
        clips = realspeech.load_clips()
    except realspeech.MissingPackageError as exc:
        return {"skipped": str(exc)}
    out: dict[str, Any] = {"clips": len(clips), "voice_prior_neutral": round(float(model.voice_prior[0]), 4)}
    for key, prior in (("", model.voice_prior), ("_training_prior", prior_with_neutral(UNIFORM_NEUTRAL))):
        frames = non_neutral = shown = 0
        counts = np.zeros(len(EMOTIONS), np.int64)
        for c in clips:
            for e in clip_estimates(model, np.asarray(c.audio16k, np.float32), prior=prior):
                k = int(np.argmax(e.probs))
                counts[k] += 1
                frames += 1
                non_neutral += int(k != 0)
                shown += int(e.shown != 0)
        out["frames"] = frames
        out[f"non_neutral_share{key}"] = round(non_neutral / max(1, frames), 4)
        out[f"shown_non_neutral_share{key}"] = round(shown / max(1, frames), 4)
        out[f"dominant_counts{key}"] = {name: int(n) for name, n in zip(EMOTIONS, counts, strict=True)}
    return out


def write_report(report: dict[str, Any], out_dir: str | Path, name: str = "emotion_eval") -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / f"{name}.json"
    js.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    lines = [
        "# Emotion evaluation",
        "",
        "Audio only, the estimate at each utterance's last frame "
        f"({report['window_s']:.0f} s causal window). One session per held-out speaker, its utterances "
        "in the dataset's order (the model's speaker baseline, where it has one, has heard the "
        "speaker's earlier utterances); 'cold': every utterance read as a session's first.",
        "",
        "| split | utterances | accuracy (training prior) | accuracy (voice prior) | cold (training prior) "
        "| per synthesizer | discriminator on generated motion (auto) "
        "| on generated motion (label as operator) | on face tracks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split in ("test_speaker", "test_language"):
        e = report.get(split)
        if not e:
            continue
        synth = ", ".join(f"{k} {v:.2f}" for k, v in e["per_synthesizer"].items())
        d_gen = e.get("discriminator_generated", float("nan"))
        d_track = e.get("discriminator_tracks", float("nan"))
        d_op = e.get("discriminator_generated_operator", float("nan"))
        acc_voice = e.get("accuracy_voice_prior", float("nan"))
        acc_cold = e.get("accuracy_cold", float("nan"))
        lines.append(
            f"| {split} | {e['utterances']} | {e['accuracy']:.3f} | {acc_voice:.3f} | {acc_cold:.3f} "
            f"| {synth} | {d_gen:.3f} | {d_op:.3f} "
            f"| {d_track:.3f} |"
        )
    c = report.get("prosody_ceiling", {})
    if c:
        lines += [
            "",
            "Ceiling of the data: a gradient-boosted classifier given each utterance's own synthesis "
            "parameters (prosody: pitch, range, rate, volume; intensity; voice quality where rendered: "
            "tilt, breathiness, tremor, tension, pitch-range factor) reaches "
            + ", ".join(f"{k} {v:.3f}" for k, v in c.items())
            + " — the emotions overlap on purpose (every parameter jitters per utterance), and low "
            "intensities sit close to neutral.",
        ]
    pri = report.get("operator_priors", {})
    if pri:
        lines += [
            "",
            "Operator priors read back by the bank (probability of the chosen label, intensity): "
            + ", ".join(f"{k} {v['p']:.3f}/{v['intensity']:.2f}" for k, v in pri.items())
            + ".",
        ]
    p = report.get("speaker_probe", {})
    if p:
        lines += [
            "",
            f"Speaker probe (logistic regression, {p['speakers']} held-out speakers, "
            f"{p['windows']} windows): "
            f"from mu {p['accuracy_mu']:.3f}, chance {p['chance']:.3f}, from the mean audio tokens "
            f"{p['accuracy_audio_tokens']:.3f}.",
        ]
    r = report.get("real_neutral", {})
    if r and "non_neutral_share" in r:
        lines += [
            "",
            f"Real neutral speech ({r['clips']} clips, {r['frames']} frames), with the voice prior "
            f"(neutral {r.get('voice_prior_neutral', 0.125):.2f}; what a stream shows): a non-neutral "
            f"emotion dominates {100 * r['non_neutral_share']:.1f} % of frames ({r['dominant_counts']}); "
            f"the face shows one (confident estimates only) in {100 * r['shown_non_neutral_share']:.1f} %.",
        ]
    if r and "non_neutral_share_training_prior" in r:
        lines += [
            "",
            "The same with the training prior (uniform): a non-neutral emotion dominates "
            f"{100 * r['non_neutral_share_training_prior']:.1f} % of frames "
            f"({r['dominant_counts_training_prior']}); the face shows one in "
            f"{100 * r['shown_non_neutral_share_training_prior']:.1f} %.",
        ]
    for split in ("test_speaker", "test_language"):
        e = report.get(split)
        if not e:
            continue
        lines += ["", f"Confusion ({split}; rows: truth, columns: prediction):", ""]
        lines.append("| | " + " | ".join(EMOTIONS) + " |")
        lines.append("|---" * (len(EMOTIONS) + 1) + "|")
        for label, row in zip(EMOTIONS, e["confusion"], strict=True):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    files = [js, md]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return files
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [("prototype similarity (cosine)", np.array(report["prototype_similarity"]), "coolwarm")]
    for split in ("test_speaker", "test_language"):
        if report.get(split):
            cm = np.array(report[split]["confusion"], np.float64)
            panels.append((f"confusion, {split}", cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), "Blues"))
    for ax, (title, m, cmap) in zip(axes, panels, strict=False):
        im = ax.imshow(m, cmap=cmap, vmin=-1 if cmap == "coolwarm" else 0, vmax=1)
        ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
        ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    png = out / f"{name}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    files.append(png)
    return files

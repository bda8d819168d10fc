"""Expressions that read on the pixels: FACS cues and identity of every emotion on ≥ 5 portraits.

Usage: python benchmarks/bench_expression.py [--size 256] [--sdist PATH] [--out DIR] [--no-download]

Runs ``stream_avatar.eval.expression.evaluate_expressions`` on the portraits below (every emotion at
intensity 1, alone and mid-speech) and writes, under benchmarks/results/:

- expression.json: the evaluation's full output (measures, cues, fitted rig, identity distances);
- expression.md: cue hold rate per emotion × portrait, the overall share and every failed cue; the
  identity distance per emotion (median and max over portraits) beside the different-person
  distances and dlib's 0.6 threshold; where each portrait comes from;
- expression.jpg: a contact sheet, portraits × emotions.

Portraits (all offline once fetched): the default portrait (Eileen Collins, NASA, broad smile), Grace
Hopper (matplotlib's sample data, closed mouth, glasses), the default tone-mapped to a deep skin tone
and a small off-centre copy (``tests/test_portraits.py``'s builders), and two White House portraits
(Barack Obama, broad smile; Joe Biden, closed mouth, full figure) that ship as test images in the
``face_recognition`` 1.3.0 source distribution on PyPI. That archive is fetched with pip into
``~/.cache/stream_avatar/sdists`` unless ``--sdist`` names it (or ``--no-download``: then those two
are left out and the report says so). Identity needs the ``eval`` extra (dlib, face_recognition_models).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/test_portraits.py's builders

from stream_avatar.avatar.store import DEFAULT_AVATAR_IMAGE  # noqa: E402

# The portraits' provenance, recorded as their consent record (enrollment requires one).
BENCH_CONSENT = (
    "expression benchmark: public-domain portraits (NASA, US Navy via matplotlib, White House official "
    "portraits) and images derived from them, for automated evaluation only"
)
from stream_avatar.emotion import facs  # noqa: E402
from stream_avatar.eval.expression import CONDITIONS, SAME_PERSON_THRESHOLD, evaluate_expressions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SHARE = 0.90
SDIST = "face_recognition-1.3.0.tar.gz"
SDIST_IMAGES = {"obama": "obama.jpg", "biden": "biden.jpg"}

PROVENANCE: dict[str, tuple[str, str]] = {
    "default": (
        "Eileen Collins, NASA portrait: the shipped default avatar (models/default_avatar, from "
        "`skimage.data.astronaut()`); broad smile, teeth showing",
        "public domain (US federal government work; scikit-image: no known copyright restrictions)",
    ),
    "hopper": (
        "Grace Hopper, US Navy portrait: matplotlib's sample data `grace_hopper.jpg`; closed mouth, glasses",
        "public domain (US federal government work)",
    ),
    "dark_tone": (
        "the default portrait with its skin tone-mapped to a deep brown (`tests/test_portraits.py` "
        "`_dark_tone`): a stand-in for a darker skin tone, same person",
        "derived from the public-domain default",
    ),
    "small_off_centre": (
        "the default portrait at 1.25x in an 1800x1200 canvas, face ~115 px wide far off-centre "
        "(`tests/test_portraits.py` `_small_off_centre`), same person",
        "derived from the public-domain default",
    ),
    "obama": (
        "Barack Obama, 2012 official White House portrait (Pete Souza): `tests/test_images/obama.jpg` "
        "of the `face_recognition` 1.3.0 sdist on PyPI; broad smile",
        "public domain as a work of a US federal employee (the package itself is MIT and states no "
        "licence for its test photos; the identification of the photo is ours)",
    ),
    "biden": (
        "Joe Biden, official White House photo: `tests/test_images/biden.jpg` of the same sdist; "
        "closed-mouth smile, full figure (a small face in a 970x2204 photo)",
        "public domain as a work of a US federal employee (same caveat as above)",
    ),
}
PEOPLE = {
    "default": "collins",
    "dark_tone": "collins",
    "small_off_centre": "collins",
    "hopper": "hopper",
    "obama": "obama",
    "biden": "biden",
}


def _sdist(path: Path | None, download: bool) -> Path | None:
    if path is not None:
        return path
    cache = Path.home() / ".cache" / "stream_avatar" / "sdists"
    if (cache / SDIST).is_file() or not download:
        return cache / SDIST if (cache / SDIST).is_file() else None
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["face_recognition==1.3.0", "-d", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not (cache / SDIST).is_file():
        print(f"could not fetch {SDIST}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return cache / SDIST


def build_portraits(tmp: Path, sdist: Path | None) -> dict[str, Path]:
    """name → photo file, in PROVENANCE's order."""
    from tests import test_portraits as tp

    out = {
        "default": DEFAULT_AVATAR_IMAGE,
        "hopper": tp._hopper(tmp),
        "dark_tone": tp._dark_tone(tmp),
        "small_off_centre": tp._small_off_centre(tmp),
    }
    if sdist is not None:
        with tarfile.open(sdist) as tar:
            for name, member in SDIST_IMAGES.items():
                fh = tar.extractfile(f"face_recognition-1.3.0/tests/test_images/{member}")
                assert fh is not None, member
                (tmp / member).write_bytes(fh.read())
                out[name] = tmp / member
    return out


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _hold_table(result: dict[str, Any], key: str) -> list[str]:
    """Markdown rows: emotion × portrait, held/cues over both conditions."""
    names = list(result["portraits"])
    lines = ["| emotion | " + " | ".join(names) + " | all |", "|---" * (len(names) + 2) + "|"]
    for emotion in facs.EMOTIONS:
        if emotion == "neutral":
            continue
        cells, tot, held = [], 0, 0
        for p in names:
            cues = [
                c
                for cond in CONDITIONS
                for c in (result["portraits"][p]["conditions"][cond][emotion][key] or ())
            ]
            h = sum(c["holds"] for c in cues)
            cells.append(f"{h}/{len(cues)}")
            tot, held = tot + len(cues), held + h
        lines.append(f"| {emotion} | " + " | ".join(cells) + f" | {held}/{tot} ({held / tot:.0%}) |")
    return lines


def write_markdown(result: dict[str, Any], path: Path, notes: list[str]) -> None:
    s, sf = result["summary"], result["summary_flow"]
    cfg = result["config"]
    lines = [
        "# Expressions on the pixels: FACS cues and identity",
        "",
        "Generated by `python benchmarks/bench_expression.py` (module `stream_avatar.eval.expression`).",
        f"Avatar size {cfg['size']} px; every emotion at intensity 1, alone (`expression`) and mid-speech "
        f"(`speech`: the emotion blended with {cfg['speech_rig']}, against the neutral mid-speech render). "
        f"A cue holds when its landmark displacement against the neutral render has the FACS sign and "
        f"exceeds {cfg['threshold_face_widths']} face widths (face width = the neutral render's face-oval "
        "width, ~77 px at 256; 0.01 ≈ 0.8 px).",
        "",
        f"**Overall (Face Mesh re-detection): {s['held']}/{s['cues']} cues hold = {s['share']:.1%}** "
        f"(target ≥ {TARGET_SHARE:.0%}: {'met' if s['share'] >= TARGET_SHARE else 'NOT met'}).  ",
        f"Second instrument, the same measures on optical-flow-tracked landmarks: "
        f"{sf['held']}/{sf['cues']} = {sf['share']:.1%}.",
        "",
        *notes,
        "",
        "## Cue hold rate per emotion × portrait (Face Mesh; both conditions)",
        "",
        *_hold_table(result, "cues"),
        "",
        "## The same with optical flow (pixels' own motion sampled at the neutral landmarks)",
        "",
        *_hold_table(result, "cues_flow"),
        "",
        "## Cues per emotion (FACS prototype → measure, expected sign)",
        "",
        "| emotion | cues |",
        "|---|---|",
    ]
    for emotion, cues in result["cues"].items():
        if cues:
            lines.append(
                f"| {emotion} | " + ", ".join(f"AU{c['au']}: {c['measure']} {c['sign']}" for c in cues) + " |"
            )
    lines += ["", "Measures: " + "; ".join(f"`{k}` {v}" for k, v in result["measures"].items()) + ".", ""]
    lines += [
        "## Failures by cue (portraits × conditions), and whether optical flow sees the movement",
        "",
        "| emotion | AU | measure | Face Mesh fails | of those, flow also fails |",
        "|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, str], list[bool]] = {}
    for f in s["failures"]:
        rec = result["portraits"][f["portrait"]]["conditions"][f["condition"]][f["emotion"]]
        flow_cue = next(
            (c for c in rec["cues_flow"] or () if c["au"] == f["au"] and c["measure"] == f["measure"]), None
        )
        groups.setdefault((f["emotion"], f["au"], f["measure"]), []).append(
            flow_cue is None or not flow_cue["holds"]
        )
    n_frames = len(result["portraits"]) * len(CONDITIONS)
    for (emotion, au, name), flow_fails in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {emotion} | {au} | {name} | {len(flow_fails)}/{n_frames} | {sum(flow_fails)} |")
    lines += [
        "",
        "## Failed cues (Face Mesh), value in face widths",
        "",
        "| portrait | condition | emotion | AU | measure | expected | value | flow value |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in s["failures"]:
        rec = result["portraits"][f["portrait"]]["conditions"][f["condition"]][f["emotion"]]
        flow = next(
            (
                c["value"]
                for c in rec["cues_flow"] or ()
                if c["au"] == f["au"] and c["measure"] == f["measure"]
            ),
            None,
        )
        lines.append(
            f"| {f['portrait']} | {f['condition']} | {f['emotion']} | {f['au']} | {f['measure']} | "
            f"{f['sign']} | {_fmt(f['value'], 4)} | {_fmt(flow, 4)} |"
        )
    ident = result["identity"]
    lines += ["", "## Identity (dlib ResNet face descriptor, Euclidean distance to the original photo)", ""]
    if ident is None:
        lines.append(
            "Not measured: dlib / face_recognition_models are not installed (`pip install '.[eval]'`)."
        )
    else:
        lines += [
            f"dlib's same-person threshold: {SAME_PERSON_THRESHOLD}. The enrolled crop itself (resampled, "
            f"no expression) is at median {_fmt(ident['crop_median'])} from its photo.",
            "",
            "| emotion | expression median | expression max | mid-speech median | mid-speech max |",
            "|---|---|---|---|---|",
        ]
        for emotion in facs.EMOTIONS:
            e, sp = ident["per_emotion"][f"expression/{emotion}"], ident["per_emotion"][f"speech/{emotion}"]
            lines.append(
                f"| {emotion} | {_fmt(e['median'])} | {_fmt(e['max'])} | "
                f"{_fmt(sp['median'])} | {_fmt(sp['max'])} |"
            )
        lines += [
            "",
            f"Different people (original photos): min {_fmt(ident['different_person_min'])}, median "
            f"{_fmt(ident['different_person_median'])}.",
            "",
            "| photo A | photo B | same person | distance |",
            "|---|---|---|---|",
        ]
        for pair in ident["pairs"]:
            lines.append(
                f"| {pair['a']} | {pair['b']} | {'yes' if pair['same_person'] else 'no'} | "
                f"{_fmt(pair['distance'])} |"
            )
        lines += ["", "Per portrait (max over emotions and conditions):", ""]
        for name, p in result["portraits"].items():
            ds = [
                r["identity"]
                for c in p["conditions"].values()
                for r in c.values()
                if r["identity"] is not None
            ]
            lines.append(f"- {name}: max {_fmt(max(ds) if ds else None)}")
    lines += ["", "## Portraits", "", "| name | what | licence |", "|---|---|---|"]
    for name in result["portraits"]:
        what, lic = PROVENANCE[name]
        lines.append(f"| {name} | {what} | {lic} |")
    t = result["timing_s"]
    lines += ["", "Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + " (CPU).", ""]
    path.write_text("\n".join(lines))


def contact_sheet(result: dict[str, Any], frames_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    names = list(result["portraits"])
    emotions = list(facs.EMOTIONS)
    fig, axes = plt.subplots(len(names), len(emotions), figsize=(1.6 * len(emotions), 1.75 * len(names)))
    axes = np.atleast_2d(axes)
    for i, name in enumerate(names):
        for j, emotion in enumerate(emotions):
            ax = axes[i, j]
            img = np.asarray(Image.open(frames_dir / name / f"expression_{emotion}.png"))
            h, w = img.shape[:2]
            ax.imshow(img[int(0.15 * h) : int(0.75 * h), int(0.2 * w) : int(0.8 * w)])  # the face
            ax.set_xticks([])
            ax.set_yticks([])
            rec = result["portraits"][name]["conditions"]["expression"][emotion]
            cues = rec["cues"]
            label = f"{sum(c['holds'] for c in cues)}/{len(cues)}" if cues else ""
            if rec["identity"] is not None:
                label += f"  d={rec['identity']:.2f}"
            ax.set_xlabel(label, fontsize=7)
            if i == 0:
                ax.set_title(emotion, fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("Emotions at intensity 1 (cues held / cues, identity distance to the photo)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, pil_kwargs={"quality": 85})
    plt.close(fig)


def add_portrait_args(ap: argparse.ArgumentParser) -> None:
    """The portrait options this benchmark and ``bench_reference.py`` share."""
    ap.add_argument("--sdist", type=Path, default=None, help=f"path to {SDIST} (Obama and Biden photos)")
    ap.add_argument("--no-download", action="store_true", help="do not fetch the sdist with pip")


def portraits_for(args: argparse.Namespace, tmp: Path, notes: list[str]) -> dict[str, Path]:
    """The portraits under ``tmp`` (``build_portraits``); a note when the sdist's two are left out."""
    sdist = _sdist(args.sdist, download=not args.no_download)
    if sdist is None:
        notes.append(f"Note: {SDIST} was not available, so the Obama and Biden portraits are left out.")
    return build_portraits(tmp, sdist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    add_portrait_args(ap)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        portraits = portraits_for(args, tmp, notes)
        people = {k: v for k, v in PEOPLE.items() if k in portraits}
        result = evaluate_expressions(
            portraits, size=args.size, out_dir=tmp / "eval", people=people, consent=BENCH_CONSENT
        )
        if result["identity"] is None:
            notes.append("Note: dlib is not installed; identity was not measured.")
        for p in result["portraits"].values():
            p["source"] = Path(p["source"]).name  # no temp paths in the stored results
        (args.out / "expression.json").write_text(json.dumps(result, indent=1) + "\n")
        write_markdown(result, args.out / "expression.md", notes)
        contact_sheet(result, tmp / "eval", args.out / "expression.jpg")
    s = result["summary"]
    print(f"cues held {s['held']}/{s['cues']} = {s['share']:.1%}; flow {result['summary_flow']['share']:.1%}")
    for name, v in s["per_emotion"].items():
        print(f"  {name:10s} {v['held']}/{v['cues']}")
    if result["identity"]:
        print(f"identity: different-person min {result['identity']['different_person_min']:.3f}")
    print(f"wrote {args.out / 'expression.md'} ({result['timing_s']['total']:.0f} s)")


if __name__ == "__main__":
    main()

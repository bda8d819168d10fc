"""The ``stream-avatar`` command line (also ``python -m stream_avatar``).

    stream-avatar enroll IMAGE --consent TEXT | --consent-file PATH [--size 512] [--store DIR]
                                                                   prints the avatar id
    stream-avatar avatars list [--store DIR] [--json]              enrolled avatars and their consent
    stream-avatar render --audio WAV --out MP4 [--avatar IMAGE_OR_ID] [--size 512]
                         [--rig-out RIG.jsonl] [--driver learned|dsp] [--store DIR]
    stream-avatar serve [--host 127.0.0.1] [--port 8080] [--avatar IMAGE_OR_ID] [--size 512] ...
    stream-avatar run                                              `serve` with the defaults (make run)
    stream-avatar demo [--text TEXT]                               renders a spoken demo to ./out/demo.mp4
    stream-avatar data synth --hours H --out DIR                   synthetic phone-aligned training speech
    stream-avatar data prompts --out DIR                           real recorded prompts, force-aligned
    stream-avatar train motion --data DIR [--out models/motion]    trains the learned driver (resumable)
    stream-avatar train emotion --data DIR [--out models/emotion]  trains the emotion stage (resumable)
    stream-avatar eval motion [--data DIR]                         lip-sync report in benchmarks/results/
    stream-avatar eval emotion --data DIR                          emotion report in benchmarks/results/
    stream-avatar verify FILE [--avatar-id ID] [--instance-id X]   watermark + provenance of a file/frame
    stream-avatar review FILE --by NAME [--note TEXT]              mark a render as reviewed

Global options: ``-v`` (info logs; ``-vv`` debug), ``--config FILE`` (TOML, see stream_avatar.config).
User errors (bad audio, bad image, bad settings, missing files) print one line ``error: ...`` on stderr
and exit with status 2; tracebacks are only for bugs (and shown for user errors with ``-vv``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stream_avatar.config import DISCLOSURE_POSITIONS, Config, ConfigError, load_config

logger = logging.getLogger("stream_avatar.cli")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEMO_TEXT = (
    "Hello! I am a streaming avatar. I turn speech into lip motion, one frame at a time, "
    "as the audio arrives."
)
DEMO_OUT = Path("out") / "demo.mp4"


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-avatar", description="Real-time talking-portrait engine: audio in, talking avatar out."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info logs, -vv debug")
    parser.add_argument("--config", metavar="FILE", help="TOML settings (default: $STREAM_AVATAR_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--size", type=int, default=None, help="avatar size in pixels, even (default 512)")
        p.add_argument("--store", metavar="DIR", default=None, help="avatar store (default: user data dir)")
        consent = p.add_mutually_exclusive_group()
        consent.add_argument(
            "--consent",
            default=None,
            metavar="TEXT",
            help="consent record for a portrait enrolled by this command: who agreed, when, for what "
            "(required to enroll a photo)",
        )
        consent.add_argument(
            "--consent-file", default=None, metavar="PATH", help="the consent record as a text or JSON file"
        )

    def add_render_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--emotion",
            default=None,
            metavar="NAME[:INTENSITY]",
            help="the emotion: auto (inferred from the voice; the default) or neutral, happy, sad, angry, "
            "fear, disgusted, surprised, contempt, with an intensity 0-1 (default 1); terms join with +. "
            "E.g. auto, happy:0.7, happy:0.5+surprised:0.3, auto+happy:0.3 (the voice's emotion with "
            "some happy mixed in), auto:0.5 (the voice's emotion at half strength)",
        )
        p.add_argument(
            "--emotion-prior-neutral",
            type=float,
            default=None,
            metavar="P",
            help="with auto: the prior share of neutral the voice's emotion is read with, 0 < P < 1 "
            "(default: the emotion model's, 0.5; 0.125 weighs every emotion alike)",
        )
        p.add_argument(
            "--emotion-ref",
            default=None,
            metavar="CLIP",
            help="take the emotion from a short face video (face mesh → rig → the emotion model's visual "
            "branch) instead of --emotion",
        )
        p.add_argument(
            "--emotion-ref-neutral",
            default=None,
            metavar="IMAGE",
            help="with --emotion-ref: a photo of the clip's person at rest, to read their expression "
            "against (default: the default portrait's face, against which a stranger's resting face "
            "reads as an expression)",
        )
        p.add_argument(
            "--driver", default=None, choices=("learned", "dsp"), help="motion driver (default learned)"
        )
        p.add_argument("--device", default=None, help="render device: auto, cpu, cuda (default auto)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument(
            "--no-disclosure",
            dest="disclosure",
            action="store_const",
            const=False,
            default=None,
            help='leave out the visible "AI-generated" badge (logged as a warning: disclosure.enabled)',
        )
        p.add_argument("--disclosure-text", default=None, help='the badge\'s label (default "AI-generated")')
        p.add_argument(
            "--disclosure-position",
            default=None,
            choices=DISCLOSURE_POSITIONS,
            help="the badge's corner (default bottom-right)",
        )
        p.add_argument("--disclosure-opacity", type=float, default=None, help="0.2-1 (default 0.85)")
        p.add_argument(
            "--allow-unconsented-avatars",
            action="store_const",
            const=True,
            default=None,
            help="also use avatars stored without a consent record (default: refused)",
        )
        p.add_argument(
            "--audit-log", default=None, metavar="JSONL", help="audit log (default: audit.jsonl by the store)"
        )
        p.add_argument(
            "--no-watermark",
            dest="watermark",
            action="store_const",
            const=False,
            default=None,
            help="leave out the invisible watermark (logged as a warning: watermark.enabled)",
        )
        p.add_argument(
            "--instance-id", default=None, help="this instance's name in the watermark (default: host name)"
        )

    enroll = sub.add_parser(
        "enroll", help="enroll a portrait photo with its consent record (--consent); prints the avatar id"
    )
    enroll.add_argument("image", metavar="IMAGE", help="portrait photo (jpg, png, ...)")
    add_common(enroll)

    avatars = sub.add_parser("avatars", help="the avatar store: list enrolled avatars and their consent")
    avatars_sub = avatars.add_subparsers(dest="avatars_command", required=True, metavar="ACTION")
    av_list = avatars_sub.add_parser("list", help="one line per avatar: id, size, source, consent record")
    av_list.add_argument("--store", metavar="DIR", default=None, help="avatar store (default: user data dir)")
    av_list.add_argument("--json", action="store_true", help="one JSON object per avatar (its meta.json)")

    render = sub.add_parser("render", help="render an audio file with an avatar to an MP4")
    source = render.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", metavar="WAV", help="speech (wav, mp3, m4a, ogg, flac)")
    source.add_argument(
        "--script",
        metavar="TOML",
        help="a presenter script: segments of audio files, espeak-ng text and pauses, each with its emotion",
    )
    render.add_argument("--out", required=True, metavar="MP4", help="output video file")
    render.add_argument("--avatar", default=None, metavar="IMAGE_OR_ID", help="image or avatar id")
    render.add_argument("--rig-out", default=None, metavar="RIG.jsonl", help="per-frame rigs as JSONL")
    _add_c2pa_args(render)
    add_common(render)
    add_render_opts(render)

    for name, text in (
        ("serve", "start the WebRTC server: open the printed address, allow the microphone, speak"),
        ("run", "the same as serve (what `make run` starts)"),
    ):
        server = sub.add_parser(name, help=text)
        server.add_argument(
            "--host", default=None, help="address to bind (default 127.0.0.1: this machine only)"
        )
        server.add_argument("--port", type=int, default=None, help="port (default 8080)")
        server.add_argument("--avatar", default=None, metavar="IMAGE_OR_ID", help="image or avatar id")
        server.add_argument("--latency-budget-ms", type=int, default=None, help="playout budget (default 80)")
        server.add_argument("--max-sessions", type=int, default=None, help="concurrent sessions (default 4)")
        server.add_argument(
            "--bearer-token",
            default=None,
            metavar="TOKEN",
            help="WHIP/WHEP requests must carry Authorization: Bearer TOKEN (16+ characters; prefer the "
            "env STREAM_AVATAR_BEARER_TOKEN: a flag shows in the process list)",
        )
        server.add_argument(
            "--cors-origin",
            action="append",
            default=None,
            metavar="ORIGIN",
            help="a web origin (https://app.example.com) whose pages may use WHIP/WHEP across origins "
            "(repeat for more; default: same origin only)",
        )
        add_common(server)
        add_render_opts(server)

    sheet = sub.add_parser(
        "sheet", help="contact sheet of an avatar: emotions, mouth shapes, blink, head poses"
    )
    sheet.add_argument("--avatar", default=None, metavar="IMAGE_OR_ID", help="image or avatar id")
    sheet.add_argument("--out", required=True, metavar="IMAGE", help="output image (.png or .jpg)")
    sheet.add_argument("--cell", type=int, default=224, help="cell size in pixels (default 224)")
    sheet.add_argument("--device", default=None, help="render device: auto, cpu, cuda (default auto)")
    add_common(sheet)

    data = sub.add_parser("data", help="training data: synthesize a dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser("synth", help="phoneme-aligned emotional speech with rig targets (espeak-ng)")
    synth.add_argument("--hours", type=float, required=True, help="hours of audio to generate")
    synth.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    synth.add_argument("--seed", type=int, default=0, help="the same seed gives the same dataset")
    synth.add_argument(
        "--languages",
        default=None,
        help="comma-separated espeak-ng languages (default en,es,fr,de,hi,ar,ja,cmn)",
    )
    synth.add_argument(
        "--holdout-language",
        default=None,
        help="a language kept out of training (default hi when present), or none",
    )
    synth.add_argument("--speakers-per-language", type=int, default=10)
    synth.add_argument(
        "--text-language",
        default=None,
        help="every speaker reads this language's sentences (e.g. en: Festival's Italian, Catalan, "
        "Czech, Finnish, Russian voices read English with their own rules; labels stay exact)",
    )
    synth.add_argument(
        "--synthesizers",
        default=None,
        help="comma-separated: espeak, festival, flite (default: espeak + those installed)",
    )
    synth.add_argument(
        "--voice-quality",
        action="store_true",
        help="also render each emotion's voice quality (tilt, breathiness, tremor, tension): emotion data",
    )
    synth.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    synth.add_argument("--no-augment", action="store_true", help="clean audio only")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")

    pr = data_sub.add_parser(
        "prompts", help="real recorded prompts (Asterisk's US English voice), force-aligned, as a dataset"
    )
    pr.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    pr.add_argument("--source", default="asterisk-en", help="recordings to use (default asterisk-en)")
    pr.add_argument("--copies", type=int, default=4, help="the recording plus N-1 speaker warps (default 4)")
    pr.add_argument("--seed", type=int, default=0, help="the same seed gives the same dataset")
    pr.add_argument("--limit", type=int, default=0, help="use only the first N usable prompts (0: all)")
    pr.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    pr.add_argument("--no-augment", action="store_true", help="no augmentation chain")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")

    corpus = data_sub.add_parser("corpus", help="read a CREMA-D / RAVDESS / MEAD folder: labels and splits")
    corpus.add_argument("root", metavar="DIR", help="the extracted corpus (its published layout)")
    corpus.add_argument(
        "--kind", choices=("crema-d", "ravdess", "mead"), default=None, help="default: detect"
    )
    corpus.add_argument(
        "--out", metavar="JSONL", default=None, help="write one line per item, with its split"
    )
    corpus.add_argument("--seed", type=int, default=0, help="speaker split seed")

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="MODEL")
    tm = train_sub.add_parser("motion", help="the learned audio-to-motion driver (resumable)")
    tm.add_argument(
        "--data", required=True, nargs="+", metavar="DIR", help="dataset(s) from `stream-avatar data synth`"
    )
    tm.add_argument("--out", default="models/motion", metavar="DIR", help="model folder (default: shipped)")
    tm.add_argument("--steps", type=int, default=None, help="optimizer steps (default 4000)")
    tm.add_argument("--batch", type=int, default=None, help="streams per batch (default 24)")
    tm.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    tm.add_argument("--seed", type=int, default=0, help="the same seed and data give the same model")
    tm.add_argument("--channels", type=int, default=None, help="network width (default 128)")
    tm.add_argument(
        "--lookahead-ms", type=int, default=None, help="audio heard past each frame, 0-40 ms (default 40)"
    )
    tm.add_argument(
        "--peak-decay-db",
        type=float,
        default=None,
        metavar="DB_PER_S",
        help="level normaliser's peak decay, dB/s (default 4)",
    )
    tm.add_argument(
        "--peak-attack",
        type=float,
        default=None,
        help="level normaliser's peak attack, share of the gap closed per 10 ms row (default 0.3)",
    )
    tm.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out and start over")
    tm.add_argument("--eval-every", type=int, default=None, help="validate every N steps (default 500)")
    tm.add_argument(
        "--babble-p", type=float, default=None, help="share of streams with babble mixed in (default 0.5)"
    )
    tm.add_argument(
        "--babble-talkers", type=int, default=None, help="at most this many babbling talkers (default 4)"
    )
    tm.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    tm.add_argument("--no-progress", action="store_true", help="no progress bar")

    te = train_sub.add_parser("emotion", help="the emotion embedder, bank and discriminator (resumable)")
    te.add_argument(
        "--data", required=True, nargs="+", metavar="DIR", help="dataset(s) from `stream-avatar data synth`"
    )
    te.add_argument(
        "--corpus",
        nargs="+",
        default=[],
        metavar="ROOT",
        help="also train on CREMA-D / RAVDESS / MEAD folders you have (audio; see `data corpus`)",
    )
    te.add_argument("--out", default="models/emotion", metavar="DIR", help="model folder (default: shipped)")
    te.add_argument("--steps", type=int, default=None, help="embedder + bank steps (default 2500)")
    te.add_argument("--disc-steps", type=int, default=None, help="discriminator steps first (default 600)")
    te.add_argument("--batch", type=int, default=None, help="windows per batch (default 64)")
    te.add_argument("--seed", type=int, default=0, help="the same seed and data give the same model")
    te.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out and start over")
    te.add_argument("--eval-every", type=int, default=None, help="validate every N steps (default 500)")
    te.add_argument(
        "--baseline-frames",
        type=float,
        default=None,
        metavar="N",
        help="the population's weight in the speaker baseline, in voiced frames (default 250; 0: none)",
    )
    te.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    te.add_argument("--no-progress", action="store_true", help="no progress bar")
    te.add_argument(
        "--fitter-response",
        default=None,
        metavar="FILE",
        help="use this measured fitter response (safetensors) instead of measuring one",
    )

    ev = sub.add_parser("eval", help="evaluate a model; writes JSON, markdown and plots")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="MODEL")
    em = ev_sub.add_parser("motion", help="lip-sync r of learned vs DSP vs offline phone recognizer")
    em.add_argument("--model", default=None, metavar="DIR", help="model folder (default: shipped)")
    em.add_argument(
        "--data", default=None, nargs="+", metavar="DIR", help="synthetic dataset(s) for held-out splits"
    )
    em.add_argument("--out", default="benchmarks/results", metavar="DIR", help="report folder")
    em.add_argument("--per-group", type=int, default=40, help="utterances per split and synthesizer")
    em.add_argument("--no-real", action="store_true", help="skip the real-speech set")
    em.add_argument("--no-allphone", action="store_true", help="skip the pocketsphinx baseline")

    ee = ev_sub.add_parser("emotion", help="emotion accuracy, discriminator, speaker probe, real speech")
    ee.add_argument("--data", required=True, nargs="+", metavar="DIR", help="synthetic dataset(s)")
    ee.add_argument("--model", default=None, metavar="DIR", help="model folder (default: shipped)")
    ee.add_argument("--out", default="benchmarks/results", metavar="DIR", help="report folder")
    ee.add_argument("--per-split", type=int, default=400, help="utterances per held-out split")
    ee.add_argument("--no-real", action="store_true", help="skip the real-speech set")

    verify = sub.add_parser(
        "verify", help="read the invisible watermark and the provenance of a recording (MP4/WebM) or frame"
    )
    verify.add_argument("file", metavar="FILE", help="a video (MP4, WebM, ...) or an image (PNG, JPEG, ...)")
    verify.add_argument("--avatar-id", default=None, help="also say whether the mark matches this avatar id")
    verify.add_argument("--instance-id", default=None, help="also say whether it matches this instance")
    verify.add_argument("--json", action="store_true", help="the whole report as JSON")

    review = sub.add_parser("review", help="mark a rendered file as reviewed (added to its provenance)")
    review.add_argument("file", metavar="MP4", help="a file made by `stream-avatar render` or `demo`")
    review.add_argument("--by", required=True, metavar="NAME", help="the reviewer")
    review.add_argument("--note", default=None, help="what was checked, or a decision")
    _add_c2pa_args(review)

    demo = sub.add_parser("demo", help="render a spoken demo sentence (espeak-ng) to ./out/demo.mp4")
    demo.add_argument("--text", default=DEMO_TEXT, help="sentence to speak")
    demo.add_argument("--avatar", default=None, metavar="IMAGE_OR_ID", help="image or avatar id")
    add_common(demo)
    add_render_opts(demo)
    return parser


def _add_c2pa_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--c2pa-cert",
        default=None,
        metavar="PEM",
        help="sign a C2PA manifest with this PEM certificate chain (needs c2pa-python; "
        "env STREAM_AVATAR_C2PA_CERT)",
    )
    p.add_argument(
        "--c2pa-key", default=None, metavar="PEM", help="the signing key (env STREAM_AVATAR_C2PA_KEY)"
    )


def _signing(args: argparse.Namespace) -> Any:
    from stream_avatar.provenance.record import SigningConfig

    return SigningConfig.from_args(getattr(args, "c2pa_cert", None), getattr(args, "c2pa_key", None))


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "size": getattr(args, "size", None),
        "store_dir": getattr(args, "store", None),
        "avatar": getattr(args, "avatar", None),
        "driver": getattr(args, "driver", None),
        "emotion": getattr(args, "emotion", None),
        "emotion_prior_neutral": getattr(args, "emotion_prior_neutral", None),
        "device": getattr(args, "device", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "latency_budget_ms": getattr(args, "latency_budget_ms", None),
        "max_sessions": getattr(args, "max_sessions", None),
        "bearer_token": getattr(args, "bearer_token", None),
        "cors_origins": getattr(args, "cors_origin", None),
        "disclosure": getattr(args, "disclosure", None),
        "disclosure_text": getattr(args, "disclosure_text", None),
        "disclosure_position": getattr(args, "disclosure_position", None),
        "disclosure_opacity": getattr(args, "disclosure_opacity", None),
        "allow_unconsented_avatars": getattr(args, "allow_unconsented_avatars", None),
        "audit_log": getattr(args, "audit_log", None),
        "watermark": getattr(args, "watermark", None),
        # verify's --instance-id is a name to check against, not this instance's setting
        "instance_id": None if args.command == "verify" else getattr(args, "instance_id", None),
    }
    ref = getattr(args, "emotion_ref", None)
    ref_neutral = getattr(args, "emotion_ref_neutral", None)
    if ref_neutral is not None and ref is None:
        raise UserError("--emotion-ref-neutral needs --emotion-ref CLIP")
    if ref is not None:
        from stream_avatar.capture.reference import ReferenceError, clip_emotion
        from stream_avatar.emotion.facs import format_spec

        try:
            weights = clip_emotion(ref, neutral_image=ref_neutral)
        except ReferenceError as exc:
            raise UserError(f"--emotion-ref: {exc}") from None
        logging.getLogger(__name__).info(
            "emotion from reference clip", extra={"emotion": format_spec(weights)}
        )
        print(f"emotion from {Path(ref).name}: {format_spec(weights)}", file=sys.stderr)
        overrides["emotion"] = format_spec(weights)
    return load_config(overrides, config_path=args.config)


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _consent(args: argparse.Namespace) -> dict[str, Any] | None:
    """The consent record from ``--consent`` / ``--consent-file``, or None when neither is given."""
    from stream_avatar.avatar.consent import make_record, read_consent_file

    if getattr(args, "consent_file", None) is not None:
        return read_consent_file(args.consent_file)
    if getattr(args, "consent", None) is not None:
        return make_record(args.consent, source="--consent")
    return None


def cmd_enroll(args: argparse.Namespace, cfg: Config) -> int:
    from stream_avatar.avatar.store import AvatarStore

    avatar = AvatarStore(cfg.avatar.store_dir).enroll(
        args.image, size=cfg.avatar.size, consent=_consent(args)
    )
    print(avatar.id)
    return 0


def cmd_avatars(args: argparse.Namespace, cfg: Config) -> int:
    import json

    from stream_avatar.avatar.consent import summary
    from stream_avatar.avatar.store import AvatarStore

    store = AvatarStore(cfg.avatar.store_dir)
    entries = store.entries()
    if args.json:
        for meta in entries:
            print(json.dumps(meta, ensure_ascii=False))
        return 0
    if not entries:
        print(f"no avatars in {store.root}", file=sys.stderr)
        return 0
    print(f"{'ID':<16}  {'SIZE':>4}  {'SOURCE':<24}  CONSENT")
    for meta in entries:
        source = str(meta.get("source_name") or "-")
        source = source if len(source) <= 24 else source[:23] + "…"
        consent = "DAMAGED entry" if meta.get("damaged") else summary(meta.get("consent"))
        print(f"{meta['id']:<16}  {meta.get('size', '-')!s:>4}  {source:<24}  {consent}")
    return 0


def _render(
    audio: Path | str | None,
    out: Path,
    cfg: Config,
    rig_out: str | None,
    progress: bool,
    script: str | None = None,
    consent: dict[str, Any] | None = None,
    signing: Any = None,
) -> Path:
    from stream_avatar.offline import render_file

    result = render_file(
        audio,
        out,
        script=script,
        avatar=cfg.avatar.spec,
        driver_name=cfg.engine.driver,
        size=cfg.avatar.size,
        rig_out=rig_out,
        progress=progress,
        emotion=cfg.engine.emotion_weights,
        emotion_prior_neutral=cfg.engine.emotion_prior_neutral,
        store_dir=cfg.avatar.store_dir,
        device=cfg.engine.device,
        fps=cfg.engine.fps,
        max_buffer_s=cfg.engine.max_buffer_s,
        consent=consent,
        allow_unconsented_avatars=cfg.avatar.allow_unconsented_avatars,
        disclosure=cfg.disclosure,
        audit_log=cfg.audit.path,
        watermark=cfg.watermark,
        signing=signing,
    )
    print(
        f"rendered {result.frames} frames ({result.duration_s:.2f} s) in {result.wall_s:.1f} s, "
        f"{result.frames_per_s:.1f} frames/s",
        file=sys.stderr,
    )
    return result.path.resolve()


def cmd_render(args: argparse.Namespace, cfg: Config) -> int:
    path = _render(
        args.audio,
        Path(args.out),
        cfg,
        args.rig_out,
        _progress(args),
        script=args.script,
        consent=_consent(args),
        signing=_signing(args),
    )
    print(path)
    return 0


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    """Watermark (``provenance.watermark``) + provenance record and C2PA manifest (``provenance.record``)."""
    import json

    from stream_avatar.provenance import record as provenance
    from stream_avatar.provenance.watermark import format_report, verify_file

    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        report = verify_file(path, instance_id=args.instance_id, avatar_id=args.avatar_id)
    except av_errors() as exc:
        raise UserError(f"cannot read {path} as an image or a video: {exc}") from None
    report["provenance"] = provenance.read_record(path)
    report["c2pa"] = provenance.read_c2pa(path)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
        return 0
    print(format_report(report))
    rec = report["provenance"]
    if rec is None:
        print("  provenance: no stream_avatar record in the file's metadata")
    else:
        print(
            f"  provenance: {rec.get('generator')} {rec.get('version')}, avatar {rec.get('avatar_id')}, "
            f"emotion {rec.get('emotion')}, made {rec.get('created')}"
        )
        reviews = rec.get("reviews") or []
        if not reviews:
            print("  reviewed: no")
        for r in reviews:
            note = f": {r['note']}" if r.get("note") else ""
            print(f"  reviewed by {r.get('by')} at {r.get('at')}{note}")
    c2 = report["c2pa"]
    if c2 is not None:
        signer = f", signed by {c2['signer']}" if c2.get("signer") else ""
        print(f"  C2PA manifest: {c2['validation_state']}{signer}, {len(c2['reviews'])} signed review(s)")
    elif provenance.c2pa_available():
        print("  C2PA manifest: none")
    return 0


def av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, ValueError)


def cmd_review(args: argparse.Namespace, cfg: Config) -> int:
    from stream_avatar.provenance.record import review_file

    rec = review_file(args.file, args.by, args.note, signing=_signing(args))
    last = rec["reviews"][-1]
    print(f"{Path(args.file).resolve()}: reviewed by {last['by']} at {last['at']}")
    return 0


def synthesize_demo(text: str, wav_path: Path) -> None:
    """Speak ``text`` into ``wav_path`` (22050 Hz mono WAV) with espeak-ng; UserError if unavailable."""
    from stream_avatar.script import EspeakMissingError, ScriptError, speak_to_wav

    try:
        speak_to_wav(text, wav_path)
    except EspeakMissingError:
        raise UserError(
            "espeak-ng is not installed (Debian/Ubuntu: sudo apt-get install espeak-ng; macOS: brew install "
            "espeak-ng), or render your own speech: stream-avatar render --audio speech.wav --out out.mp4"
        ) from None
    except ScriptError as exc:
        raise UserError(str(exc)) from None


def cmd_sheet(args: argparse.Namespace, cfg: Config) -> int:
    from stream_avatar.session.engine import resolve_device
    from stream_avatar.sheet import write_sheet

    if not 64 <= args.cell <= 1024:
        raise UserError(f"--cell must lie in 64..1024 pixels, got {args.cell}")
    path = write_sheet(
        args.out,
        cfg.avatar.spec,
        size=cfg.avatar.size,
        store_dir=cfg.avatar.store_dir,
        device=resolve_device(cfg.engine.device),
        cell_px=args.cell,
        consent=_consent(args),
    )
    print(path.resolve())
    return 0


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    with tempfile.TemporaryDirectory(prefix="stream-avatar-demo-") as tmp:
        wav = Path(tmp) / "demo.wav"
        synthesize_demo(args.text, wav)
        path = _render(wav, DEMO_OUT, cfg, None, _progress(args), consent=_consent(args))
    print(path)
    return 0


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    from stream_avatar.server.app import build_server, run_server

    server = build_server(cfg, consent=_consent(args))
    print("preparing the avatar ...", file=sys.stderr, flush=True)
    server.preload("default")  # enroll/load before listening: the first visitor does not wait for it
    cost = server.calibrate("default")
    cores = server.admission.cores
    print(
        f"admission: one session ≈ {cost:.2f} of {cores} cores (render + encode, measured); sessions beyond "
        f"{cfg.server.cpu_fraction:.0%} of the cores are refused (busy)",
        file=sys.stderr,
        flush=True,
    )

    def ready(url: str) -> None:
        if cfg.server.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {cfg.server.host}: other machines can connect", file=sys.stderr)
        print(f"stream-avatar: open {url} in a browser (Ctrl-C stops)", file=sys.stderr, flush=True)
        print(url, flush=True)

    run_server(server, ready)
    return 0


def cmd_data(args: argparse.Namespace, cfg: Config) -> int:
    if args.data_command == "corpus":
        return _cmd_corpus(args)
    if args.data_command == "prompts":
        return _cmd_prompts(args)
    from tqdm import tqdm

    try:
        import scipy  # noqa: F401  (reverb and band filters)

        from stream_avatar.data.espeak import EspeakUnavailableError, list_voices
        from stream_avatar.data.synth import DEFAULT_LANGUAGES, DatasetConfig, synthesize_dataset
    except ImportError as exc:
        raise UserError(f"the data engine needs the train extra (pip install -e '.[train]'): {exc}") from None
    try:
        list_voices("en")
    except EspeakUnavailableError as exc:
        raise UserError(str(exc)) from None

    languages = DEFAULT_LANGUAGES
    if args.languages:
        languages = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    if args.holdout_language is None:
        holdout = "hi" if "hi" in languages else None
    else:
        holdout = None if args.holdout_language.lower() == "none" else args.holdout_language
    config = DatasetConfig(
        hours=args.hours,
        seed=args.seed,
        languages=languages,
        holdout_language=holdout,
        speakers_per_language=args.speakers_per_language,
        augment=not args.no_augment,
        workers=args.workers,
        synthesizers=tuple(x.strip() for x in (args.synthesizers or "").split(",") if x.strip()),
        text_language=args.text_language,
        voice_quality=args.voice_quality,
    )
    total = args.hours * 3600.0
    with tqdm(total=round(total), unit="s audio", disable=args.no_progress or not sys.stderr.isatty()) as bar:

        def progress(done: float, _target: float) -> None:
            bar.update(round(min(done, total)) - bar.n)

        info = synthesize_dataset(args.out, config, progress=progress)
    print(
        f"{info['utterances']} utterances, {info['hours']:.2f} h in {info['wall_s']:.0f} s "
        f"(real-time factor {info['realtime_factor']:.3f}), {info['shards']} shards",
        file=sys.stderr,
    )
    print(Path(args.out).resolve())
    return 0


def _cmd_prompts(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        from stream_avatar.data.prompts import MissingPackageError, PromptsConfig, build_dataset
    except ImportError as exc:
        raise UserError(f"the data engine needs the train extra (pip install -e '.[train]'): {exc}") from None
    try:
        config = PromptsConfig(
            source=args.source,
            copies=args.copies,
            seed=args.seed,
            augment=not args.no_augment,
            limit=args.limit,
            workers=args.workers,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with tqdm(unit="prompt", disable=args.no_progress or not sys.stderr.isatty()) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            info = build_dataset(args.out, config, progress=progress)
        except (MissingPackageError, ValueError) as exc:
            raise UserError(str(exc)) from None
    print(
        f"{info['prompts_used']} prompts ({info['source_hours'] * 60:.1f} min) -> {info['utterances']} "
        f"utterances, {info['hours']:.2f} h in {info['wall_s']:.0f} s; left out: {info['prompts_left_out']}",
        file=sys.stderr,
    )
    print(Path(args.out).resolve())
    return 0


def cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    from tqdm import tqdm

    if args.train_command == "emotion":
        return _train_emotion(args)

    from stream_avatar.motion.audio2motion import ModelConfig
    from stream_avatar.train.motion import TrainConfig, train

    data = _check_datasets(args.data)
    kw: dict[str, Any] = {"seed": args.seed, "threads": args.threads}
    for key in ("steps", "batch", "lr", "eval_every", "babble_p", "babble_talkers"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    tcfg = TrainConfig(**kw)
    mkw: dict[str, Any] = {}
    if args.channels is not None:
        mkw["channels"] = args.channels
    if args.lookahead_ms is not None:
        if args.lookahead_ms % 10:
            raise UserError("--lookahead-ms must be a multiple of 10 (feature rows are 10 ms)")
        mkw["lookahead_rows"] = args.lookahead_ms // 10
    if args.peak_decay_db is not None:
        mkw["peak_decay_db_per_s"] = args.peak_decay_db
    if args.peak_attack is not None:
        mkw["peak_attack"] = args.peak_attack
    evaluate = _motion_validator(data)
    with _step_bar(tcfg.steps, args.no_progress) as progress:
        train(
            data,
            args.out,
            tcfg,
            ModelConfig(**mkw),
            resume=not args.fresh,
            progress=progress,
            evaluate=evaluate,
            log=lambda m: tqdm.write(m, file=sys.stderr),
        )
    print(Path(args.out).resolve())
    return 0


@contextlib.contextmanager
def _step_bar(total: int, no_progress: bool) -> Iterator[Callable[[int, int, dict[str, float]], None]]:
    """A tqdm bar over training steps; yields the trainers' ``progress(done, total, losses)``."""
    from tqdm import tqdm

    with tqdm(total=total, unit="step", disable=no_progress or not sys.stderr.isatty()) as bar:

        def progress(done: int, _total: int, losses: dict[str, float]) -> None:
            bar.n = done
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
            bar.refresh()

        yield progress


def _check_datasets(dirs: list[str]) -> list[Path]:
    data = [Path(d) for d in dirs]
    for d in data:
        if not (d / "dataset.json").is_file():
            raise UserError(f"{d} is not a dataset (no dataset.json): make one with `data synth`")
    return data


def _train_emotion(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stream_avatar.train.emotion import TrainConfig, train, validator

    if args.baseline_frames is not None and not args.baseline_frames >= 0:
        raise UserError(f"--baseline-frames must be 0 (off) or positive, got {args.baseline_frames}")
    data = _check_datasets(args.data)
    kw: dict[str, Any] = {"seed": args.seed, "threads": args.threads}
    for key in ("steps", "disc_steps", "batch", "eval_every", "baseline_frames"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    tcfg = TrainConfig(**kw)
    total = tcfg.steps + tcfg.disc_steps
    with _step_bar(total, args.no_progress) as progress:
        train(
            data,
            args.out,
            tcfg,
            resume=not args.fresh,
            progress=progress,
            evaluate=validator(data),
            log=lambda m: tqdm.write(m, file=sys.stderr),
            corpora=[Path(c) for c in args.corpus],
            fitter_response=args.fitter_response,
        )
    print(Path(args.out).resolve())
    return 0


def _motion_validator(data: list[Path]) -> Any:
    """Validation during training: mean r on the synthetic val splits (the real set stays for eval)."""
    from stream_avatar.eval.motion import pearson, predict_jaw, synthetic_clips
    from stream_avatar.motion.learned import LearnedMouthDriver

    clips = [c for d in data for c in synthetic_clips(d, ("val",), per_group=20)]

    def evaluate(model: Any) -> dict[str, float]:
        rs = [pearson(predict_jaw(lambda: LearnedMouthDriver(model=model), c.audio), c.target) for c in clips]
        rs = [r for r in rs if r == r]
        return {"val_r": round(float(sum(rs) / max(1, len(rs))), 4)}

    return evaluate


def cmd_eval(args: argparse.Namespace, cfg: Config) -> int:
    if args.eval_command == "emotion":
        from stream_avatar.eval import emotion as ev

        data = _check_datasets(args.data)
        rep = ev.evaluate_emotion(
            data,
            args.model,
            per_split=args.per_split,
            real=not args.no_real,
            log=lambda m: print(m, file=sys.stderr),
        )
        written = ev.write_report(rep, args.out)
        print((Path(args.out) / "emotion_eval.md").read_text(encoding="utf-8"))
        for f in written:
            print(f, file=sys.stderr)
        return 0
    from stream_avatar.eval.motion import evaluate_motion, write_report

    report = evaluate_motion(
        model_dir=args.model,
        data_dir=args.data,
        per_group=args.per_group,
        real=not args.no_real,
        allphone=not args.no_allphone,
        log=lambda m: print(m, file=sys.stderr),
    )
    files = write_report(report, args.out)
    print((Path(args.out) / "motion_eval.md").read_text(encoding="utf-8"))
    for f in files:
        print(f, file=sys.stderr)
    return 0


def _cmd_corpus(args: argparse.Namespace) -> int:
    import json
    from collections import Counter

    from stream_avatar.data.corpora import scan_corpus, split_by_speaker

    scan = scan_corpus(Path(args.root), args.kind)
    if not scan.items:
        raise UserError(f"no usable files in {args.root}: skipped {scan.skip_counts()}")
    train, val, test = split_by_speaker(scan.items, seed=args.seed)
    split_of = {
        id(it): name for name, part in (("train", train), ("val", val), ("test", test)) for it in part
    }
    emotions = Counter(it.emotion for it in scan.items)
    speakers = {it.speaker for it in scan.items}
    with_video = sum(it.video_path is not None for it in scan.items)
    print(
        f"{len(scan.items)} items, {len(speakers)} speakers, {with_video} with video; "
        f"emotions {dict(sorted(emotions.items()))}; "
        f"split train/val/test {len(train)}/{len(val)}/{len(test)}; skipped {scan.skip_counts()}",
        file=sys.stderr,
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            for it in scan.items:
                record = {
                    "corpus": it.corpus,
                    "audio": str(it.audio_path),
                    "video": None if it.video_path is None else str(it.video_path),
                    "emotion": it.emotion,
                    "intensity": it.intensity,
                    "speaker": it.speaker,
                    "language": it.language,
                    "sentence": it.sentence,
                    "split": split_of[id(it)],
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(Path(args.out).resolve())
    return 0


_COMMANDS = {
    "enroll": cmd_enroll,
    "avatars": cmd_avatars,
    "render": cmd_render,
    "demo": cmd_demo,
    "sheet": cmd_sheet,
    "serve": cmd_serve,
    "run": cmd_serve,
    "data": cmd_data,
    "train": cmd_train,
    "eval": cmd_eval,
    "verify": cmd_verify,
    "review": cmd_review,
}


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    # Library warnings (e.g. a small face in the photo) are advice to the user: one line each.
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # restored on exit by catch_warnings
            cfg = _config(args)
            return _COMMANDS[args.command](args, cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ConfigError, ValueError, OSError) as exc:
        # Bad audio (AudioFormatError), bad photo (EnrollmentError), unknown avatar (AvatarStoreError),
        # bad settings and missing or unwritable files are all ValueError / OSError with clear messages.
        logger.debug("user error", exc_info=True)
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Corpus readers on tiny trees in each published layout, speaker splits, and MEAD video → rig targets.

No corpus data ships with the repo: every test writes the few files it needs, named as CREMA-D, RAVDESS
and MEAD publish them (short real WAV/M4A audio; the readers never decode, so paired videos are dummy
bytes except in the rig-target test, which renders a real clip of the default avatar).
"""

from __future__ import annotations

import logging
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stream_avatar.data import corpora
from stream_avatar.data.corpora import CorpusItem, read_corpus, scan_corpus, split_by_speaker
from stream_avatar.motion import rig

RATE_HZ = 16000
LO, MD, HI = 1.0 / 3.0, 2.0 / 3.0, 1.0


def write_wav(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(RATE_HZ * seconds)
    pcm = (np.sin(2 * np.pi * 220.0 * np.arange(n) / RATE_HZ) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(pcm.tobytes())
    return path


def write_m4a(path: Path, seconds: float = 0.1) -> Path:
    """AAC in an .m4a (MP4) container, as MEAD publishes its audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(RATE_HZ * seconds)
    x = (np.sin(2 * np.pi * 220.0 * np.arange(n) / RATE_HZ) * 0.3).astype(np.float32)[None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=RATE_HZ, layout="mono")
        frame = av.AudioFrame.from_ndarray(x, format="fltp", layout="mono")
        frame.sample_rate = RATE_HZ
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_bytes(path: Path, data: bytes = b"\x00" * 1024) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_video(path: Path, frames: np.ndarray, fps: int) -> Path:
    """(N, H, W, 3) uint8 RGB → H.264 MP4 at ``fps`` (near-lossless, so the fitter sees the render)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "ultrafast"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i, image in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    return path


def labels(item: CorpusItem) -> tuple[str, float, str, str]:
    return item.emotion, round(item.intensity, 4), item.speaker, item.sentence


# --- CREMA-D ------------------------------------------------------------------------------------------


def make_crema_d(root: Path) -> None:
    audio = root / "AudioWAV"
    for stem in (
        "1001_DFA_ANG_XX",
        "1001_IEO_HAP_HI",
        "1002_IEO_SAD_LO",
        "1002_IEO_NEU_XX",
        "1091_TSI_FEA_MD",
        "1050_WSI_DIS_XX",
    ):
        write_wav(audio / f"{stem}.wav")
    write_bytes(root / "VideoFlash" / "1001_DFA_ANG_XX.flv")
    # junk: not the naming, unknown labels, an empty file, a git-lfs pointer, a wrong extension
    write_bytes(audio / "readme.txt", b"hello")
    write_wav(audio / "1001_DFA_XXX_XX.wav")  # unknown emotion
    write_wav(audio / "0999_DFA_ANG_XX.wav")  # actor outside 1001-1091
    write_wav(audio / "1001_ABC_ANG_XX.wav")  # unknown sentence
    write_bytes(audio / "1003_DFA_ANG_XX.wav", b"")
    write_bytes(audio / "1004_DFA_ANG_XX.wav", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    write_wav(audio / "1005_DFA_ANG_XX.mp3")


def test_crema_d_labels(tmp_path: Path) -> None:
    make_crema_d(tmp_path)
    scan = scan_corpus(tmp_path)
    assert scan.kind == "crema-d"
    got = {it.audio_path.stem: labels(it) for it in scan.items}
    assert got == {
        "1001_DFA_ANG_XX": ("angry", round(MD, 4), "crema-d:1001", "Don't forget a jacket."),
        "1001_IEO_HAP_HI": ("happy", HI, "crema-d:1001", "It's eleven o'clock."),
        "1002_IEO_NEU_XX": ("neutral", 0.0, "crema-d:1002", "It's eleven o'clock."),
        "1002_IEO_SAD_LO": ("sad", round(LO, 4), "crema-d:1002", "It's eleven o'clock."),
        "1050_WSI_DIS_XX": ("disgusted", round(MD, 4), "crema-d:1050", "We'll stop in a couple of minutes."),
        "1091_TSI_FEA_MD": ("fear", round(MD, 4), "crema-d:1091", "The surface is slick."),
    }
    for it in scan.items:
        assert it.corpus == "crema-d" and it.language == "en"
        assert it.audio_path.parent == tmp_path / "AudioWAV"
        assert it.extra["actor"] == it.speaker.split(":")[1]
        expected_video = (
            tmp_path / "VideoFlash" / "1001_DFA_ANG_XX.flv"
            if it.audio_path.stem == "1001_DFA_ANG_XX"
            else None
        )
        assert it.video_path == expected_video
    hi = next(it for it in scan.items if it.audio_path.stem == "1001_IEO_HAP_HI")
    assert hi.extra == {"actor": "1001", "sentence_code": "IEO", "emotion_code": "HAP", "level": "HI"}
    assert scan.skip_counts() == {
        "unrecognised name": 2,
        "unrecognised label": 3,
        "empty file": 1,
        "git-lfs pointer (run `git lfs pull`)": 1,
    }
    assert list(scan.items) == sorted(scan.items, key=lambda it: (it.speaker, str(it.audio_path)))


# --- RAVDESS ------------------------------------------------------------------------------------------


def make_ravdess(root: Path) -> None:
    """Two zips extracted into their own folders (audio speech + one actor's video), plus junk."""
    audio = root / "Audio_Speech_Actors_01-24"
    video = root / "Video_Speech_Actor_01"
    write_wav(audio / "Actor_01" / "03-01-06-01-02-01-01.wav")  # fearful, normal, dogs
    write_bytes(video / "Actor_01" / "01-01-06-01-02-01-01.mp4")  # the same take, full AV
    write_bytes(video / "Actor_01" / "02-01-06-01-02-01-01.mp4")  # ... and video-only
    write_bytes(video / "Actor_01" / "01-01-03-02-01-02-01.mp4")  # happy strong, full AV only
    write_wav(audio / "Actor_02" / "03-01-02-02-01-02-02.wav")  # calm, strong
    write_wav(audio / "Actor_02" / "03-01-01-01-01-01-02.wav")  # neutral
    write_wav(audio / "Actor_02" / "03-02-03-01-01-01-02.wav")  # song
    write_wav(audio / "Actor_03" / "03-01-08-02-01-01-03.wav")  # surprised, strong
    write_wav(audio / "Actor_03" / "03-01-07-01-02-02-03.wav")  # disgust, normal
    write_bytes(audio / "Actor_03" / "02-01-07-01-02-02-03.mp4")  # video-only of that take
    # junk
    write_wav(audio / "Actor_02" / "03-01-01-02-01-01-02.wav")  # neutral has no strong
    write_wav(audio / "Actor_02" / "03-01-05-01-01-01-01.wav")  # actor 01 in Actor_02
    write_wav(audio / "Actor_01" / "03-01-09-01-01-01-01.wav")  # emotion 09
    write_wav(audio / "Actor_01" / "01-01-05-01-01-01-01.wav")  # full AV must be .mp4
    write_bytes(audio / "Actor_01" / "notes.txt", b"x")


def test_ravdess_labels_and_merged_takes(tmp_path: Path) -> None:
    make_ravdess(tmp_path)
    scan = scan_corpus(tmp_path)
    assert scan.kind == "ravdess"
    a, v = tmp_path / "Audio_Speech_Actors_01-24", tmp_path / "Video_Speech_Actor_01"
    got = {it.audio_path.relative_to(tmp_path).as_posix(): (*labels(it), it.video_path) for it in scan.items}
    dogs, kids = "Dogs are sitting by the door.", "Kids are talking by the door."
    assert got == {
        # the full-AV file is audio and video; the audio-only wav of that take is kept in extra
        "Video_Speech_Actor_01/Actor_01/01-01-06-01-02-01-01.mp4": (
            "fear",
            round(MD, 4),
            "ravdess:01",
            dogs,
            v / "Actor_01" / "01-01-06-01-02-01-01.mp4",
        ),
        "Video_Speech_Actor_01/Actor_01/01-01-03-02-01-02-01.mp4": (
            "happy",
            HI,
            "ravdess:01",
            kids,
            v / "Actor_01" / "01-01-03-02-01-02-01.mp4",
        ),
        "Audio_Speech_Actors_01-24/Actor_02/03-01-02-02-01-02-02.wav": (
            "neutral",
            0.0,
            "ravdess:02",
            kids,
            None,
        ),
        "Audio_Speech_Actors_01-24/Actor_02/03-01-01-01-01-01-02.wav": (
            "neutral",
            0.0,
            "ravdess:02",
            kids,
            None,
        ),
        "Audio_Speech_Actors_01-24/Actor_03/03-01-08-02-01-01-03.wav": (
            "surprised",
            HI,
            "ravdess:03",
            kids,
            None,
        ),
        "Audio_Speech_Actors_01-24/Actor_03/03-01-07-01-02-02-03.wav": (
            "disgusted",
            round(MD, 4),
            "ravdess:03",
            dogs,
            None,
        ),
    }
    by_name = {it.audio_path.name: it for it in scan.items}
    fear = by_name["01-01-06-01-02-01-01.mp4"]
    assert fear.extra["audio_only_path"] == str(a / "Actor_01" / "03-01-06-01-02-01-01.wav")
    assert fear.extra["emotion_label"] == "fearful" and fear.extra["sex"] == "male"
    calm = by_name["03-01-02-02-01-02-02.wav"]
    assert calm.extra["emotion_label"] == "calm" and calm.extra["intensity_label"] == "strong"
    assert calm.extra["sex"] == "female" and calm.extra["repetition"] == "02"
    assert scan.skip_counts() == {
        "unrecognised label": 4,
        "video-only (include_video_only=False)": 2,
        "song (include_song=False)": 1,
        "unrecognised name": 1,
    }


def test_ravdess_options(tmp_path: Path) -> None:
    make_ravdess(tmp_path)
    items = read_corpus(tmp_path, "ravdess", include_song=True, include_video_only=True, calm="skip")
    names = {it.audio_path.name: it for it in items}
    assert "03-01-02-02-01-02-02.wav" not in names  # calm skipped
    song = names["03-02-03-01-01-01-02.wav"]
    assert song.emotion == "happy" and song.extra["vocal_channel"] == "song"
    # a video-only file is the picture of its take's audio-only wav, and unused when a full-AV file exists
    disgust = names["03-01-07-01-02-02-03.wav"]
    assert (
        disgust.video_path == tmp_path / "Audio_Speech_Actors_01-24" / "Actor_03" / "02-01-07-01-02-02-03.mp4"
    )
    assert names["01-01-06-01-02-01-01.mp4"].video_path == names["01-01-06-01-02-01-01.mp4"].audio_path
    with pytest.raises(ValueError, match="calm"):
        read_corpus(tmp_path, "ravdess", calm="happy")  # type: ignore[arg-type]


# --- MEAD ---------------------------------------------------------------------------------------------


def make_mead(root: Path) -> None:
    write_m4a(root / "M003" / "audio" / "angry" / "level_1" / "001.m4a")
    write_wav(root / "M003" / "audio" / "angry" / "level_3" / "002.wav")  # a converted copy
    write_m4a(root / "M003" / "audio" / "neutral" / "level_1" / "001.m4a")
    write_m4a(root / "W009" / "audio" / "contempt" / "level_2" / "001.m4a")
    write_bytes(root / "M003" / "video" / "front" / "angry" / "level_1" / "001.mp4")
    write_bytes(root / "M003" / "video" / "left_30" / "angry" / "level_1" / "001.mp4")
    write_bytes(root / "M003" / "video" / "left_30" / "angry" / "level_3" / "002.mp4")
    write_bytes(root / "W009" / "video" / "front" / "contempt" / "level_2" / "001.mp4")
    write_bytes(root / "W009" / "video" / "front" / "contempt" / "level_2" / "002.mp4")  # no audio
    # junk
    write_m4a(root / "M003" / "audio" / "angry" / "level_4" / "001.m4a")
    write_m4a(root / "M003" / "audio" / "neutral" / "level_2" / "001.m4a")  # neutral has one level
    write_m4a(root / "M003" / "audio" / "bored" / "level_1" / "001.m4a")
    write_bytes(root / "M003" / "audio" / "happy" / "level_1" / "readme.txt", b"x")
    write_bytes(root / "M003" / "audio" / "001.m4a")
    write_bytes(root / "M003" / "video.tar", b"tar")  # left over after extraction: not looked at
    write_bytes(root / "notes.txt", b"x")


def test_mead_labels_and_pairing(tmp_path: Path) -> None:
    make_mead(tmp_path)
    scan = scan_corpus(tmp_path)
    assert scan.kind == "mead"
    got = {it.audio_path.relative_to(tmp_path).as_posix(): (*labels(it), it.video_path) for it in scan.items}
    vid = tmp_path / "M003" / "video" / "front"
    assert got == {
        "M003/audio/angry/level_1/001.m4a": (
            "angry",
            round(LO, 4),
            "mead:M003",
            "",
            vid / "angry/level_1/001.mp4",
        ),
        "M003/audio/angry/level_3/002.wav": ("angry", HI, "mead:M003", "", None),
        "M003/audio/neutral/level_1/001.m4a": ("neutral", 0.0, "mead:M003", "", None),
        "W009/audio/contempt/level_2/001.m4a": (
            "contempt",
            round(MD, 4),
            "mead:W009",
            "",
            tmp_path / "W009/video/front/contempt/level_2/001.mp4",
        ),
    }
    w = next(it for it in scan.items if it.speaker == "mead:W009")
    assert w.extra == {"actor": "W009", "sex": "female", "level": "level_2", "clip": "001", "view": "front"}
    assert scan.skip_counts() == {"unrecognised path": 5, "video without audio": 1}


def test_mead_views_and_actor_root(tmp_path: Path) -> None:
    make_mead(tmp_path)
    side = {
        it.audio_path.relative_to(tmp_path).as_posix(): it.video_path
        for it in read_corpus(tmp_path, view="left_30")
    }
    assert side["M003/audio/angry/level_1/001.m4a"] == tmp_path / "M003/video/left_30/angry/level_1/001.mp4"
    assert side["M003/audio/angry/level_3/002.wav"] == tmp_path / "M003/video/left_30/angry/level_3/002.mp4"
    assert side["W009/audio/contempt/level_2/001.m4a"] is None
    one = read_corpus(tmp_path / "M003")
    assert {it.speaker for it in one} == {"mead:M003"} and len(one) == 3


# --- detection and errors -----------------------------------------------------------------------------


def test_detection_and_clear_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for kind, make in (("crema-d", make_crema_d), ("ravdess", make_ravdess), ("mead", make_mead)):
        root = tmp_path / kind
        root.mkdir()
        make(root)
        assert corpora.detect_corpus(root) == kind
        with caplog.at_level(logging.WARNING, logger="stream_avatar.data.corpora"):
            items = read_corpus(root)
        assert items and all(it.corpus == kind for it in items)
        assert f"{kind} at {root}" in caplog.text and "skipped" in caplog.text
        assert read_corpus(root) == read_corpus(root, kind)  # deterministic
    empty = tmp_path / "empty"
    empty.mkdir()
    for root in (empty, tmp_path / "crema-d" / "AudioWAV"):
        with pytest.raises(
            ValueError, match="does not look like a known corpus; expected one of: CREMA-D"
        ) as err:
            read_corpus(root)
        assert "\n" not in str(err.value) and "RAVDESS" in str(err.value) and "MEAD" in str(err.value)
    with pytest.raises(ValueError, match="does not look like MEAD"):
        read_corpus(tmp_path / "crema-d", "mead")
    with pytest.raises(ValueError, match="unknown corpus kind"):
        read_corpus(tmp_path / "crema-d", "iemocap")
    with pytest.raises(ValueError, match="not a directory"):
        read_corpus(tmp_path / "missing")
    both = tmp_path / "both"
    write_wav(both / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    write_wav(both / "Actor_01" / "03-01-05-01-01-01-01.wav")
    with pytest.raises(ValueError, match="several corpora"):
        read_corpus(both)
    junk_only = tmp_path / "junk"
    write_bytes(junk_only / "AudioWAV" / "notes.txt", b"x")
    with pytest.raises(ValueError, match="no usable CREMA-D"):
        read_corpus(junk_only)


def test_item_validates_its_labels() -> None:
    ok = dict(corpus="mead", audio_path=Path("a.wav"), video_path=None, emotion="happy", intensity=0.5)
    ok |= dict(speaker="mead:M003", language="en", sentence="")
    CorpusItem(**ok)  # type: ignore[arg-type]
    for key, bad in (("emotion", "calm"), ("intensity", 1.5), ("corpus", "iemocap")):
        with pytest.raises(ValueError, match=key if key != "corpus" else "unknown corpus"):
            CorpusItem(**(ok | {key: bad}))  # type: ignore[arg-type]
    assert hash(CorpusItem(**ok)) == hash(CorpusItem(**ok))  # type: ignore[arg-type]


# --- splits -------------------------------------------------------------------------------------------


def fake_items(n_speakers: int, per_speaker: int = 3) -> list[CorpusItem]:
    return [
        CorpusItem(
            "crema-d", Path(f"{1001 + s}_{k}.wav"), None, "happy", 0.5, f"crema-d:{1001 + s}", "en", ""
        )
        for s in range(n_speakers)
        for k in range(per_speaker)
    ]


def test_split_by_speaker_is_disjoint_and_deterministic() -> None:
    items = fake_items(40)
    splits = split_by_speaker(items)
    speakers = [{it.speaker for it in part} for part in splits]
    assert [len(s) for s in speakers] == [32, 4, 4]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    assert sum(map(len, splits)) == len(items)
    assert {it for part in splits for it in part} == set(items)
    for part in splits:  # input order kept
        assert part == [it for it in items if it in set(part)]
    assert split_by_speaker(items) == splits
    assert split_by_speaker(list(items), seed=0) == splits
    assert split_by_speaker(items, seed=1) != splits
    # few speakers: every split with a positive fraction still gets one
    assert [len({it.speaker for it in p}) for p in split_by_speaker(fake_items(3))] == [1, 1, 1]
    assert [len(p) for p in split_by_speaker(fake_items(5), fractions=(1.0, 0.0, 0.0))] == [15, 0, 0]
    with pytest.raises(ValueError, match="fractions"):
        split_by_speaker(items, fractions=(0.8, 0.3, 0.1))


# --- MEAD video → rig targets ---------------------------------------------------------------------------


def test_frames_at_rate_picks_the_frame_on_screen(tmp_path: Path) -> None:
    """A 30 fps second read at 25 fps: 25 ticks, every sixth source frame dropped; 25 fps is the identity."""
    frames = np.zeros((30, 32, 32, 3), dtype=np.uint8)
    for fps, expected in ((30, [int(k * 30 / 25) for k in range(25)]), (25, list(range(25)))):
        path = write_video(tmp_path / f"{fps}.mp4", frames[:fps], fps)
        with av.open(str(path)) as container:
            got = [i for i, _ in corpora._frames_at_rate(container, 25.0)]
        assert got == expected, fps
    path = write_video(tmp_path / "slow.mp4", frames[:10], 10)  # a slower source repeats frames
    with av.open(str(path)) as container:
        got = [i for i, _ in corpora._frames_at_rate(container, 25.0)]
    assert len(got) == 25 and got[:6] == [0, 0, 0, 1, 1, 2]


def test_mead_rig_targets_on_a_rendered_clip(tmp_path: Path) -> None:
    from stream_avatar.avatar.store import AvatarStore
    from stream_avatar.render.renderer import RendererWrapper

    avatar = AvatarStore(root=tmp_path / "store").resolve(None, size=256)
    renderer = RendererWrapper(avatar.tensors, "cpu")
    rigs = np.stack([rig.zeros()] * 10 + [rig.from_dict({"jawOpen": 0.7})] * 10)
    frames = renderer.render(rigs)
    root = tmp_path / "mead"
    write_video(root / "M001/video/front/neutral/level_1/001.mp4", frames[:2], 25)
    write_video(root / "M001/video/front/happy/level_2/001.mp4", frames, 25)
    write_m4a(root / "M001/audio/neutral/level_1/001.m4a")
    write_m4a(root / "M001/audio/happy/level_2/001.m4a")
    (item,) = [it for it in read_corpus(root) if it.emotion == "happy"]
    assert item.video_path == root / "M001/video/front/happy/level_2/001.mp4"

    targets = corpora.mead_rig_targets(item)
    assert targets.shape == (20, rig.RIG_SIZE) and targets.dtype == np.float32
    assert np.isfinite(targets).all()
    jaw = targets[:, rig.index("jawOpen")]
    assert jaw[:9].max() < 0.1, jaw.round(2)
    assert jaw[11:].min() > 0.3, jaw.round(2)  # Face Mesh reads rendered jaws low (fitter docstring)

    # a frame without a face is a NaN row; passing the neutral landmarks skips the neutral clip
    blank = write_video(
        root / "M001/video/front/happy/level_2/002.mp4", np.zeros((3, 256, 256, 3), np.uint8), 25
    )
    no_face = CorpusItem("mead", item.audio_path, blank, "happy", MD, "mead:M001", "en", "")
    out = corpora.mead_rig_targets(no_face, neutral_landmarks=avatar.landmarks)
    assert out.shape == (3, rig.RIG_SIZE) and np.isnan(out).all()
    with pytest.raises(ValueError, match="no paired video"):
        corpora.mead_rig_targets(
            CorpusItem("mead", item.audio_path, None, "happy", MD, "mead:M001", "en", "")
        )
    with pytest.raises(ValueError, match="no neutral clip"):
        corpora.mead_rig_targets(
            CorpusItem(
                "mead",
                item.audio_path,
                tmp_path / "W002/video/front/sad/level_1/001.mp4",
                "sad",
                LO,
                "mead:W002",
                "en",
                "",
            )
        )


def test_cli_reads_a_corpus_and_writes_its_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from stream_avatar import cli

    root = tmp_path / "crema"
    make_crema_d(root)
    out = tmp_path / "items.jsonl"
    assert cli.main(["data", "corpus", str(root), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "items" in captured.err and "speakers" in captured.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(
        r["corpus"] == "crema-d" and r["split"] in ("train", "val", "test") for r in records
    )
    by_split: dict[str, set[str]] = {}
    for r in records:
        by_split.setdefault(r["split"], set()).add(r["speaker"])
    assert sum(len(v) for v in by_split.values()) == len(set().union(*by_split.values()))
    assert cli.main(["data", "corpus", str(tmp_path / "nothing")]) == 2

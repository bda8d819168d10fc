"""The stream-avatar command line and the configuration it builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from stream_avatar import cli
from stream_avatar.config import AvatarConfig, Config, ConfigError, EngineConfig, ServerConfig, load_config
from tests.fakes import TEST_CONSENT

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"definitely not audio\n" * 10, "not a readable audio file"), (b"", "empty")],
)
def test_render_bad_audio_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, fragment: str
) -> None:
    bad = tmp_path / "speech.wav"
    bad.write_bytes(content)
    out = tmp_path / "out.mp4"
    code, stdout, err = run_cli(capsys, "render", "--audio", str(bad), "--out", str(out), "--no-progress")
    assert code == 2
    assert stdout == ""
    assert_one_line_error(err, "speech.wav", fragment)
    assert list(tmp_path.iterdir()) == [bad]  # no MP4, no temporary file


def test_render_missing_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "render", "--audio", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "o.mp4")
    )
    assert code == 2
    assert_one_line_error(err, "nope.wav")


def test_enroll_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "face.jpg"
    bad.write_text("not a picture")
    code, stdout, err = run_cli(
        capsys, "enroll", str(bad), "--store", str(tmp_path / "store"), "--consent", TEST_CONSENT
    )
    assert code == 2 and stdout == ""
    assert_one_line_error(err, "face.jpg", "not an image")


def test_bad_size_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "render", "--audio", "x.wav", "--out", str(tmp_path / "o.mp4"), "--size", "33"
    )
    assert code == 2
    assert_one_line_error(err, "size", "33")


def test_bad_baseline_frames_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "emotion", "--data", str(tmp_path), "--baseline-frames", "-5")
    assert code == 2
    assert_one_line_error(err, "baseline-frames", "-5")


def test_bad_env_value(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAM_AVATAR_FPS", "fast")
    code, _, err = run_cli(capsys, "render", "--audio", "x.wav", "--out", "o.mp4")
    assert code == 2
    assert_one_line_error(err, "STREAM_AVATAR_FPS", "fast")


def test_demo_without_espeak_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    from stream_avatar import script

    monkeypatch.setattr(script.shutil, "which", lambda name: None)  # espeak-ng runs from script.py
    code, stdout, err = run_cli(capsys, "demo")
    assert code == 2 and stdout == ""
    assert_one_line_error(err, "espeak-ng", "apt-get install espeak-ng", "render --audio")
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["render", "--out", "x.mp4"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stream_avatar", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for command in ("enroll", "render", "serve", "run", "demo"):
        assert command in done.stdout


# ------------------------------------------------------------------------------- real pipeline


def test_enroll_prints_the_avatar_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream_avatar.avatar.store import DEFAULT_AVATAR_IMAGE, AvatarStore

    store = tmp_path / "store"
    code, stdout, _ = run_cli(
        capsys,
        "enroll",
        str(DEFAULT_AVATAR_IMAGE),
        "--size",
        "128",
        "--store",
        str(store),
        "--consent",
        TEST_CONSENT,
    )
    assert code == 0
    avatar_id = stdout.strip()
    assert AvatarStore(store).ids() == [avatar_id]


@pytest.mark.slow
def test_demo_renders_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed: apt-get install espeak-ng")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAM_AVATAR_STORE_DIR", str(tmp_path / "store"))
    code, stdout, err = run_cli(capsys, "demo", "--size", "128", "--text", "Hello there.")
    assert code == 0, err
    path = Path(stdout.strip())
    assert path.is_absolute() and path == (tmp_path / "out" / "demo.mp4").resolve()
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.streams.video[0].frames > 10
    assert "frames/s" in err


# ---------------------------------------------------------------------------------------- config


def test_config_defaults() -> None:
    cfg = load_config(environ={})
    assert cfg == Config(EngineConfig(), AvatarConfig(), ServerConfig())
    assert (cfg.engine.fps, cfg.engine.driver, cfg.engine.max_buffer_s) == (25, "learned", 2.0)
    assert (cfg.avatar.spec, cfg.avatar.size, cfg.avatar.store_dir) == (None, 512, None)
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)


def test_config_precedence_flags_env_toml_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "sa.toml"
    toml.write_text(
        "[engine]\nfps = 20\nmax_buffer_s = 1.5\n"
        '[avatar]\nsize = 256\nspec = "me.jpg"\n[server]\nport = 9000\n'
    )
    env = {"STREAM_AVATAR_CONFIG": str(toml), "STREAM_AVATAR_SIZE": "320", "STREAM_AVATAR_PORT": "9100"}
    cfg = load_config({"size": 384, "driver": None}, environ=env)
    assert cfg.engine.fps == 20  # TOML over default
    assert cfg.engine.max_buffer_s == 1.5
    assert cfg.avatar.spec == "me.jpg"
    assert cfg.avatar.size == 384  # flag over env over TOML
    assert cfg.server.port == 9100  # env over TOML
    assert cfg.server.host == "127.0.0.1" and cfg.engine.driver == "learned"  # defaults
    # An explicit path wins over STREAM_AVATAR_CONFIG.
    other = tmp_path / "other.toml"
    other.write_text("[engine]\nfps = 16\n")
    assert load_config(config_path=other, environ=env).engine.fps == 16


def test_config_is_frozen() -> None:
    cfg = load_config(environ={})
    with pytest.raises(AttributeError):
        cfg.engine.fps = 30  # type: ignore[misc]


def test_config_store_dir_expands_user(tmp_path: Path) -> None:
    cfg = load_config({"store_dir": "~/avatars"}, environ={})
    assert cfg.avatar.store_dir == Path("~/avatars").expanduser()


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[engine]\nfsp = 25\n", "unknown key 'fsp'"),
        ("[video]\nfps = 25\n", "unknown section [video]"),
        ("[engine]\nfps = 24\n", "fps must divide 16000"),
        ("[server]\nport = 70000\n", "port"),
        ("[engine]\nfps = true\n", "fps must be int"),
        ("[engine\n", "cannot read config file"),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, toml: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(config_path=path, environ={})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_config_missing_file_and_bad_env() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(config_path="/nonexistent/sa.toml", environ={})
    with pytest.raises(ConfigError, match="STREAM_AVATAR_MAX_BUFFER_S"):
        load_config(environ={"STREAM_AVATAR_MAX_BUFFER_S": "lots"})
    with pytest.raises(ConfigError, match="max_buffer_s"):
        load_config(environ={"STREAM_AVATAR_MAX_BUFFER_S": "nan"})
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config({"colour": "red"}, environ={})


# ------------------------------------------------------------------------------------ emotion, sheet


def test_emotion_flag_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config({"emotion": "happy:0.7"})
    assert cfg.engine.emotion_weights == {"happy": 0.7}
    assert load_config({}, environ={}).engine.emotion == "auto"  # the voice's emotion by default
    assert load_config({}, environ={}).engine.emotion_weights == {"auto": 1.0}
    assert load_config({"emotion": "auto+happy:0.3"}).engine.emotion_weights == {"auto": 1.0, "happy": 0.3}
    with pytest.raises(ConfigError, match="emotion"):
        load_config({"emotion": "joy"})
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    code, _, err = run_cli(
        capsys, "render", "--audio", str(wav), "--out", str(tmp_path / "o.mp4"), "--emotion", "happy:3"
    )
    assert code == 2
    assert_one_line_error(err, "intensity of happy")


def test_emotion_prior_neutral_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config({}, environ={}).engine.emotion_prior_neutral is None  # the model's own
    assert load_config({"emotion_prior_neutral": "0.3"}, environ={}).engine.emotion_prior_neutral == 0.3
    env = {"STREAM_AVATAR_EMOTION_PRIOR_NEUTRAL": "0.2"}
    assert load_config({}, environ=env).engine.emotion_prior_neutral == 0.2
    toml = tmp_path / "sa.toml"
    toml.write_text("[engine]\nemotion_prior_neutral = 0.4\n")
    assert load_config({}, config_path=toml, environ={}).engine.emotion_prior_neutral == 0.4
    for bad in ("0", "1", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="emotion_prior_neutral must lie strictly between 0 and 1"):
            load_config({"emotion_prior_neutral": bad}, environ={})
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    out = str(tmp_path / "o.mp4")
    code, _, err = run_cli(
        capsys, "render", "--audio", str(wav), "--out", out, "--emotion-prior-neutral", "2"
    )
    assert code == 2
    assert_one_line_error(err, "emotion_prior_neutral must lie strictly between 0 and 1")


def test_emotion_ref_neutral_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    out = str(tmp_path / "o.mp4")
    code, _, err = run_cli(
        capsys, "render", "--audio", str(wav), "--out", out, "--emotion-ref-neutral", str(wav)
    )
    assert code == 2
    assert_one_line_error(err, "--emotion-ref-neutral needs --emotion-ref")
    clip, photo = tmp_path / "clip.mp4", tmp_path / "rest.png"
    clip.write_bytes(b"")
    photo.write_bytes(b"not a photo")
    code, _, err = run_cli(
        capsys,
        "render",
        "--audio",
        str(wav),
        "--out",
        out,
        "--emotion-ref",
        str(clip),
        "--emotion-ref-neutral",
        str(photo),
    )
    assert code == 2
    assert_one_line_error(err, "--emotion-ref", "neutral image", "not an image")


def test_sheet_writes_a_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    from stream_avatar.sheet import sheet_cells

    out = tmp_path / "sheet.png"
    code, stdout, err = run_cli(
        capsys, "sheet", "--out", str(out), "--size", "128", "--store", str(tmp_path / "s")
    )
    assert code == 0, err
    assert Path(stdout.strip()) == out.resolve()
    image = cv2.imread(str(out))
    cells, columns, cell_px, label_px = len(sheet_cells()), 7, 224, 26
    rows = -(-cells // columns)
    assert image.shape == (rows * (cell_px + label_px), columns * cell_px, 3)
    # The cells differ from each other (neutral vs happy vs jaw open ...), so the sheet shows something.
    tiles = [
        image[r * (cell_px + label_px) : r * (cell_px + label_px) + cell_px, c * cell_px : (c + 1) * cell_px]
        for r in range(rows)
        for c in range(columns)
    ][:cells]
    diffs = [np.abs(t.astype(int) - tiles[0].astype(int)).mean() for t in tiles[1:]]
    assert min(diffs) > 0.01 and float(np.median(diffs)) > 1.0, [round(d, 3) for d in diffs]
    code, _, err = run_cli(capsys, "sheet", "--out", str(tmp_path / "sheet.gif"))
    assert code == 2
    assert_one_line_error(err, ".png")

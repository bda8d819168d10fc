"""The real thing end to end: `stream-avatar serve` in a subprocess, Debian's chromium (headless, driven
by Playwright) on web_client/, a fake microphone playing espeak-ng speech bursts.

Asserted from the page: video decoded at >= 20 fps, the avatar's audio playing, and the mouth region of
the shown video moving while the background stays still. Skipped visibly without chromium or the
`playwright` package (Playwright's own browser download is not used: Debian's chromium is launched).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.conftest import SpeechBursts

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SIZE = 256
SERVER_START_TIMEOUT_S = 60.0  # the first start enrolls the default avatar into the fresh store
LIVE_TIMEOUT_MS = 15_000
CAPTURE_S = 6.0  # the mic file loops every 7.4 s, its longest silence 2 s: 6 s hold a whole burst
CAPTURE_INTERVAL_MS = 80
# Regions as fractions of the frame (x0, y0, x1, y1). The mouth box is where the renderer's pixels
# change for jawOpen 0.5-1.0 on the default avatar at 256² (measured: x 0.36-0.65, y 0.51-0.70; this
# box is its core). The background box is the flag at the left edge: the renderer never touches it (head
# sway reaches x >= 0.21), and it has edges, so a shifted or rescaled frame would show there.
MOUTH_BOX = (0.40, 0.55, 0.60, 0.68)
BACKGROUND_BOX = (0.0, 0.55, 0.08, 0.85)
# Thresholds in grey levels (mean absolute difference over the box, 0-255), from frames rendered
# offline: jawOpen 0.8 moves the mouth box by ~38 (0.5 by ~30); the idle sway at all its bounds at once
# by ~10; a 1-px shift of the frame moves the flag box by ~12. VP8 coding noise on the still flag
# measured 0.1-2.5 in this test. So the mouth must change by > 15 (a jaw movement; sway alone rarely
# gets there, and the correlation below ties the change to the speech), the background by < 5.
MOUTH_MIN_CHANGE = 15.0
BACKGROUND_MAX_CHANGE = 5.0
# The mouth pixels must follow the rig, i.e. the speech: correlation of jawOpen (latest data channel
# message) with the mouth box's distance from its most closed sample. The rig arrives ahead of the
# video by the jitter buffer and decode delay, so the best of lags 0-320 ms counts. Measured ~0.9; a
# mouth that moved out of step with the speech (or only swayed) stays near 0.
MIN_JAW_CORRELATION = 0.5
MAX_LAG_SAMPLES = 4
MIN_FPS = 20.0
OPUS_RATE_HZ = 48_000


@pytest.fixture
def chromium() -> tuple[str, ModuleType]:
    """(chromium executable, playwright.sync_api); checked before the server is started."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    return exe, pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed: pip install playwright"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    pytest.fail(
        f"server not listening after {SERVER_START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}"
    )


@contextlib.contextmanager
def _serve(tmp_path: Path, *extra: str) -> Iterator[str]:
    """`stream-avatar serve` on a free loopback port in its own process group; yields its URL."""
    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "stream_avatar", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--size", str(SIZE), "--store", str(tmp_path / "store"), *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: killed whole at the end
        )
    try:
        _wait_for_port(proc, port, log)
        yield f"http://127.0.0.1:{port}/"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    with _serve(tmp_path) as url:
        yield url


@pytest.fixture
def mic_wav(speech_bursts: SpeechBursts, tmp_path: Path) -> Path:
    """The speech bursts as 16-bit mono WAV: what --use-file-for-fake-audio-capture reads (and loops)."""
    path = tmp_path / "mic.wav"
    pcm = np.clip(speech_bursts.samples * 32767.0, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(speech_bursts.sample_rate_hz)
        w.writeframes(pcm.tobytes())
    return path


# Runs in the page: samples the shown <video> into a canvas every `interval` ms for `duration` ms and
# returns grey levels of the two boxes, the rig at that instant, and getStats counters at both ends.
CAPTURE_JS = """
async ({duration, interval, mouth, background}) => {
  const sa = window.streamAvatar;
  const video = document.getElementById("video");
  const w = video.videoWidth, h = video.videoHeight;
  const ctx = Object.assign(document.createElement("canvas"), {width: w, height: h})
    .getContext("2d", {willReadFrequently: true});
  const grey = ([x0, y0, x1, y1]) => {
    const [l, t] = [Math.round(x0 * w), Math.round(y0 * h)];
    const d = ctx.getImageData(l, t, Math.round(x1 * w) - l, Math.round(y1 * h) - t).data;
    const out = [];
    for (let i = 0; i < d.length; i += 4) out.push(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]);
    return out;
  };
  const first = await sa.snapshot();
  const samples = [];
  const t0 = performance.now();
  while (performance.now() - t0 < duration) {
    ctx.drawImage(video, 0, 0, w, h);
    samples.push({mouth: grey(mouth), background: grey(background), jaw: sa.lastRig?.rig?.jawOpen ?? null});
    await new Promise((r) => setTimeout(r, interval));
  }
  const last = await sa.snapshot();
  return {first, last, samples, size: [w, h], paused: video.paused, muted: video.muted,
          tracks: video.srcObject.getTracks().map((t) => `${t.kind}:${t.readyState}`).sort(),
          audioPlaying: sa.audioPlaying, rigMessages: sa.rigMessages, errors: sa.errors,
          serverStats: sa.serverStats};
}
"""


def _page_with_console(browser: Any) -> tuple[Any, list[str]]:
    """A new page whose console messages and uncaught errors are collected (for failure messages)."""
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    return page, console


def _wait_live(page: Any, sync_api: ModuleType, console: list[str]) -> None:
    """Until the page is live with a decoded frame; else fail with its state, message and console."""
    try:
        page.wait_for_function(
            "() => window.streamAvatar.state === 'live' && window.streamAvatar.framesDecoded > 0"
            " && document.getElementById('video').videoWidth > 0",
            timeout=LIVE_TIMEOUT_MS,
        )
    except sync_api.TimeoutError:
        state = page.evaluate("() => [window.streamAvatar.state, window.streamAvatar.errors]")
        message = page.text_content("#message")
        pytest.fail(f"not live within {LIVE_TIMEOUT_MS} ms: {state}, {message!r}, console {console}")


def _best_lagged_correlation(jaw: np.ndarray, mouth: np.ndarray) -> float:
    """Max over lags of corr(jaw[t - lag], |mouth[t] - mouth at the lowest jaw|); jaw (n,), mouth (n, px)."""
    valid = ~np.isnan(jaw)
    if valid.sum() < 10 or np.nanstd(jaw) < 0.05:
        return 0.0
    rest = mouth[int(np.nanargmin(jaw))]
    opened = np.abs(mouth - rest).mean(axis=1)
    best = 0.0
    for lag in range(MAX_LAG_SAMPLES + 1):
        j, o = jaw[: len(jaw) - lag], opened[lag:]
        ok = ~np.isnan(j)
        best = max(best, float(np.corrcoef(j[ok], o[ok])[0, 1]))
    return best


def test_browser_talks(chromium: tuple[str, ModuleType], server_url: str, mic_wav: Path) -> None:
    exe, sync_api = chromium
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=args)
        try:
            page, console = _page_with_console(browser)
            page.goto(server_url)
            # The emotion menu starts at auto (the voice's emotion); intensity and mixing are for the others.
            assert page.input_value("#emotion") == "auto"
            assert page.is_disabled("#intensity") and page.is_disabled("#mix-auto")
            page.click("#connect")
            _wait_live(page, sync_api, console)
            hello = page.evaluate("window.streamAvatar.hello")
            assert hello["protocol"] == 8 and hello["emotion"] == "auto", hello  # the server's default
            r = page.evaluate(
                CAPTURE_JS,
                {
                    "duration": CAPTURE_S * 1000,
                    "interval": CAPTURE_INTERVAL_MS,
                    "mouth": MOUTH_BOX,
                    "background": BACKGROUND_BOX,
                },
            )
            # The emotion control reaches the server and comes back confirmed.
            page.select_option("#emotion", "surprised")
            page.wait_for_function("() => window.streamAvatar.emotion === 'surprised:0.7'", timeout=5000)
            page.check("#mix-auto")
            page.wait_for_function("() => window.streamAvatar.emotion === 'auto+surprised:0.7'", timeout=5000)
            # The rig channel's emotion probabilities reach the page's bars.
            page.wait_for_function(
                "() => Object.keys(window.streamAvatar.emotionShown ?? {}).length === 8", timeout=5000
            )
            emotion_bars = page.eval_on_selector_all(
                "#emotion-bars .rig-val", "els => els.map(e => e.textContent)"
            )
            # A reference clip goes up as emotion_ref; one that is no video comes back as bad_reference.
            page.set_input_files(
                "#reference",
                files=[{"name": "clip.webm", "mimeType": "video/webm", "buffer": b"not a video"}],
            )
            page.wait_for_function(
                "() => window.streamAvatar.errors.some((e) => e.code === 'bad_reference')", timeout=5000
            )
            # A photo at rest goes with the next clip as `neutral`; one that is no image is refused.
            page.set_input_files(
                "#reference-neutral",
                files=[{"name": "rest.png", "mimeType": "image/png", "buffer": b"not a photo"}],
            )
            page.wait_for_function(
                "() => document.querySelector('#reference-neutral-name').textContent !== ''"
            )
            page.set_input_files(
                "#reference",
                files=[
                    {"name": "clip.webm", "mimeType": "video/webm", "buffer": b"\x1a\x45\xdf\xa3" + bytes(64)}
                ],
            )
            page.wait_for_function(
                "() => window.streamAvatar.errors.some((e) => e.code === 'bad_reference'"
                " && e.message.includes('neutral image'))",
                timeout=10000,
            )
            page.click("#disconnect")
            assert page.evaluate("window.streamAvatar.state") == "idle"
        finally:
            browser.close()

    first, last = r["first"], r["last"]
    dt_s = (last["t"] - first["t"]) / 1000.0
    fps = (last["framesDecoded"] - first["framesDecoded"]) / dt_s
    audio_rate = (last["audioSamplesReceived"] - first["audioSamplesReceived"]) / dt_s
    mouth = np.array([s["mouth"] for s in r["samples"]])
    background = np.array([s["background"] for s in r["samples"]])
    mouth_change = np.abs(mouth - mouth[0]).mean(axis=1)
    background_change = np.abs(background - background[0]).mean(axis=1)
    jaw = np.array([s["jaw"] if s["jaw"] is not None else np.nan for s in r["samples"]])
    correlation = _best_lagged_correlation(jaw, mouth)
    jitter_ms = {
        kind: 1000.0
        * (last[f"{kind}JitterDelayS"] - first[f"{kind}JitterDelayS"])
        / max(1, last[f"{kind}JitterEmitted"] - first[f"{kind}JitterEmitted"])
        for kind in ("video", "audio")
    }
    summary = (
        f"size {r['size']}, {fps:.1f} fps over {dt_s:.1f} s, audio {audio_rate:.0f} samples/s, "
        f"mouth change max {mouth_change.max():.1f}, background change max {background_change.max():.2f}, "
        f"jawOpen max {np.nanmax(jaw):.2f}, jaw/mouth correlation {correlation:.2f}, "
        f"rig messages {r['rigMessages']}, errors {r['errors']}, "
        f"browser jitter buffer video {jitter_ms['video']:.0f} ms / audio {jitter_ms['audio']:.0f} ms, "
        f"server {r['serverStats']}"
    )
    print(summary, hello)

    assert r["size"] == [SIZE, SIZE], summary
    assert dt_s >= 3.0, summary
    assert fps >= MIN_FPS, summary
    # The avatar's voice plays: the element runs unmuted and the decoder delivers ~48 k samples/s.
    assert r["tracks"] == ["audio:live", "video:live"], summary
    assert not r["paused"] and not r["muted"] and r["audioPlaying"], summary
    assert audio_rate >= 0.8 * OPUS_RATE_HZ, summary
    assert r["rigMessages"] > 0 and np.nanmax(jaw) > 0.2, summary
    assert mouth_change.max() > MOUTH_MIN_CHANGE, summary
    assert correlation > MIN_JAW_CORRELATION, summary
    assert background_change.max() < BACKGROUND_MAX_CHANGE, summary
    assert not r["errors"], summary
    assert len(emotion_bars) == 8 and all(v != "–" for v in emotion_bars), emotion_bars


def test_a_refused_session_tells_the_visitor_why(chromium: tuple[str, ModuleType], tmp_path: Path) -> None:
    """A browser cannot read a refused upgrade's body: the page asks /status and shows the reason."""
    from websockets.sync.client import connect

    exe, sync_api = chromium
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with _serve(tmp_path, "--max-sessions", "1") as url, connect(url.replace("http", "ws") + "ws") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"  # the one session this server takes
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=args)
            try:
                page = browser.new_page()
                page.goto(url)
                page.click("#connect")
                page.wait_for_function(
                    "document.getElementById('message').textContent.includes('server busy')", timeout=15000
                )
                text = page.text_content("#message") or ""
                assert "session limit (1)" in text, text
            finally:
                browser.close()


def test_a_viewer_watches_a_pcm_stream_without_a_microphone(
    chromium: tuple[str, ModuleType], tmp_path: Path, speech_bursts: SpeechBursts
) -> None:
    """`/?watch=ID`: a TTS-like client drives a stream over /pcm; the page (no microphone, no media
    permission) shows it: video decoded, its voice playing, the mouth opening with the PCM."""
    from websockets.sync.client import connect

    exe, sync_api = chromium
    pcm = np.clip(speech_bursts.samples * 32767.0, -32768, 32767).astype("<i2")
    with _serve(tmp_path) as url, connect(url.replace("http", "ws") + "pcm", max_size=1 << 20) as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["type"] == "hello" and hello["watch"] == f"/?watch={hello['stream']}"
        with sync_api.sync_playwright() as pw:
            args = ["--autoplay-policy=no-user-gesture-required"]  # and no fake media devices
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=args)
            try:
                page, console = _page_with_console(browser)
                page.goto(url.rstrip("/") + hello["watch"])
                assert page.text_content("#connect") == "Watch" and page.is_disabled("#emotion")
                page.click("#connect")
                _wait_live(page, sync_api, console)
                for _ in range(2):  # the bursts twice, each sent at once like a TTS sentence
                    ws.send(json.dumps({"type": "utterance", "sample_rate": speech_bursts.sample_rate_hz}))
                    ws.send(pcm.tobytes())
                    ws.send(json.dumps({"type": "end"}))
                jaws: list[float] = []
                t_end = time.monotonic() + 2 * speech_bursts.samples.size / speech_bursts.sample_rate_hz
                while time.monotonic() < t_end:
                    jaw = page.evaluate("window.streamAvatar.lastRig?.rig?.jawOpen ?? null")
                    if jaw is not None:
                        jaws.append(float(jaw))
                    time.sleep(0.05)
                live = page.evaluate(
                    "() => window.streamAvatar.snapshot().then((s) => ({s,"
                    " rig: window.streamAvatar.rigMessages, errors: window.streamAvatar.errors}))"
                )
            finally:
                browser.close()
    assert not live["errors"], live["errors"]
    assert live["rig"] > 100 and live["s"]["framesDecoded"] > 100, live
    assert live["s"]["audioSamplesReceived"] > OPUS_RATE_HZ * 5, live
    assert len(jaws) > 50 and max(jaws) > 0.3 and min(jaws) < 0.05, (min(jaws), max(jaws))

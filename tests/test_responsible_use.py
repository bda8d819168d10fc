"""Responsible use (issue 12): the visible "AI-generated" badge, consent at enrollment, the audit log."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import websockets

from stream_avatar import cli
from stream_avatar.avatar.consent import ConsentError, read_consent_file, require_consent
from stream_avatar.avatar.store import DEFAULT_AVATAR_IMAGE, Avatar, AvatarStore
from stream_avatar.config import ConfigError, DisclosureConfig, WatermarkConfig, load_config
from stream_avatar.offline import render_file
from stream_avatar.provenance.audit import AuditLog, default_audit_path
from stream_avatar.provenance.disclosure import DisclosureBadge, make_badge
from stream_avatar.server.app import AvatarServer, ServerSettings
from stream_avatar.server.client import PcmPublisher
from stream_avatar.server.session import SessionSettings
from stream_avatar.session.engine import AvatarEngine, build_engine
from tests.fakes import TEST_CONSENT, FakeDriver, FakeIdle, FakeRenderer, tone

SIZE = 128
FPS = 25
UNCONSENTED_ID = "0123456789abcdef"


class _Builder:
    """Stands in for the renderer's precompute (enrollment tests need no render tensors)."""

    calls = 0

    def __call__(self, image: np.ndarray, landmarks: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        import torch

        self.calls += 1
        return {"image": torch.from_numpy(image.copy())}


def _store(root: Path) -> tuple[AvatarStore, _Builder]:
    builder = _Builder()
    return AvatarStore(root, build_tensors=builder, render_version="test"), builder


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------- disclosure


def test_badge_touches_only_its_corner_and_follows_the_config() -> None:
    frames = np.full((2, 256, 256, 3), 120, np.uint8)
    badge = DisclosureBadge()
    y0, y1, x0, x1 = badge.region(256, 256)
    assert y1 > 200 and x1 > 200 and (y1 - y0) >= 11  # bottom-right by default, legible height
    out = badge.apply(frames)
    assert out is frames  # in place
    inside = np.abs(frames[:, y0:y1, x0:x1].astype(int) - 120)
    assert inside.mean() > 20 and inside.max() > 100  # dark box, white text
    outside = frames.copy()
    outside[:, y0:y1, x0:x1] = 120
    assert (outside == 120).all()
    # Position and opacity are configurable; a read-only frame is composited on a copy.
    top_left = DisclosureBadge(DisclosureConfig(position="top-left", opacity=0.4, text="Synthetic video"))
    ty0, _, tx0, _ = top_left.region(256, 256)
    assert ty0 < 20 and tx0 < 20
    frozen = np.full((256, 256, 3), 120, np.uint8)
    frozen.flags.writeable = False
    faint = top_left.apply(frozen)
    assert faint is not frozen and (frozen == 120).all()
    assert 0 < np.abs(faint.astype(int) - 120).max() < np.abs(frames[0].astype(int) - 120).max()


def test_badge_config_keys_flags_and_errors(tmp_path: Path) -> None:
    cfg = load_config(environ={})
    assert cfg.disclosure == DisclosureConfig() and cfg.disclosure.enabled
    toml = tmp_path / "sa.toml"
    toml.write_text(
        '[disclosure]\nenabled = false\ntext = "Synthetic"\nposition = "top-right"\nopacity = 0.5\n'
    )
    cfg = load_config(config_path=toml, environ={})
    assert cfg.disclosure == DisclosureConfig(False, "Synthetic", "top-right", 0.5)
    assert load_config({"disclosure": True}, config_path=toml, environ={}).disclosure.enabled
    assert not load_config(environ={"STREAM_AVATAR_DISCLOSURE": "off"}).disclosure.enabled
    for overrides, fragment in (
        ({"disclosure_opacity": 0.0}, "opacity"),
        ({"disclosure_position": "middle"}, "position"),
        ({"disclosure_text": " "}, "enabled = false"),
        ({"disclosure_text": "ИИ"}, "ASCII"),
        ({"disclosure": "maybe"}, "true or false"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            load_config(overrides, environ={})
    args = cli.build_parser().parse_args(
        [
            "render",
            "--audio",
            "a.wav",
            "--out",
            "o.mp4",
            "--no-disclosure",
            "--disclosure-position",
            "top-left",
        ]
    )
    cfg = cli._config(args)
    assert not cfg.disclosure.enabled and cfg.disclosure.position == "top-left"


def test_turning_the_badge_off_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert make_badge(DisclosureConfig()) is not None
        assert not caplog.records
        assert make_badge(DisclosureConfig(enabled=False)) is None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "disclosure.enabled" in record.getMessage()


async def test_engine_composites_the_badge_into_every_frame() -> None:
    async def frames(disclosure: DisclosureBadge | None) -> list[np.ndarray]:
        engine = AvatarEngine(FakeRenderer(64), FakeDriver(FPS), FakeIdle(), fps=FPS, disclosure=disclosure)
        async with engine:
            engine.push_audio(tone(0.2, 16000), 16000)
            engine.end_input()
            return [item.frame async for item in engine]

    plain, badged = await frames(None), await frames(DisclosureBadge())
    y0, y1, x0, x1 = DisclosureBadge().region(64, 64)
    assert len(plain) == len(badged) == 5
    for a, b in zip(plain, badged, strict=True):
        assert np.abs(a[y0:y1, x0:x1].astype(int) - b[y0:y1, x0:x1]).mean() > 20
        assert np.array_equal(a[:y0], b[:y0])


def _wav(path: Path, seconds: float = 0.4) -> Path:
    pcm = (tone(seconds, 16000, amp=0.3) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def _first_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(container.streams.video[0]))
        return np.asarray(frame.to_ndarray(format="rgb24"))


def test_offline_render_carries_the_badge_unless_configured_off_and_is_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wav = _wav(tmp_path / "speech.wav")
    store = tmp_path / "store"
    # The invisible mark carries the time, so two renders a second apart differ all over the frame:
    # it is off in both, so the comparison sees the badge alone (the mark has its own tests).
    unmarked = WatermarkConfig(enabled=False)
    with caplog.at_level(logging.WARNING):
        on = render_file(
            wav,
            tmp_path / "on.mp4",
            None,
            "dsp",
            size=SIZE,
            progress=False,
            store_dir=store,
            watermark=unmarked,
        )
        assert not [r for r in caplog.records if "disclosure" in r.getMessage()]
        off = render_file(
            wav,
            tmp_path / "off.mp4",
            None,
            "dsp",
            size=SIZE,
            progress=False,
            store_dir=store,
            disclosure=DisclosureConfig(enabled=False),
            watermark=unmarked,
        )
    assert [
        r for r in caplog.records if r.levelno == logging.WARNING and "disclosure.enabled" in r.getMessage()
    ]
    a, b = _first_frame(on.path).astype(int), _first_frame(off.path).astype(int)
    y0, y1, x0, x1 = DisclosureBadge().region(SIZE, SIZE)
    assert np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean() > 15  # the badge is there ...
    assert np.abs(a[: SIZE // 2, : SIZE // 2] - b[: SIZE // 2, : SIZE // 2]).mean() < 2  # ... and only there

    lines = (store / "audit.jsonl").read_text().splitlines()  # the default: beside the store
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["render_start", "render_end"] * 2
    end = records[1]
    assert end["status"] == "ok" and end["frames"] == on.frames and end["kind"] == "render"
    assert end["avatar"] and end["consented"] is True and end["input"] == "speech.wav"
    assert end["disclosure"] is True and records[3]["disclosure"] is False
    assert records[0]["session"] == end["session"] != records[2]["session"]


# ---------------------------------------------------------------------------------------- consent


def test_enrollment_without_consent_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st, builder = _store(tmp_path / "store")
    for consent in (None, "", "   "):
        with pytest.raises(ConsentError) as err:
            st.enroll(DEFAULT_AVATAR_IMAGE, consent=consent)
        message = str(err.value)
        assert "refused" in message and "--consent" in message and "\n" not in message
    with pytest.raises(ConsentError, match="consent"):
        st.resolve(DEFAULT_AVATAR_IMAGE)  # an image enrolled on the fly needs one too
    assert builder.calls == 0 and st.ids() == []
    code, out, stderr = _run_cli(capsys, "enroll", str(DEFAULT_AVATAR_IMAGE), "--store", str(tmp_path / "s2"))
    assert code == 2 and out == ""
    assert stderr.startswith("error: enrollment for 'astronaut.png' refused: no consent record")
    assert "--consent-file" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s2").exists()


def test_consent_is_stored_and_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    st, builder = _store(root)
    record_file = tmp_path / "consent.json"
    record_file.write_text(json.dumps({"who": "Eileen Collins (NASA portrait)", "scope": "tests only"}))
    avatar = st.enroll(DEFAULT_AVATAR_IMAGE, size=SIZE, consent=read_consent_file(record_file))
    assert avatar.consent is not None and avatar.consent["source"] == "file consent.json"
    assert avatar.consent["statement"] == {"who": "Eileen Collins (NASA portrait)", "scope": "tests only"}
    stored = json.loads((root / avatar.id / "meta.json").read_text())["consent"]
    assert stored == avatar.consent and stored["recorded_at"].endswith("Z")
    assert st.load(avatar.id).consent == stored

    code, out, _ = _run_cli(capsys, "avatars", "list", "--store", str(root))
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["ID", "SIZE", "SOURCE", "CONSENT"]
    assert row.startswith(avatar.id) and "astronaut.png" in row and "Eileen Collins (NASA portrait)" in row

    # Enrolled again with another record: the record is replaced, nothing is recomputed.
    again = st.enroll(DEFAULT_AVATAR_IMAGE, size=SIZE, consent=TEST_CONSENT)
    assert again.id == avatar.id and builder.calls == 1
    assert again.consent is not None and again.consent["statement"] == TEST_CONSENT
    code, out, _ = _run_cli(capsys, "avatars", "list", "--store", str(root), "--json")
    (listed,) = [json.loads(line) for line in out.splitlines()]
    assert listed["id"] == avatar.id and listed["consent"]["statement"] == TEST_CONSENT

    # An avatar stored without a record (enrolled before records were kept) is listed as such
    # and refused for use unless allowed.
    meta_path = root / avatar.id / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["consent"]
    meta_path.write_text(json.dumps(meta))
    old = st.load(avatar.id)
    with pytest.raises(ConsentError, match="allow_unconsented_avatars"):
        require_consent(old)
    assert require_consent(old, allow_unconsented=True) is old
    _, out, _ = _run_cli(capsys, "avatars", "list", "--store", str(root))
    assert "NONE (no consent record)" in out


def test_the_default_avatar_carries_its_public_domain_record(default_avatar: Callable[[int], Avatar]) -> None:
    avatar = default_avatar(SIZE)  # enrolled by the store's resolve(None), as `make run` does
    assert avatar.consent is not None
    assert "Public domain" in avatar.consent["statement"] and "PROVENANCE.md" in avatar.consent["statement"]
    assert avatar.consent["source"] == "shipped default avatar"
    assert require_consent(avatar) is avatar


def test_render_refuses_an_unconsented_avatar_unless_configured(
    tmp_path: Path, default_avatar: Callable[[int], Avatar]
) -> None:
    unconsented = dataclasses.replace(default_avatar(SIZE), id=UNCONSENTED_ID, meta={})
    wav = _wav(tmp_path / "a.wav", 0.2)
    audit = tmp_path / "audit.jsonl"
    with pytest.raises(ConsentError, match="no consent record"):
        render_file(wav, tmp_path / "x.mp4", unconsented, "dsp", progress=False, audit_log=audit)
    assert not (tmp_path / "x.mp4").exists() and not audit.exists()
    result = render_file(
        wav,
        tmp_path / "y.mp4",
        unconsented,
        "dsp",
        progress=False,
        audit_log=audit,
        allow_unconsented_avatars=True,
    )
    assert result.frames == 5
    assert [json.loads(line)["consented"] for line in audit.read_text().splitlines()] == [False, False]


# ----------------------------------------------------------------------------------------- server


def _server(avatar: Avatar, audit: AuditLog | None = None, allow: bool = False) -> AvatarServer:
    from stream_avatar.render.renderer import RendererWrapper

    unconsented = dataclasses.replace(avatar, id=UNCONSENTED_ID, meta={})

    def resolve(spec: str) -> Avatar:
        if spec == UNCONSENTED_ID:
            return unconsented
        if spec in ("default", avatar.id):
            return avatar
        raise ValueError(f"no avatar {spec}")

    settings = ServerSettings(
        port=0,
        measured_admission=False,
        allow_unconsented_avatars=allow,
        session=SessionSettings(fps=FPS, size=SIZE, emotion="neutral"),
    )
    return AvatarServer(
        settings,
        resolve,
        lambda a: build_engine(a, driver="dsp", device="cpu", packet_lead=True, infer_emotion=False),
        lambda a: RendererWrapper(a.tensors, "cpu"),
        default_avatar=UNCONSENTED_ID if allow else "default",
        audit=audit,
    )


async def _ask_avatar(srv: AvatarServer, avatar_id: str) -> dict[str, Any]:
    async with websockets.connect(srv.url.replace("http", "ws") + "/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"type": "avatar", "avatar": avatar_id}))
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        return reply


async def test_server_refuses_an_unconsented_avatar_unless_configured(
    default_avatar: Callable[[int], Avatar],
) -> None:
    avatar = default_avatar(SIZE)
    srv = _server(avatar)
    with pytest.raises(ConsentError, match=UNCONSENTED_ID):  # as the configured avatar: at start
        srv.preload(UNCONSENTED_ID)
    await srv.start()
    try:
        reply = await _ask_avatar(srv, UNCONSENTED_ID)
        assert reply["type"] == "error" and reply["code"] == "no_consent", reply
        assert "consent" in reply["message"]
        assert (await _ask_avatar(srv, avatar.id))["type"] == "avatar"  # a consented one is fine
        publisher = PcmPublisher(srv.url, avatar=UNCONSENTED_ID)
        with pytest.raises(RuntimeError, match="no_consent"):
            await publisher.connect(timeout_s=10)
        await publisher.close()
    finally:
        await srv.aclose()

    allowed = _server(avatar, allow=True)
    assert allowed.preload(UNCONSENTED_ID).id == UNCONSENTED_ID
    await allowed.start()
    try:
        reply = await _ask_avatar(allowed, UNCONSENTED_ID)
        assert reply == {"type": "avatar", "avatar": UNCONSENTED_ID}
    finally:
        await allowed.aclose()


async def test_the_audit_log_records_sessions_and_streams(
    tmp_path: Path, default_avatar: Callable[[int], Avatar]
) -> None:
    avatar = default_avatar(SIZE)
    path = tmp_path / "logs" / "audit.jsonl"
    srv = _server(avatar, audit=AuditLog(path))
    await srv.start()
    try:
        await _ask_avatar(srv, avatar.id)  # a signaling session that switches avatar, then leaves
        publisher = PcmPublisher(srv.url)
        hello = await publisher.connect()
        pcm = (tone(0.5, 16000, amp=0.3) * 32767).astype(np.int16)
        await publisher.say(pcm, 16000, "u1")
        await publisher.next_event("playback_finished", id="u1", timeout_s=20)
        await publisher.close()
        for _ in range(200):  # the server writes the end line once it has closed the stream
            if path.is_file() and path.read_text().count("session_end") == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        await srv.aclose()
    raw = path.read_text()
    assert raw.endswith("\n")
    records = [json.loads(line) for line in raw.splitlines()]  # every line is one JSON object
    events = [(r["event"], r["kind"]) for r in records if "kind" in r]
    assert events == [
        ("session_start", "session"),
        ("session_end", "session"),
        ("session_start", "pcm"),
        ("session_end", "pcm"),
    ]
    change = next(r for r in records if r["event"] == "avatar_change")
    ws_start, ws_end, pcm_start, pcm_end = (r for r in records if "kind" in r)
    assert change["avatar"] == avatar.id and change["session"] == ws_start["session"]
    assert (
        ws_start["session"] == ws_end["session"]
        and pcm_start["session"] == pcm_end["session"] == hello["stream"]
    )
    for r in records:
        assert r["remote"].startswith("127.0.0.1:") and r["time"].endswith("Z")
        assert not {"audio", "pcm", "samples", "data"} & set(r)  # identifiers and numbers only
        assert len(json.dumps(r)) < 400
    assert pcm_end["avatar"] == avatar.id and pcm_end["consented"] is True
    assert pcm_end["frames"] >= 12 and pcm_end["duration_s"] >= 0.5
    assert ws_end["frames"] == 0 and ws_end["duration_s"] >= 0


def test_audit_log_appends_and_has_a_default_beside_the_store(tmp_path: Path) -> None:
    path = tmp_path / "a" / "audit.jsonl"
    path.parent.mkdir()
    path.write_text('{"event": "earlier"}\n')
    log = AuditLog(path)
    log.check()
    log.record("session_start", session="s1", avatar="x", remote=None)
    AuditLog(path).record("session_end", session="s1", frames=3)
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["earlier", "session_start", "session_end"]
    assert default_audit_path(tmp_path / "store") == tmp_path / "store" / "audit.jsonl"
    assert default_audit_path(None).name == "audit.jsonl"
    assert load_config({"audit_log": str(path)}, environ={}).audit.path == path

"""Provenance of rendered files: the record in the MP4, reviews, and the signed C2PA manifest."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream_avatar.provenance import record as pr


def _mp4(path: Path, rec: dict | None, frames: int = 12) -> Path:
    """A small H.264 + AAC file, as the offline writer makes, with ``rec`` as its provenance."""
    with av.open(str(path), "w", format="mp4") as c:
        if rec is not None:
            c.metadata.update(pr.container_metadata(rec))
        v = c.add_stream("libx264", rate=25)
        v.width = v.height = 64
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono")
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 10 * i, np.uint8), format="rgb24")
            f.pts = i
            c.mux(v.encode(f))
            af = av.AudioFrame.from_ndarray(np.zeros((1, 640), np.float32), format="fltp", layout="mono")
            af.sample_rate = 16000
            af.pts = i * 640
            c.mux(a.encode(af))
        c.mux(v.encode(None))
        c.mux(a.encode(None))
    return path


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_record_round_trip_and_absent_record(tmp_path: Path) -> None:
    rec = pr.make_record("0123456789abcdef", "auto+happy:0.3", driver="learned")
    marked = _mp4(tmp_path / "a.mp4", rec)
    back = pr.read_record(marked)
    assert back == rec
    assert back["generator"] == "stream_avatar" and back["ai_generated"] is True
    assert pr.read_record(_mp4(tmp_path / "b.mp4", None)) is None
    (tmp_path / "c.txt").write_text("not media")
    assert pr.read_record(tmp_path / "c.txt") is None


def test_review_appends_and_keeps_the_media(tmp_path: Path) -> None:
    path = _mp4(tmp_path / "r.mp4", pr.make_record("av1", "neutral"))
    before = _frames(path)
    pr.review_file(path, "Ada Lovelace", "approved for the webinar")
    pr.review_file(path, "Grace Hopper")
    reviews = pr.read_record(path)["reviews"]
    assert [r["by"] for r in reviews] == ["Ada Lovelace", "Grace Hopper"]
    assert reviews[0]["note"] == "approved for the webinar" and "note" not in reviews[1]
    dt.datetime.fromisoformat(reviews[0]["at"])
    after = _frames(path)  # remuxed, not re-encoded: the very same pictures
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    with av.open(str(path)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_review_refuses_what_it_cannot_mark(tmp_path: Path) -> None:
    with pytest.raises(pr.ProvenanceError, match="no provenance record"):
        pr.review_file(_mp4(tmp_path / "x.mp4", None), "Ada")
    with pytest.raises(pr.ProvenanceError, match="reviewer"):
        pr.review_file(_mp4(tmp_path / "y.mp4", pr.make_record("a", "neutral")), "  ")
    with pytest.raises(pr.ProvenanceError, match="no such file"):
        pr.review_file(tmp_path / "missing.mp4", "Ada")


def test_signing_config_from_args_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pr.CERT_ENV, raising=False)
    monkeypatch.delenv(pr.KEY_ENV, raising=False)
    assert pr.SigningConfig.from_args() is None
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    with pytest.raises(pr.ProvenanceError, match="both"):
        pr.SigningConfig.from_args(cert=cert)
    with pytest.raises(pr.ProvenanceError, match="not a file"):
        pr.SigningConfig.from_args(cert=cert, key=tmp_path / "nope.pem")
    monkeypatch.setenv(pr.CERT_ENV, str(cert))
    monkeypatch.setenv(pr.KEY_ENV, str(key))
    assert pr.SigningConfig.from_args() == pr.SigningConfig(cert, key)


@pytest.fixture(scope="module")
def test_signer(tmp_path_factory: pytest.TempPathFactory) -> pr.SigningConfig:
    """A throw-away test root CA and an ES256 signing certificate it issued (PEM chain + key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stream_avatar tests"),
            ]
        )

    def usage(ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("stream_avatar test root"))
        .issuer_name(name("stream_avatar test root"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("stream_avatar test signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("c2pa")
    chain, pem = d / "chain.pem", d / "key.pem"
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pr.SigningConfig(chain, pem)


def test_c2pa_manifest_signed_and_read_back_with_its_review(
    tmp_path: Path, test_signer: pr.SigningConfig
) -> None:
    if not pr.c2pa_available():
        pytest.skip("c2pa-python is not installed (the optional 'c2pa' extra)")
    rec = pr.make_record("av-c2pa", "happy:0.7", driver="learned")
    path = _mp4(tmp_path / "s.mp4", rec)
    assert pr.read_c2pa(path) is None  # no manifest yet
    pr.sign_file(path, test_signer)
    got = pr.read_c2pa(path)
    assert got is not None and got["validation_state"] in ("Valid", "Trusted")
    assert got["provenance"] == rec
    assert got["actions"][0]["action"] == "c2pa.created"
    assert got["actions"][0]["digitalSourceType"] == pr.TRAINED_ALGORITHMIC_MEDIA
    assert pr.read_record(path) == rec  # the plain record survives signing

    pr.review_file(path, "Ada", "ok to publish", signing=test_signer)
    got = pr.read_c2pa(path)
    assert got is not None and got["validation_state"] in ("Valid", "Trusted")
    assert [r["by"] for r in got["reviews"]] == ["Ada"] and got["manifests"] == 2
    assert got["provenance"]["reviews"][0]["note"] == "ok to publish"
    assert pr.read_record(path)["reviews"][0]["by"] == "Ada"

    # Tampering: a byte of the media changed → the manifest no longer validates.
    data = bytearray(path.read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + 64] ^= 0xFF
    bad = tmp_path / "tampered.mp4"
    bad.write_bytes(bytes(data))
    assert pr.read_c2pa(bad)["validation_state"] == "Invalid"


# ------------------------------------------------------------------ a real render, end to end


def test_render_is_watermarked_and_carries_its_record_then_verify_and_review(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``render`` → the mark (this instance, the avatar, the time) in the frames and the record in
    the metadata; ``verify`` reads both; ``review`` adds the reviewer; ``--no-watermark`` is logged."""
    import logging
    import wave

    from stream_avatar import cli
    from stream_avatar.config import WatermarkConfig
    from stream_avatar.offline import render_file
    from stream_avatar.provenance import watermark as watermark_module
    from stream_avatar.provenance.watermark import verify_file
    from tests.fakes import tone

    wav = tmp_path / "speech.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((tone(1.0, 16000, amp=0.3) * 32767).astype("<i2").tobytes())
    store = tmp_path / "store"
    out = tmp_path / "marked.mp4"
    result = render_file(
        wav,
        out,
        None,
        "dsp",
        size=256,
        progress=False,
        store_dir=store,
        emotion={"happy": 0.7},
        watermark=WatermarkConfig(instance_id="support-eu-1"),
    )
    rec = pr.read_record(out)
    assert rec is not None and rec["emotion"] == "happy:0.7" and rec["driver"] == "dsp"
    assert rec["instance_id"] == "support-eu-1" and rec["watermark"] is True and rec["disclosure"] is True
    avatar_id = rec["avatar_id"]
    report = verify_file(out, instance_id="support-eu-1", avatar_id=avatar_id)
    assert report["marked"] and report["matches"] == {"instance_id": True, "avatar_id": True}, report
    assert result.frames == 25

    code = cli.main(["verify", str(out), "--avatar-id", avatar_id])
    text = capsys.readouterr().out
    assert code == 0 and "marked" in text and "avatar_id: matches" in text and "reviewed: no" in text
    assert cli.main(["review", str(out), "--by", "Ada", "--note", "checked the lips"]) == 0
    capsys.readouterr()
    assert cli.main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "reviewed by Ada" in text and "checked the lips" in text
    assert verify_file(out, avatar_id=avatar_id)["marked"]  # the remux kept the pictures

    monkeypatch.setattr(watermark_module, "_warned_off", False)  # warned once per process
    with caplog.at_level(logging.WARNING):
        plain = render_file(
            wav,
            tmp_path / "plain.mp4",
            None,
            "dsp",
            size=256,
            progress=False,
            store_dir=store,
            watermark=WatermarkConfig(enabled=False),
        )
    assert [r for r in caplog.records if "watermark.enabled = false" in r.getMessage()]
    assert not verify_file(plain.path)["marked"]
    assert pr.read_record(plain.path)["watermark"] is False
    assert cli.main(["verify", str(plain.path)]) == 0
    assert "no mark" in capsys.readouterr().out


async def test_the_mark_follows_an_avatar_switch() -> None:
    """``set_renderer(renderer, avatar_id)`` (a session switching avatars): later frames carry the new
    avatar's id in the watermark, earlier ones the old."""
    from stream_avatar.provenance.watermark import Watermarker, verify_frames
    from stream_avatar.session.engine import AvatarEngine
    from tests.fakes import FakeDriver, FakeIdle, FakeRenderer, tone

    renderer = FakeRenderer(256)
    marker = Watermarker.for_ids("inst", "first-avatar", 0.0)
    engine = AvatarEngine(renderer, FakeDriver(25), FakeIdle(), fps=25, watermark=marker)
    frames = []
    async with engine:
        engine.push_audio(tone(0.4, 16000), 16000)
        await asyncio.sleep(0)
        while len(frames) < 5:
            frames.append((await engine.__anext__()).frame)
        engine.set_renderer(renderer, "second-avatar")
        engine.push_audio(tone(0.8, 16000), 16000)
        engine.end_input()
        later = [item.frame async for item in engine]
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    assert verify_frames(gray, avatar_id="first-avatar")["matches"]["avatar_id"]
    tail = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in later[-5:]]
    assert verify_frames(tail, avatar_id="second-avatar")["matches"]["avatar_id"]

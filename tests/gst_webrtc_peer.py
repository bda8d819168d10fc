"""A WHIP publisher or WHEP player built on GStreamer's webrtcbin, for the interop tests.

Run by ``tests/test_whip_whep.py`` with the system Python (PyGObject and GStreamer come from Debian:
python3-gi, gir1.2-gst-plugins-bad-1.0, gstreamer1.0-plugins-{base,good,bad}, gstreamer1.0-nice), not
the project's virtual environment. webrtcbin is the WebRTC stack of GStreamer's own WHIP/WHEP
elements (whipsink, whepsrc): libnice for ICE, GStreamer's DTLS (an RSA certificate) and SRTP, so it
checks the server against another implementation than aiortc's.

usage: gst_webrtc_peer.py whip|whep URL SECONDS [BEARER_TOKEN]

Non-trickle: the offer goes out once ICE gathering is complete (every candidate in it). ``whip`` sends
a 220 Hz tone as Opus; ``whep`` receives VP8 video and Opus audio and decodes them. One JSON object
per line on stdout: ``{"event": "post", "status": 201}``, ``{"event": "connection", "state": ...}``,
``{"event": "decoded", "video": N, "audio": M}`` (whep, at the end), ``{"event": "delete", ...}``.
The exit status is 0 when the connection reached "connected".
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

REQUIRED_ELEMENTS = (
    "webrtcbin",
    "nicesrc",
    "dtlsenc",
    "srtpenc",
    "opusenc",
    "rtpopuspay",
    "vp8dec",
    "opusdec",
)


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    mode, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    token = sys.argv[4] if len(sys.argv) > 4 else None
    Gst.init(None)
    missing = [n for n in REQUIRED_ELEMENTS if Gst.ElementFactory.find(n) is None]
    if missing:
        emit(event="missing", elements=missing)
        return 3
    if mode == "whip":
        pipe = Gst.parse_launch(
            "webrtcbin name=w bundle-policy=max-bundle "
            "audiotestsrc is-live=true wave=sine freq=220 volume=0.5 ! audioconvert ! audioresample ! "
            "opusenc ! rtpopuspay pt=111 ! "
            "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! w."
        )
        webrtc = pipe.get_by_name("w")
    elif mode == "whep":
        pipe = Gst.Pipeline.new("player")
        webrtc = Gst.ElementFactory.make("webrtcbin", "w")
        webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        pipe.add(webrtc)
        recv = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
        for caps in (
            "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
            "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000",
        ):
            webrtc.emit("add-transceiver", recv, Gst.Caps.from_string(caps))
    else:
        raise SystemExit(f"unknown mode {mode!r}: whip or whep")

    loop = GLib.MainLoop()
    state: dict[str, object] = {"connected": False}
    decoded = {"video": 0, "audio": 0}
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def count(kind: str) -> object:
        def probe(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
            decoded[kind] += 1
            return Gst.PadProbeReturn.OK

        return probe

    def on_decoded_pad(_bin: Gst.Element, pad: Gst.Pad) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        kind = "video" if caps.to_string().startswith("video/") else "audio"
        sink = Gst.ElementFactory.make("fakesink", None)
        sink.set_property("sync", False)
        pipe.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))
        pad.add_probe(Gst.PadProbeType.BUFFER, count(kind))

    def on_incoming(_el: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin", None)
        decode.connect("pad-added", on_decoded_pad)
        pipe.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def post_offer() -> None:
        sdp = webrtc.get_property("local-description").sdp.as_text()
        req = urllib.request.Request(url, data=sdp.encode(), method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                emit(event="post", status=resp.status)
                state["location"] = resp.headers["Location"]
                answer = resp.read().decode()
        except urllib.error.HTTPError as exc:
            emit(event="post", status=exc.code, body=exc.read().decode(errors="replace")[:300])
            loop.quit()
            return
        _, msg = GstSdp.SDPMessage.new_from_text(answer)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        webrtc.emit("set-remote-description", desc, Gst.Promise.new())
        GLib.timeout_add(int(seconds * 1000), loop.quit)

    def on_gathering(el: Gst.Element, _param: object) -> None:
        done = el.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE
        if done and "posted" not in state:
            state["posted"] = True
            GLib.idle_add(post_offer)

    def on_offer(promise: Gst.Promise, el: Gst.Element, _data: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
        if offer is None:
            # Before the sender's caps are known webrtcbin cannot make an offer yet: ask again.
            emit(event="offer_retry", reply=reply.to_string() if reply is not None else None)
            GLib.timeout_add(100, lambda: on_negotiation(el) and False)
            return
        el.emit("set-local-description", offer, Gst.Promise.new())

    def on_negotiation(el: Gst.Element) -> None:
        el.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, el, None))

    def on_connection(el: Gst.Element, _param: object) -> None:
        nick = el.get_property("connection-state").value_nick
        emit(event="connection", state=nick)
        if nick == "connected":
            state["connected"] = True
        elif nick == "failed":
            loop.quit()

    webrtc.connect("on-negotiation-needed", on_negotiation)
    webrtc.connect("notify::ice-gathering-state", on_gathering)
    webrtc.connect("notify::connection-state", on_connection)
    webrtc.connect("pad-added", on_incoming)
    pipe.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int((seconds + 20.0) * 1000), loop.quit)  # a hung handshake ends too
    loop.run()
    if mode == "whep":
        emit(event="decoded", **decoded)
    if "location" in state:
        base = url.split("/whip/")[0] if mode == "whip" else url.split("/whep/")[0]
        req = urllib.request.Request(base + str(state["location"]), method="DELETE", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                emit(event="delete", status=resp.status)
        except urllib.error.HTTPError as exc:
            emit(event="delete", status=exc.code)
    pipe.set_state(Gst.State.NULL)
    return 0 if state["connected"] else 1


if __name__ == "__main__":
    sys.exit(main())

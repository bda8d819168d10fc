// One avatar session: the signaling WebSocket and the RTCPeerConnection (docs/protocol.md, version 8).
// A presenter sends the microphone; a viewer (`negotiate(null, {watch: STREAM_ID})`) only receives.
//
// Events (CustomEvent, payload in `detail`): "hello", "stats", "cleared", "avatar", "emotion", "ended"
// (the watched stream ended), "servererror"
// (the server's `error` messages: shown, never thrown), "rtt" (ms, from ping/pong), "rig" (one data
// channel message), "track" (a remote MediaStreamTrack), "connectionstate" (pc.connectionState),
// "closed" (the WebSocket closed; `detail` says why).

const HELLO_TIMEOUT_MS = 10000;
const ANSWER_TIMEOUT_MS = 20000;
// Non-trickle ICE: the offer waits for gathering to finish. On loopback and LAN that takes a few
// milliseconds; the cap only matters when a network interface stalls, and then the host candidates
// gathered so far are enough.
const ICE_GATHER_CAP_MS = 3000;
const PING_INTERVAL_MS = 1000;
// Errors that end the negotiation (the others leave the session running).
const OFFER_ERRORS = new Set(["bad_offer", "already_negotiated", "unknown_stream"]);

export function signalingUrl(loc = window.location) {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
}

/**
 * A browser cannot read the body of a refused WebSocket upgrade (HTTP 503 `busy`): ask the server's
 * /status why it would not take a session now. Resolves with the reason, or null.
 */
async function refusalReason(wsUrl) {
  try {
    const url = new URL("/status", wsUrl.replace(/^ws/, "http"));
    const res = await fetch(url, { cache: "no-store" });
    const status = await res.json();
    if (new URL(wsUrl).searchParams.has("watch")) {
      return status.accepting_viewers ? null : `server busy: ${status.viewer_reason}`;
    }
    return status.accepting ? null : `server busy: ${status.reason}`;
  } catch {
    return null;
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, ICE_GATHER_CAP_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

export class AvatarSession extends EventTarget {
  constructor(url = signalingUrl()) {
    super();
    this.url = url;
    this.ws = null;
    this.pc = null;
    this.hello = null;
    this.closed = false;
    this._pingTimer = null;
    this._answer = null; // {resolve, reject} while an offer is out
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Opens the WebSocket; resolves with the server's `hello`. */
  open() {
    const hello = new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onmessage = (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          this.emit("servererror", { code: "client", message: "unparsable message from the server" });
          return;
        }
        if (msg?.type === "hello") {
          this.helloSeen = true;
          resolve(msg);
        }
        this._handle(msg);
      };
      ws.onclose = async (ev) => {
        let why = ev.reason || (ev.wasClean ? "closed by the server" : "connection lost");
        if (!this.helloSeen) why = (await refusalReason(this.url)) ?? why;
        reject(new Error(`WebSocket closed before hello (${why})`));
        this._fail(new Error(`the server connection closed (${why})`));
        if (!this.closed) this.emit("closed", why);
        this.close();
      };
    });
    return withTimeout(hello, HELLO_TIMEOUT_MS, "no hello from the server");
  }

  send(msg) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /**
   * Creates the peer connection, sends the offer and applies the answer: with `micStream` the
   * microphone goes up and the avatar comes down; with `{watch: id}` (no microphone) the running
   * stream `id` comes down only.
   */
  async negotiate(micStream, { watch = null } = {}) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.ontrack = (ev) => this.emit("track", ev.track);
    pc.onconnectionstatechange = () => this.emit("connectionstate", pc.connectionState);

    // m-line order: audio (mic up, avatar voice down), video (down only), then the data channel.
    if (watch) {
      pc.addTransceiver("audio", { direction: "recvonly" });
    } else {
      const [mic] = micStream.getAudioTracks();
      pc.addTransceiver(mic, { direction: "sendrecv", streams: [micStream] });
    }
    pc.addTransceiver("video", { direction: "recvonly" });
    // A late rig frame is useless: unordered, no retransmission.
    const rig = pc.createDataChannel("rig", { ordered: false, maxRetransmits: 0 });
    rig.onmessage = (ev) => {
      try {
        this.emit("rig", JSON.parse(ev.data));
      } catch {
        /* a malformed rig frame is skipped; the next one follows in 40 ms */
      }
    };

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    const answer = new Promise((resolve, reject) => {
      this._answer = { resolve, reject };
    });
    this.send(watch ? { type: "offer", sdp: pc.localDescription.sdp, watch } : { type: "offer", sdp: pc.localDescription.sdp });
    const sdp = await withTimeout(answer, ANSWER_TIMEOUT_MS, "no answer from the server");
    await pc.setRemoteDescription({ type: "answer", sdp });
    this._pingTimer = setInterval(() => this.send({ type: "ping", t: performance.now() }), PING_INTERVAL_MS);
  }

  /** Idempotent: closes the peer connection and the WebSocket. */
  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this._pingTimer);
    this._fail(new Error("session closed"));
    this.pc?.close();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "client disconnect");
  }

  _fail(err) {
    this._answer?.reject(err);
    this._answer = null;
  }

  _handle(msg) {
    switch (msg?.type) {
      case "hello":
        this.hello = msg;
        this.emit("hello", msg);
        break;
      case "answer":
        this._answer?.resolve(msg.sdp);
        this._answer = null;
        break;
      case "pong":
        if (typeof msg.t === "number") this.emit("rtt", performance.now() - msg.t);
        break;
      case "error":
        if (OFFER_ERRORS.has(msg.code)) this._fail(new Error(`offer refused: ${msg.message ?? msg.code}`));
        this.emit("servererror", msg);
        break;
      case "stream_ended":
        this.emit("ended", msg);
        break;
      case "stats":
      case "cleared":
      case "avatar":
      case "emotion":
        this.emit(msg.type, msg);
        break;
      default:
        // Newer servers may add types; an unknown one is not an error for this client.
        break;
    }
  }
}

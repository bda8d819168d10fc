// The page: buttons, the remote video, the stats panel, the emotion controls and the rig and emotion
// bars. Signaling and WebRTC live in session.js, getStats digestion in stats.js.

import { AvatarSession, signalingUrl } from "./session.js";
import { StatsSampler, readCounters } from "./stats.js";

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"),
  session: $("session"),
  video: $("video"),
  unmute: $("unmute"),
  connect: $("connect"),
  disconnect: $("disconnect"),
  interrupt: $("interrupt"),
  avatarForm: $("avatar-form"),
  avatarId: $("avatar-id"),
  avatarSwitch: $("avatar-switch"),
  emotion: $("emotion"),
  intensity: $("intensity"),
  intensityValue: $("intensity-value"),
  mixAuto: $("mix-auto"),
  reference: $("reference"),
  referenceNeutral: $("reference-neutral"),
  referenceNeutralName: $("reference-neutral-name"),
  message: $("message"),
  rig: $("rig"),
  rigInfo: $("rig-info"),
  emotionBars: $("emotion-bars"),
  emotionInfo: $("emotion-info"),
};

const RIG_BARS = [
  "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft", "mouthStretchLeft",
  "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp",
];
// The 8 emotions of the protocol (the `emotion` of rig messages has each of them), in its order.
const EMOTIONS = ["neutral", "happy", "sad", "angry", "fear", "disgusted", "surprised", "contempt"];
// The largest reference clip, decoded, when the server's hello does not say (protocol version 1).
const REFERENCE_MAX_BYTES = 8 * 1024 * 1024;
// The largest photo at rest sent with a clip, when the server's hello does not say (before version 8).
const NEUTRAL_MAX_BYTES = 4 * 1024 * 1024;
// Echo cancellation keeps the avatar's own voice out of the mic; noise suppression and automatic gain
// would reshape the level the mouth driver reads.
const MIC_CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false } };

// Counters for people and for tests (tests/test_browser.py reads them).
const live = {
  state: "idle",
  hello: null,
  framesDecoded: 0,
  framesShown: 0, // requestVideoFrameCallback count, where the browser has it
  rigMessages: 0,
  lastRig: null,
  audioPlaying: false,
  audioSamplesReceived: 0,
  serverStats: null,
  emotion: null, // the server's confirmation of the last emotion sent ("auto", "happy:0.7", "auto+happy:0.3")
  emotionSource: null, // "reference" when that confirmation answered an uploaded clip, else null
  emotionShown: null, // the last rig message's per-emotion probabilities ({neutral: 0.9, ...}), or null
  wsRttMs: null,
  errors: [],
  /** A fresh getStats reading (cumulative counters, `t` in ms), or null without a connection. */
  snapshot: () => (current?.session.pc ? readCounters(current.session.pc) : Promise.resolve(null)),
};
window.streamAvatar = live;

// `/?watch=STREAM`: a viewer of a running stream (a presenter's session, a PCM-driven one by its id,
// or a WHIP stream by its name): no microphone, no controls; the stream's video, voice and rig come
// down. The name's characters as the protocol allows them (docs/protocol.md, `offer`).
const WATCH = (() => {
  const id = new URLSearchParams(window.location.search).get("watch");
  return id && /^[A-Za-z0-9_-]{1,64}$/.test(id) ? id : null;
})();
live.watch = WATCH;

let current = null; // {session, mic, sampler, timer}
let emotionPicked = false; // an emotion was chosen on this page; else the menu shows the server's

function setState(state) {
  live.state = state;
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  const busy = state !== "idle" && state !== "failed";
  ui.connect.disabled = busy;
  ui.disconnect.disabled = !busy;
  const controls = state === "live" && !WATCH;
  ui.interrupt.disabled = !controls;
  ui.avatarSwitch.disabled = !controls;
  ui.reference.disabled = !controls;
  ui.referenceNeutral.disabled = !controls;
  ui.emotion.disabled = Boolean(WATCH);
}

function showMessage(text, kind = "error") {
  ui.message.textContent = text;
  ui.message.className = `message ${kind}`;
  ui.message.hidden = !text;
}

function fmt(v, unit = "", digits = 0) {
  if (v == null || Number.isNaN(v)) return "–";
  const x = Number(v.toFixed(digits)) || 0; // no "-0.0"
  return `${x.toFixed(digits)}${unit}`;
}
const setText = (id, text) => {
  $(id).textContent = text;
};

function micError(err) {
  if (!navigator.mediaDevices?.getUserMedia) {
    return "This page cannot use a microphone here: open it over https:// or from http://localhost.";
  }
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was denied. Allow it for this site (the icon in the address bar) and connect again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Plug one in and connect again.";
    case "NotReadableError":
      return "The microphone is in use by another program or could not be opened.";
    default:
      return `Could not open the microphone: ${err?.message ?? err}`;
  }
}

async function connect() {
  showMessage("");
  setState("connecting");
  let mic = null;
  if (!WATCH) {
    try {
      if (!navigator.mediaDevices?.getUserMedia) throw new Error("no getUserMedia");
      mic = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (err) {
      showMessage(micError(err));
      setState("idle");
      return;
    }
    if (live.state !== "connecting") {
      for (const t of mic.getTracks()) t.stop(); // disconnected while the permission prompt was open
      return;
    }
  }
  const session = new AvatarSession(WATCH ? `${signalingUrl()}?watch=${WATCH}` : signalingUrl());
  const remote = new MediaStream();
  current = { session, mic, sampler: null, timer: null };
  wire(session, remote);
  try {
    live.hello = await session.open();
    if (emotionPicked && !WATCH) sendEmotion();
    await session.negotiate(mic, { watch: WATCH });
  } catch (err) {
    if (current?.session === session) {
      teardown("failed");
      showMessage(`Could not connect: ${err.message}`);
    }
    return;
  }
  if (current?.session !== session) return; // disconnected while negotiating
  current.sampler = new StatsSampler(session.pc);
  current.timer = setInterval(pollStats, 1000);
}

function wire(session, remote) {
  session.addEventListener("hello", ({ detail: h }) => {
    ui.session.textContent = WATCH
      ? `watching stream ${WATCH} · ${h.fps} fps · ${h.size}²`
      : `session ${h.session} · ${h.fps} fps · ${h.size}² · avatar ${h.avatar} · budget ${h.latency_budget_ms} ms` +
        ` · viewers: ${window.location.origin}/?watch=${h.session}`;
    // Show the server's starting emotion unless one was picked here already.
    if (!emotionPicked) showEmotionSpec(h.emotion);
  });
  session.addEventListener("track", ({ detail: track }) => {
    remote.addTrack(track);
    if (ui.video.srcObject !== remote) ui.video.srcObject = remote;
    play();
  });
  session.addEventListener("connectionstate", ({ detail: s }) => {
    if (s === "connected") setState("live");
    else if (s === "disconnected") setState("reconnecting");
    else if (s === "failed") {
      teardown("failed");
      showMessage("The media connection failed (no network path to the server).");
    }
  });
  session.addEventListener("rig", ({ detail: msg }) => {
    live.rigMessages += 1;
    live.lastRig = msg;
    live.emotionShown = msg.emotion ?? null;
    scheduleRig();
  });
  session.addEventListener("stats", ({ detail: s }) => {
    live.serverStats = s;
    setText("s-mouth", fmt(s.mouth_latency_ms, " ms"));
    setText("s-fps", `${fmt(s.fps, "", 1)} / ${fmt(s.rtf, "", 2)}`);
    setText("s-render", `${fmt(s.render_ms_p50, " ms", 1)} / ${fmt(s.render_ms_p95, " ms", 1)}`);
    setText("s-late", `${s.late_frames ?? "–"} / ${s.dropped_frames ?? "–"}`);
    setText("s-queue", `${s.queue_frames ?? "–"} frames / ${fmt(s.audio_dropped_s, " s", 1)}`);
  });
  session.addEventListener("rtt", ({ detail: ms }) => {
    live.wsRttMs = ms;
  });
  session.addEventListener("cleared", ({ detail: m }) => {
    showMessage(`Interrupted: ${fmt(m.dropped_s, " s", 2)} of queued audio dropped.`, "info");
  });
  session.addEventListener("emotion", ({ detail: m }) => {
    live.emotion = m.emotion;
    live.emotionSource = m.source ?? null;
    if (m.source === "reference") {
      showEmotionSpec(m.emotion); // the clip's emotion replaced the menu's choice
      showMessage(`Reference clip read: ${m.emotion}`, "info");
    }
  });
  session.addEventListener("avatar", ({ detail: m }) => {
    showMessage(`Avatar now: ${m.avatar}`, "info");
    if (live.hello) live.hello.avatar = m.avatar;
  });
  session.addEventListener("ended", () => {
    if (current?.session !== session) return;
    teardown("idle");
    showMessage("The stream ended.", "info");
  });
  session.addEventListener("servererror", ({ detail: e }) => {
    live.errors.push(e);
    showMessage(`Server: ${e.message ?? "error"} (${e.code})`);
  });
  session.addEventListener("closed", ({ detail: why }) => {
    if (current?.session !== session) return;
    const during = live.state === "connecting" ? `Could not reach the server at ${session.url}` : "The server connection closed";
    teardown("failed");
    showMessage(`${during} (${why}).`);
  });
}

function play() {
  // The Connect click is the user gesture that allows sound; where a browser still refuses, the video
  // plays muted and a button asks for a click.
  ui.video.play().catch((err) => {
    if (err.name !== "NotAllowedError") return;
    ui.video.muted = true;
    ui.unmute.hidden = false;
    ui.video.play().catch(() => {});
  });
}

async function pollStats() {
  const c = current;
  if (!c?.sampler) return;
  let s;
  try {
    s = await c.sampler.sample();
  } catch {
    return; // the pc closed between two polls
  }
  live.framesDecoded = s.framesDecoded;
  live.audioSamplesReceived = s.audioSamplesReceived;
  live.audioPlaying = !ui.video.paused && !ui.video.muted && s.audioSamplesDelta > 0;

  const rttMs = s.iceRttMs ?? live.wsRttMs;
  const mouth = live.serverStats?.mouth_latency_ms;
  setText("s-rxfps", s.videoFps == null ? "–" : `${s.videoFps.toFixed(1)} fps, ${s.frameWidth}×${s.frameHeight}`);
  setText("s-jitter", `${fmt(s.videoJitterMs, " ms")} / ${fmt(s.audioJitterMs, " ms")}`);
  setText("s-rtt", rttMs == null ? "–" : `${rttMs.toFixed(0)} ms (${s.iceRttMs == null ? "ws ping" : "ICE"})`);
  const estimate = mouth != null && rttMs != null ? mouth + rttMs / 2 + (s.videoJitterMs ?? 0) : null;
  setText("s-estimate", estimate == null ? "–" : `≈ ${estimate.toFixed(0)} ms`);
}

function teardown(state = "idle") {
  const c = current;
  current = null;
  if (c) {
    clearInterval(c.timer);
    c.session.close();
    for (const t of c.mic?.getTracks() ?? []) t.stop();
  }
  ui.video.srcObject = null;
  ui.video.muted = false;
  ui.unmute.hidden = true;
  live.audioPlaying = false;
  setState(state);
}

// Rig and emotion bars: redrawn at most once per animation frame.
function barRows(parent, names) {
  const rows = new Map();
  for (const name of names) {
    const row = document.createElement("div");
    row.className = "rig-row";
    row.innerHTML = `<span class="rig-name">${name}</span><span class="bar"><span></span></span><span class="rig-val">–</span>`;
    parent.append(row);
    rows.set(name, { fill: row.querySelector(".bar > span"), value: row.querySelector(".rig-val") });
  }
  return rows;
}
function setBar({ fill, value }, v) {
  if (v == null || Number.isNaN(v)) {
    fill.style.width = "0";
    value.textContent = "–";
    return;
  }
  const x = Math.min(1, Math.max(0, v));
  fill.style.width = `${(100 * x).toFixed(1)}%`;
  value.textContent = x.toFixed(2);
}
const bars = barRows(ui.rig, RIG_BARS);
const emotionBars = barRows(ui.emotionBars, EMOTIONS);
const head = document.createElement("div");
head.className = "rig-head muted";
ui.rig.append(head);

let rigPending = false;
function scheduleRig() {
  if (rigPending) return;
  rigPending = true;
  requestAnimationFrame(() => {
    rigPending = false;
    const msg = live.lastRig;
    const rig = msg?.rig ?? {};
    for (const [name, bar] of bars) setBar(bar, rig[name] ?? 0);
    // The frame's emotion probabilities (absent when the server does not know them).
    const shown = msg?.emotion ?? null;
    for (const [name, bar] of emotionBars) setBar(bar, shown ? (shown[name] ?? 0) : null);
    const top = shown ? EMOTIONS.reduce((a, b) => ((shown[b] ?? 0) > (shown[a] ?? 0) ? b : a)) : null;
    ui.emotionInfo.textContent = top ? `mostly ${top}` : "";
    head.textContent =
      `yaw ${fmt(rig.headYaw, "°", 1)} · pitch ${fmt(rig.headPitch, "°", 1)} · roll ${fmt(rig.headRoll, "°", 1)}`;
    ui.rigInfo.textContent = msg ? `frame ${msg.frame} · ${fmt(msg.pts, " s", 2)}${msg.speaking ? " · speaking" : ""}` : "";
  });
}

function countShownFrames() {
  live.framesShown += 1;
  ui.video.requestVideoFrameCallback(countShownFrames);
}
if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) ui.video.requestVideoFrameCallback(countShownFrames);

ui.connect.addEventListener("click", connect);
ui.disconnect.addEventListener("click", () => {
  teardown("idle");
  showMessage("");
});
ui.interrupt.addEventListener("click", () => current?.session.send({ type: "clear" }));
ui.avatarForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  current?.session.send({ type: "avatar", avatar: ui.avatarId.value.trim() || "default" });
});
// The emotion menu's spec: "auto" (the voice's emotion), "neutral", "NAME:I", or "auto+NAME:I" with
// "mix with voice" checked (docs/protocol.md, `emotion`).
function emotionSpec() {
  const name = ui.emotion.value;
  if (name === "auto" || name === "neutral") return name;
  const term = `${name}:${Number(ui.intensity.value)}`;
  return ui.mixAuto.checked ? `auto+${term}` : term;
}
function syncEmotionControls() {
  const operator = !WATCH && ui.emotion.value !== "auto" && ui.emotion.value !== "neutral";
  ui.intensity.disabled = !operator; // auto and neutral have no intensity here
  ui.mixAuto.disabled = !operator;
  ui.intensityValue.textContent = Number(ui.intensity.value).toFixed(2);
}
/** Shows a spec from the server ("auto", "happy:0.7", "auto+happy:0.3") in the menu: its first
 * operator emotion, with "mix with voice" when it has auto; a spec the menu cannot show exactly
 * (auto:0.5, blends) shows its nearest. */
function showEmotionSpec(spec) {
  const terms = String(spec ?? "neutral").split("+").map((t) => t.trim().split(":"));
  const auto = terms.some(([name]) => name === "auto");
  const known = (name) => [...ui.emotion.options].some((o) => o.value === name);
  const operator = terms.find(([name]) => name !== "auto" && name !== "neutral" && known(name));
  if (operator) {
    ui.emotion.value = operator[0];
    ui.intensity.value = operator[1] ?? "1";
    ui.mixAuto.checked = auto;
  } else {
    ui.emotion.value = auto ? "auto" : "neutral";
  }
  syncEmotionControls();
}
function sendEmotion() {
  emotionPicked = true;
  syncEmotionControls();
  // Sent before the offer too: the server keeps it for the session's engine.
  current?.session.send({ type: "emotion", emotion: emotionSpec() });
}
ui.emotion.addEventListener("change", sendEmotion);
ui.intensity.addEventListener("input", sendEmotion);
ui.mixAuto.addEventListener("change", sendEmotion);

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).slice(String(reader.result).indexOf(",") + 1));
    reader.onerror = () => reject(reader.error ?? new Error("could not read the file"));
    reader.readAsDataURL(file); // "data:video/webm;base64,...": the part after the comma is sent
  });
}
// A photo of the clip's person at rest (optional): kept here and sent with the next clips as `neutral`.
let referenceNeutral = null; // {name, data (base64)} or null
ui.referenceNeutral.addEventListener("change", async () => {
  const file = ui.referenceNeutral.files?.[0];
  ui.referenceNeutral.value = "";
  if (!file) return;
  const max = live.hello?.neutral_max_bytes ?? NEUTRAL_MAX_BYTES;
  if (file.size > max) {
    showMessage(`The photo is ${(file.size / (1024 * 1024)).toFixed(1)} MiB; the server takes photos up to ${(max / (1024 * 1024)).toFixed(1)} MiB.`);
    return;
  }
  try {
    referenceNeutral = { name: file.name, data: await readBase64(file) };
  } catch (err) {
    showMessage(`Could not read ${file.name}: ${err.message}`);
    return;
  }
  ui.referenceNeutralName.textContent = `at rest: ${file.name}`;
});
// A reference clip: its emotion (read by the server) becomes the avatar's; the answer is an `emotion`
// message with source "reference", or an error shown like any other.
ui.reference.addEventListener("change", async () => {
  const file = ui.reference.files?.[0];
  ui.reference.value = ""; // choosing the same file again is a new upload
  if (!file || !current) return;
  const max = live.hello?.reference_max_bytes ?? REFERENCE_MAX_BYTES;
  const mib = (n) => (n / (1024 * 1024)).toFixed(1);
  if (file.size > max) {
    showMessage(`The clip is ${mib(file.size)} MiB; the server takes clips up to ${mib(max)} MiB.`);
    return;
  }
  let data;
  try {
    data = await readBase64(file);
  } catch (err) {
    showMessage(`Could not read ${file.name}: ${err.message}`);
    return;
  }
  const msg = { type: "emotion_ref", data };
  if (referenceNeutral) msg.neutral = referenceNeutral.data;
  current?.session.send(msg);
  showMessage(`Reading the emotion of ${file.name}…`, "info");
});
ui.unmute.addEventListener("click", () => {
  ui.video.muted = false;
  ui.unmute.hidden = true;
  play();
});
window.addEventListener("pagehide", () => teardown("idle"));
if (WATCH) {
  ui.connect.textContent = "Watch";
  ui.session.textContent = `stream ${WATCH}: press Watch (no microphone is used)`;
}
setState("idle");
syncEmotionControls();

// Receiver-side figures from RTCPeerConnection.getStats(): decoded video rate, jitter buffer delays,
// the ICE round trip, and the audio sample counter that says the avatar's voice is being played.

function inbound(report, kind) {
  for (const s of report.values()) {
    // `mediaType` is what older Firefox releases call `kind`.
    if (s.type === "inbound-rtp" && (s.kind ?? s.mediaType) === kind) return s;
  }
  return null;
}

function selectedPair(report) {
  for (const s of report.values()) {
    if (s.type === "transport" && s.selectedCandidatePairId) return report.get(s.selectedCandidatePairId);
  }
  // Firefox has no transport.selectedCandidatePairId; it marks the pair instead.
  for (const s of report.values()) {
    if (s.type === "candidate-pair" && (s.selected || (s.nominated && s.state === "succeeded"))) return s;
  }
  return null;
}

/** Raw cumulative counters: {t (ms), framesDecoded, audioSamplesReceived, ...}; missing ones are 0. */
export async function readCounters(pc) {
  const report = await pc.getStats();
  const video = inbound(report, "video");
  const audio = inbound(report, "audio");
  const pair = selectedPair(report);
  return {
    t: video?.timestamp ?? audio?.timestamp ?? performance.timeOrigin + performance.now(),
    framesDecoded: video?.framesDecoded ?? 0,
    framesDropped: video?.framesDropped ?? 0,
    frameWidth: video?.frameWidth ?? 0,
    frameHeight: video?.frameHeight ?? 0,
    videoJitterDelayS: video?.jitterBufferDelay ?? 0,
    videoJitterEmitted: video?.jitterBufferEmittedCount ?? 0,
    audioJitterDelayS: audio?.jitterBufferDelay ?? 0,
    audioJitterEmitted: audio?.jitterBufferEmittedCount ?? 0,
    audioSamplesReceived: audio?.totalSamplesReceived ?? 0,
    iceRttS: pair?.currentRoundTripTime ?? null,
  };
}

// Mean delay of the samples/frames that left the jitter buffer since the previous reading (ms); the
// whole-session mean before there is a previous one.
function jitterMs(cur, prev, delay, emitted) {
  const d = cur[delay] - (prev?.[delay] ?? 0);
  const n = cur[emitted] - (prev?.[emitted] ?? 0);
  return n > 0 ? (1000 * d) / n : null;
}

/** Call `sample()` about once a second; each call compares with the previous one. */
export class StatsSampler {
  constructor(pc) {
    this.pc = pc;
    this.prev = null;
  }

  async sample() {
    const cur = await readCounters(this.pc);
    const prev = this.prev;
    this.prev = cur;
    const dt = prev ? (cur.t - prev.t) / 1000 : 0;
    return {
      ...cur,
      videoFps: dt > 0 ? (cur.framesDecoded - prev.framesDecoded) / dt : null,
      videoJitterMs: jitterMs(cur, prev, "videoJitterDelayS", "videoJitterEmitted"),
      audioJitterMs: jitterMs(cur, prev, "audioJitterDelayS", "audioJitterEmitted"),
      audioSamplesDelta: prev ? cur.audioSamplesReceived - prev.audioSamplesReceived : 0,
      iceRttMs: cur.iceRttS == null ? null : 1000 * cur.iceRttS,
    };
  }
}

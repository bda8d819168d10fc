"""A voice agent's side: send TTS audio to a running server as a PCM stream, and watch it.

    stream-avatar serve &                       # or: make run
    python examples/tts_to_viewer.py http://127.0.0.1:8080 speech.wav [--paced] [--barge-in 1.0]

The file (any audio FFmpeg reads; resampled to 24 kHz unless at a rate the endpoint takes) is sent
as one utterance: at once, like a TTS that returns a sentence (default), or in 20 ms pieces at real
time (``--paced``). A viewer
(``AvatarClient(watch=...)``: what a customer's browser does with ``/?watch=ID``) receives the
video and audio. ``--barge-in S`` interrupts S seconds into playback. Prints the stream's events
and one JSON summary line (frames and audio the viewer received, played milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json

import stream_avatar
from stream_avatar.audio.io import load_audio
from stream_avatar.audio.resample import resample
from stream_avatar.server.protocol import PCM_RATES_HZ


async def main(args: argparse.Namespace) -> dict[str, object]:
    pcm, rate = load_audio(args.wav)  # any file FFmpeg reads, mono float32 at its own rate
    if rate not in PCM_RATES_HZ:
        pcm, rate = resample(pcm, rate, 24000), 24000
    publisher = stream_avatar.PcmPublisher(args.url)
    hello = await publisher.connect()
    print(f"stream {hello['stream']}: watch it at {args.url.rstrip('/')}{hello['watch']}", flush=True)
    viewer = stream_avatar.AvatarClient(args.url, None, watch=publisher.stream)
    try:
        await viewer.connect()
        sending = asyncio.ensure_future(publisher.say(pcm, rate, "reply-1", paced=args.paced))
        t_start, _ = await publisher.next_event("playback_started", id="reply-1")
        if args.barge_in is not None:
            await asyncio.sleep(args.barge_in)
            await publisher.clear()
        timeout = pcm.size / rate + 10
        _, finished = await publisher.next_event("playback_finished", id="reply-1", timeout_s=timeout)
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await asyncio.sleep(0.3)
    finally:
        await viewer.close()
        await publisher.close()
    for t, event in publisher.events:
        if event["type"] not in ("stats", "hello"):
            print(f"{t - t_start:+7.3f} s  {json.dumps(event)}", flush=True)
    heard = sum(a.size for _, _, a in viewer.received.audio) / 48000
    return {
        "stream": hello["stream"],
        "viewer_frames": len(viewer.received.video),
        "viewer_audio_s": round(heard, 2),
        "viewer_rig_messages": len(viewer.received.rig),
        "played_ms": finished["played_ms"],
        "duration_ms": finished["duration_ms"],
        "interrupted": finished["interrupted"],
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("wav")
    p.add_argument("--paced", action="store_true", help="send at real time in 20 ms pieces")
    p.add_argument("--barge-in", type=float, default=None, metavar="S", help="interrupt S s into playback")
    print(json.dumps(asyncio.run(main(p.parse_args()))))

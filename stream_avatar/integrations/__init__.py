"""Bridges to other frameworks. Each module needs its own extra (``pipecat``: ``stream_avatar[pipecat]``)
and is imported only when asked for, so ``import stream_avatar`` never pulls them in."""

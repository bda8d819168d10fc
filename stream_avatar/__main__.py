"""``python -m stream_avatar`` = the ``stream-avatar`` command."""

from __future__ import annotations

from stream_avatar.cli import main

raise SystemExit(main())

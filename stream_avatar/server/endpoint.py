"""What a client session and a PCM stream share: an id, a client to send JSON to, the asyncio tasks
they own, and one idempotent close that leaves none of them running."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Endpoint:
    """Tasks are named ``{kind}-{id}-{name}``; one that fails closes the endpoint. ``close()``
    cancels them all, then ``_release()`` (the subclass's peer connection, engine, tracks)."""

    kind = "endpoint"

    def __init__(self, send: Send) -> None:
        self.id = secrets.token_hex(6)
        self._send_json = send
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed = asyncio.Event()
        self.on_closed: Callable[[Any], None] | None = None

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.kind}-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._closing:
            logger.error(
                f"{self.kind} task failed", exc_info=exc, extra={self.kind: self.id, "task": task.get_name()}
            )
            self._spawn(self.close(), "close")

    async def send(self, message: dict[str, Any]) -> None:
        if self._closing:
            return
        try:
            await self._send_json(message)
        except Exception:  # the socket went away; the server closes the endpoint when its loop ends
            logger.debug("send failed", extra={self.kind: self.id})

    async def _release(self) -> None:
        """Free what the subclass holds, after its tasks are cancelled."""

    async def close(self) -> None:
        """Cancel every task, release everything, call ``on_closed``. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._release()
        finally:
            self._closed.set()
            if self.on_closed is not None:
                self.on_closed(self)
            logger.info(f"{self.kind} closed", extra={self.kind: self.id})

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

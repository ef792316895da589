"""A coroutine that runs beside the server until stopped (flushers, refreshers, purgers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from collections.abc import Coroutine
from typing import Any


class Background:
    """Starts ``work()`` on the running loop once; :meth:`stop` cancels it and waits."""

    __slots__ = ("_task", "_work")

    def __init__(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._work = work
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the work if it is not running."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Cancel the work and wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

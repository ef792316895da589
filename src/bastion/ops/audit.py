"""The audit trail: one JSON line per security event, written buffered.

Events never carry secrets or tokens: only client ids, subjects, token ids (``jti``) and
hashes. Lines are flushed every ``flush_every`` events or ``flush_interval`` seconds (a
background task), and at close, so the token endpoint's hot path pays for a list append only.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO
from typing import Any

import orjson

from bastion.ops.background import Background


class AuditLog:
    """Buffered JSON-lines writer for security events."""

    def __init__(
        self,
        path: str | Path | None,
        *,
        flush_every: int = 256,
        flush_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._stream: IO[bytes] | None = None
        self._buffer: list[bytes] = []
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._clock = clock
        self._flusher = Background(self.run)
        #: Every event also goes to these callbacks (tests, metrics, alert rules).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def _open(self) -> IO[bytes]:
        if self._stream is None:
            if self._path in (None, "-"):
                self._stream = sys.stdout.buffer
            else:
                path = Path(self._path)  # type: ignore[arg-type]
                path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = path.open("ab")
        return self._stream

    def emit(self, event: str, **fields: Any) -> None:
        """Record ``event`` with ``fields`` (never pass a secret or a token here)."""
        record = {"time": round(self._clock(), 3), "event": event, **fields}
        self._buffer.append(orjson.dumps(record) + b"\n")
        for listener in self.listeners:
            listener(record)
        if len(self._buffer) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered lines now."""
        if self._buffer:
            stream = self._open()
            stream.write(b"".join(self._buffer))
            stream.flush()
            self._buffer.clear()

    async def run(self) -> None:
        """Flush periodically until cancelled."""
        while True:
            await asyncio.sleep(self._flush_interval)
            self.flush()

    def start(self) -> None:
        """Start the periodic flush on the running loop."""
        self._flusher.start()

    async def close(self) -> None:
        """Stop the flusher, write what is left, close the file."""
        await self._flusher.stop()
        self.flush()
        if self._stream is not None and self._stream is not sys.stdout.buffer:
            self._stream.close()
        self._stream = None

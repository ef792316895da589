"""The audit trail: one event shape for every security event, written to a file and the database.

:meth:`AuditLog.emit` takes an event type from :data:`~bastion.ops.audit_events.EVENT_TYPES` and
the fields of :class:`~bastion.storage.audit_protocols.AuditEvent`; the request being served
(:func:`~bastion.ops.audit_events.request_scope`) adds its request id, address and client. Events
never carry secrets or tokens: only client ids, subjects, token ids (``jti``) and hashes.

The caller pays for a list append. A background task (:meth:`AuditLog.run`) writes the buffer
every ``flush_interval`` seconds, or sooner once ``flush_every`` events wait: JSON lines to the
file (or standard output), then one batch insert into the durable store. A file moved away by
logrotate is noticed at the next write and a new one opened in its place. A store that fails
keeps its batch for the next round (up to ``max_pending`` events, then the oldest go, with a
warning); a request never waits for either. Rows older than ``retention`` are pruned hourly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import IO
from typing import Any
from typing import Protocol

import orjson

from bastion.ops.audit_events import EVENT_TYPES
from bastion.ops.audit_events import FORBIDDEN_DETAILS
from bastion.ops.audit_events import EventType
from bastion.ops.audit_events import current_request
from bastion.ops.background import Background
from bastion.storage.audit_protocols import AuditEvent
from bastion.storage.audit_protocols import AuditStore
from bastion.storage.audit_protocols import Outcome
from bastion.storage.protocols import StorageError

__all__ = ["AuditEvent", "AuditLog", "Auditor", "EventType", "Outcome"]

log = logging.getLogger("bastion.audit")

#: Events per insert into the durable store.
BATCH = 1000


class Auditor(Protocol):
    """Where security events go (:class:`AuditLog`)."""

    def emit(
        self,
        type: EventType,
        *,
        outcome: Outcome = "success",
        actor: str | None = None,
        subject: str | None = None,
        client: str | None = None,
        address: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one security event (never pass a secret or a token)."""


class _File:
    """Appends to a path, reopening it when it was moved or deleted (the check
    ``logging.handlers.WatchedFileHandler`` makes); ``None`` or ``-``: standard output."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path in (None, "", "-") else Path(path)  # type: ignore[arg-type]
        self._stream: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None

    def write(self, data: bytes) -> None:
        if self.path is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        if self._stream is not None and self._moved():
            self.reopen()
        if self._stream is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = self.path.open("ab")
            stat = os.fstat(self._stream.fileno())
            self._identity = (stat.st_dev, stat.st_ino)
        self._stream.write(data)
        self._stream.flush()

    def _moved(self) -> bool:
        assert self.path is not None
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def reopen(self) -> None:
        """Close the file; the next write opens the path afresh."""
        if self._stream is not None:
            self._stream.close()
        self._stream = None


class AuditLog:
    """Buffered writer of security events: a JSON-lines file and, optionally, the durable store."""

    def __init__(
        self,
        path: str | Path | None,
        *,
        store: AuditStore | None = None,
        retention: float | None = None,
        default_actor: str = "system",
        flush_every: int = 256,
        flush_interval: float = 0.5,
        prune_interval: float = 3600.0,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Write to ``path`` (``None`` or ``-``: standard output) and to ``store``.

        Args:
            retention: Seconds the store keeps an event; ``None``: for ever.
            default_actor: The actor of an event that names none outside a request (``cli``
                for commands, ``system`` for servers).
        """
        self._file = _File(path)
        self._store = store
        self.retention = retention
        self.default_actor = default_actor
        self._pending: list[AuditEvent] = []
        self._unstored: list[AuditEvent] = []
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._prune_interval = prune_interval
        self._max_pending = max_pending
        self._clock = clock
        self._wake: asyncio.Event | None = None
        self._flusher = Background(self.run)
        #: Every event also goes to these callbacks (tests, metrics, alert rules).
        self.listeners: list[Callable[[AuditEvent], None]] = []

    def emit(
        self,
        type: EventType,
        *,
        outcome: Outcome = "success",
        actor: str | None = None,
        subject: str | None = None,
        client: str | None = None,
        address: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one event; what the current request knows fills ``request_id`` and the
        ``address``, ``client`` and ``actor`` not given.

        Raises:
            ValueError: an unknown ``type``, or a ``details`` key that names a secret or a token
                (``password``, ``refresh_token`` ...): a programming error, never the client's.
        """
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown audit event type {type!r}")
        if details and not FORBIDDEN_DETAILS.isdisjoint(details):
            raise ValueError(f"audit details must not hold {sorted(FORBIDDEN_DETAILS & set(details))}")
        request = current_request()
        request_id = trace_id = None
        if request is not None:
            request_id = request.request_id
            trace_id = request.trace_id
            address = address or request.address
            client = client or request.client
            actor = actor or request.actor or "anonymous"
        event = AuditEvent(
            self._clock(),
            type,
            outcome,
            actor or self.default_actor,
            subject,
            client,
            address,
            reason,
            request_id,
            trace_id,
            {} if details is None else details,
        )
        self._pending.append(event)
        for listener in self.listeners:
            listener(event)
        if len(self._pending) >= self._flush_every:
            self.flush()
            if self._wake is not None:
                self._wake.set()

    def flush(self) -> None:
        """Write buffered events to the file now; they wait for the store's next batch."""
        events, self._pending = self._pending, []
        if not events:
            return
        try:
            self._file.write(b"".join(orjson.dumps(e.as_dict(), default=str) + b"\n" for e in events))
        except OSError as exc:
            log.error(
                "cannot write the audit log %s: %s (%d events not written there)",
                self._file.path,
                exc,
                len(events),
            )
        if self._store is not None:
            self._keep(events)

    def _keep(self, events: list[AuditEvent]) -> None:
        self._unstored.extend(events)
        excess = len(self._unstored) - self._max_pending
        if excess > 0:
            del self._unstored[:excess]
            log.error(
                "the audit store is behind: dropped its %d oldest events (they are in the file)", excess
            )

    async def drain(self) -> None:
        """Write everything buffered: the file, then the store in batches.

        A batch the store refuses stays queued for the next call (a warning is logged).
        """
        self.flush()
        if self._store is None:
            return
        while self._unstored:
            batch = self._unstored[:BATCH]
            try:
                await self._store.append(batch)
            except StorageError as exc:
                log.warning("cannot write audit events to the database (will retry): %s", exc)
                return
            del self._unstored[: len(batch)]

    async def prune(self) -> int:
        """Delete stored events older than the retention; returns how many (0 without either)."""
        if self._store is None or self.retention is None:
            return 0
        return await self._store.prune(self._clock() - self.retention)

    async def run(self) -> None:
        """Drain every ``flush_interval`` seconds (sooner when the buffer fills) and prune every
        ``prune_interval``, until cancelled."""
        self._wake = wake = asyncio.Event()
        next_prune = self._clock()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._flush_interval)
            wake.clear()
            await self.drain()
            if self._clock() >= next_prune:
                next_prune = self._clock() + self._prune_interval
                try:
                    if removed := await self.prune():
                        log.info("pruned %d audit events older than the retention", removed)
                except StorageError as exc:
                    log.warning("pruning audit events failed: %s", exc)

    def start(self) -> None:
        """Start the periodic writes on the running loop."""
        self._flusher.start()

    def reopen(self) -> None:
        """Close the file; the next write opens the configured path again (after rotation)."""
        self._file.reopen()

    async def close(self) -> None:
        """Stop the flusher, write what is left, close the file."""
        await self._flusher.stop()
        self._wake = None
        await self.drain()
        self._file.reopen()

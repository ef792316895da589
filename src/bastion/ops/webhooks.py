"""Signed webhook messages for alerts: a bounded queue per receiver, retried with backoff.

Each message is a JSON object POSTed to the receiver's URL with:

* ``X-Bastion-Timestamp``: the POSIX second of this attempt;
* ``X-Bastion-Signature``: ``sha256=`` and the hex HMAC-SHA256, under the receiver's secret, of
  the timestamp, a ``.``, and the body (:func:`signature`). A receiver recomputes it over the
  raw body, compares in constant time, and refuses a timestamp far from its clock (a replay).

A 2xx answer delivers the message. A transport error, a timeout, 408, 429 or a 5xx is retried
after a capped, jittered, doubling delay (:func:`backoff_delay`) until ``attempts`` are spent;
any other answer is final. Every attempt is an audit event (``alert.webhook_delivered`` or
``alert.webhook_failed``), and so is a message dropped because the queue was full. Messages go
out one at a time per receiver, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bastion.ops.audit import Auditor
from bastion.settings import WebhookSettings

__all__ = ["Receiver", "WebhookSender", "backoff_delay", "signature"]

log = logging.getLogger("bastion.alerts")

SIGNATURE_HEADER = "X-Bastion-Signature"
TIMESTAMP_HEADER = "X-Bastion-Timestamp"
_RETRIED = frozenset({408, 429})


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first): half of
    ``min(cap, base × 2^(attempt−1))`` plus a random share of the other half, so that senders
    that failed together do not all retry together."""
    delay: float = min(cap, base * 2.0 ** (attempt - 1))
    return delay / 2 + rand() * delay / 2


@dataclass(frozen=True, slots=True)
class Receiver:
    """One ``[alerts.webhooks.NAME]`` with its secret (resolved by the CLI)."""

    name: str
    settings: WebhookSettings
    secret: bytes


@dataclass(frozen=True, slots=True)
class _Message:
    body: bytes
    #: What the audit events of its attempts say (alert id, rule, status).
    facts: Mapping[str, Any]


class WebhookSender:
    """Delivers messages to the named receivers (see the module docstring)."""

    def __init__(
        self,
        receivers: Mapping[str, Receiver],
        audit: Auditor,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Send to ``receivers``; audit every attempt on ``audit``."""
        self._receivers = dict(receivers)
        self._audit = audit
        self._clock = clock
        self._sleep = sleep
        self._queues: dict[str, asyncio.Queue[_Message]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Open the HTTP client and one delivery task per receiver on the running loop."""
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(headers={"User-Agent": "bastion-alerts"})
        loop = asyncio.get_running_loop()
        for name, receiver in self._receivers.items():
            queue: asyncio.Queue[_Message] = asyncio.Queue(maxsize=receiver.settings.queue)
            self._queues[name] = queue
            self._tasks.append(loop.create_task(self._run(receiver, queue)))

    def send(self, name: str, message: Mapping[str, Any]) -> bool:
        """Queue ``message`` for receiver ``name``; ``False`` (audited) when its queue is full.

        Raises:
            KeyError: no receiver ``name``, or the sender is not started.
        """
        queue = self._queues[name]
        facts = {key: message[key] for key in ("alert_id", "rule", "status") if key in message}
        try:
            queue.put_nowait(_Message(orjson.dumps(message), facts))
        except asyncio.QueueFull:
            self._failed(name, facts, 0, "queue_full", final=True)
            return False
        return True

    async def drain(self) -> None:
        """Wait until every queued message is delivered or given up."""
        for queue in self._queues.values():
            await queue.join()

    async def close(self, grace: float = 5.0) -> None:
        """Give queued messages ``grace`` seconds, then stop and close the client."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._queues.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, receiver: Receiver, queue: asyncio.Queue[_Message]) -> None:
        while True:
            message = await queue.get()
            try:
                await self._deliver(receiver, message)
            except Exception:  # never lose the loop to one message
                log.exception("alerts: webhook %s: delivery failed", receiver.name)
            finally:
                queue.task_done()

    async def _deliver(self, receiver: Receiver, message: _Message) -> bool:
        config = receiver.settings
        for attempt in range(1, config.attempts + 1):
            status, reason = await self._attempt(receiver, message.body)
            if status is not None and 200 <= status <= 299:
                self._audit.emit(
                    "alert.webhook_delivered",
                    subject=receiver.name,
                    details={
                        **message.facts,
                        "webhook": receiver.name,
                        "attempt": attempt,
                        "http_status": status,
                    },
                )
                return True
            retry = status is None or status in _RETRIED or status >= 500
            final = not retry or attempt == config.attempts
            self._failed(receiver.name, message.facts, attempt, reason, final=final, status=status)
            if final:
                log.warning(
                    "alerts: webhook %s gave up after %d attempt(s): %s", receiver.name, attempt, reason
                )
                return False
            await self._sleep(backoff_delay(attempt, config.backoff, config.max_backoff))
        return False

    async def _attempt(self, receiver: Receiver, body: bytes) -> tuple[int | None, str]:
        """One POST: ``(status, reason)``; ``status`` is ``None`` when no answer came."""
        assert self._session is not None
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(receiver.secret, timestamp, body),
        }
        timeout = aiohttp.ClientTimeout(total=receiver.settings.timeout)
        try:
            async with self._session.post(
                receiver.settings.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                await response.read()
                return response.status, f"http_{response.status}"
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientError as exc:
            return None, f"connection_error: {type(exc).__name__}"

    def _failed(
        self,
        name: str,
        facts: Mapping[str, Any],
        attempt: int,
        reason: str,
        *,
        final: bool,
        status: int | None = None,
    ) -> None:
        details = {**facts, "webhook": name, "attempt": attempt, "final": final}
        if status is not None:
            details["http_status"] = status
        self._audit.emit(
            "alert.webhook_failed", outcome="failure", subject=name, reason=reason, details=details
        )

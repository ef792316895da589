"""Followers of fast-state feeds (revocations, signing keys): one loop that survives its store.

A feed is a publish/subscribe channel on the fast-state store, at-most-once: a message
published while a subscriber is disconnected is lost to it. So a :class:`Follower`:

1. subscribes, then proves the subscription is live by publishing a probe on the channel and
   waiting for it to come back (a message published after that point reaches us);
2. runs ``catch_up`` (read the durable record: what it may have missed) — only then is it
   *healthy*;
3. hands every message to ``handle`` until the subscription fails or ends;
4. on any failure: logs the drop, counts it (``bastion_feed_drops_total{feed}``), marks itself
   down (``bastion_feed_up{feed} 0``, :attr:`Follower.down_since`), calls ``on_health(False)``
   so that the hot path stops trusting what it cannot check, waits an exponentially growing,
   jittered, capped delay and starts again at 1.

A slow or failing ``handle`` never ends the loop: its errors are logged and the message is
skipped (the next catch-up covers it). Probes are JSON objects ``{"probe": "<nonce>"}`` and are
never handed to ``handle``, whoever sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge

from bastion.ops.background import Background

log = logging.getLogger("bastion.feeds")

_PROBE_PREFIX = b'{"probe":'

#: Default backoff: first retry after about this many seconds, doubling up to the cap.
DEFAULT_BACKOFF = 0.1
DEFAULT_BACKOFF_CAP = 30.0
#: How long a fresh subscription may take to deliver its own probe before it counts as a drop.
DEFAULT_PROBE_TIMEOUT = 5.0
#: How long stop() lets a catch-up in progress finish before cancelling it.
_STOP_GRACE = 5.0


class Channel(Protocol):
    """What a follower needs of the fast-state store (every ``FastState`` is one)."""

    async def publish(self, channel: str, message: bytes) -> None:
        """Deliver ``message`` to the subscribers of ``channel``."""

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Messages published on ``channel`` from now on."""


class FeedMetrics:
    """``bastion_feed_drops_total{feed}`` and ``bastion_feed_up{feed}`` on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register on ``registry`` (a fresh one when ``None``)."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.drops = Counter(
            "bastion_feed_drops",
            "Fast-state feed subscriptions lost (each is followed by a reconnect and a catch-up)",
            ["feed"],
            registry=self.registry,
        )
        self.up = Gauge(
            "bastion_feed_up",
            "1 while the feed's follower is subscribed and caught up, else 0",
            ["feed"],
            registry=self.registry,
        )


def is_probe(message: bytes) -> bool:
    """Whether ``message`` is a follower's liveness probe (never a real event)."""
    return message.startswith(_PROBE_PREFIX)


async def _settle(read: asyncio.Future[bytes]) -> None:
    """Cancel a pending read, or collect the error of one that failed: a failed read nobody
    awaits would be reported as "Task exception was never retrieved" (the subscription's error,
    e.g. Redis going away while a probe was being published, is already handled as a drop)."""
    if not read.done():
        read.cancel()
        with contextlib.suppress(BaseException):
            await read
    elif not read.cancelled():
        read.exception()


class FeedTimeout(Exception):
    """A fresh subscription did not deliver its own probe in time."""


class Follower:
    """Follows one channel for as long as it runs; see the module docstring for the loop.

    Attributes:
        name: The feed's name in logs and metrics (``revocations``, ``keys`` ...).
        healthy: Subscribed and caught up.
        down_since: When it last became unhealthy (clock seconds), ``None`` while healthy.
        drops: Subscriptions lost so far.
    """

    def __init__(
        self,
        name: str,
        state: Channel,
        channel: str,
        handle: Callable[[bytes], Awaitable[None] | None],
        *,
        catch_up: Callable[[], Awaitable[None]] | None = None,
        on_health: Callable[[bool], None] | None = None,
        metrics: FeedMetrics | None = None,
        backoff: float = DEFAULT_BACKOFF,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        name: Label in logs and metrics.
        state: The fast-state store carrying the channel.
        channel: The channel to follow.
        handle: Called with every message (a coroutine function or a plain one).
        catch_up: Read what may have been missed; run after every (re)subscription, before
            the follower calls itself healthy. A failure counts as a drop.
        on_health: Told ``True`` once caught up and ``False`` on every drop.
        metrics: Where drops are counted; none by default.
        backoff: First retry delay in seconds; doubles per consecutive failure.
        backoff_cap: Longest retry delay.
        probe_timeout: How long a subscription may take to become live.
        clock: Monotonic seconds (for ``down_since``).
        """
        if backoff <= 0 or backoff_cap < backoff:
            raise ValueError("backoff must be positive and backoff_cap at least backoff")
        self.name = name
        self._state = state
        self._channel = channel
        self._handle = handle
        self._catch_up = catch_up
        self._on_health = on_health
        self._metrics = metrics
        self._backoff = backoff
        self._cap = backoff_cap
        self._probe_timeout = probe_timeout
        self._clock = clock
        self._runner = Background(self.run)
        self._catching: asyncio.Future[None] | None = None
        self.healthy = False
        self.down_since: float | None = clock()
        self.drops = 0
        if metrics is not None:
            metrics.up.labels(name).set(0)
            metrics.drops.labels(name)  # the series exists (at 0) before the first drop

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start following on the running loop (idempotent)."""
        self._runner.start()

    async def stop(self) -> None:
        """Stop following and wait until the subscription is closed."""
        await self._runner.stop()
        catching, self._catching = self._catching, None
        if catching is not None and not catching.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(catching, _STOP_GRACE)

    async def run(self) -> None:
        """Follow until cancelled, reconnecting after every failure."""
        failures = 0
        while True:
            try:
                await self._session()
                reason = "subscription ended"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if self.healthy:
                failures = 0  # a session that got healthy resets the backoff
            self._down(reason)
            delay = min(self._cap, self._backoff * 2**failures)
            failures = min(failures + 1, 32)
            # Full jitter on the upper half: processes dropped together do not retry together.
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    # -- one subscription ---------------------------------------------------------------------

    async def _session(self) -> None:
        messages = self._state.subscribe(self._channel).__aiter__()
        pending: asyncio.Task[bytes] | None = None
        try:
            probe = b'{"probe":"%s"}' % secrets.token_hex(8).encode()
            pending = await self._await_probe(messages, probe)
            if self._catch_up is not None:
                # Shielded, and awaited by stop(): a catch-up reads the durable store, and a
                # read cancelled half-way would leave its connection to a store being closed.
                self._catching = asyncio.ensure_future(self._catch_up())
                await asyncio.shield(self._catching)
            self._up()
            while True:
                message = await pending
                pending = asyncio.ensure_future(anext(messages))
                await self._deliver(message)
        finally:
            if pending is not None:
                await _settle(pending)
            with contextlib.suppress(Exception):
                await messages.aclose()  # type: ignore[attr-defined]

    async def _await_probe(self, messages: AsyncIterator[bytes], probe: bytes) -> asyncio.Task[bytes]:
        """Publish ``probe`` until it comes back; messages meanwhile are delivered. Returns the
        pending read of the next message."""
        pending: asyncio.Task[bytes] = asyncio.ensure_future(anext(messages))
        deadline = self._clock() + self._probe_timeout
        interval = 0.02
        try:
            while True:
                await asyncio.sleep(0)  # let the read start (and subscribe) before we publish
                await self._state.publish(self._channel, probe)
                done, _ = await asyncio.wait({pending}, timeout=interval)
                while done:
                    message = pending.result()
                    pending = asyncio.ensure_future(anext(messages))
                    if message == probe:
                        return pending
                    await self._deliver(message)
                    done, _ = await asyncio.wait({pending}, timeout=0)
                if self._clock() >= deadline:
                    raise FeedTimeout(f"no probe back within {self._probe_timeout} s")
                interval = min(interval * 2, 0.5)
        except BaseException:
            await _settle(pending)
            raise

    async def _deliver(self, message: bytes) -> None:
        if is_probe(message):
            return
        try:
            result = self._handle(message)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.warning(
                "feed %s: a message could not be applied (%s): %s", self.name, type(exc).__name__, exc
            )

    # -- health -------------------------------------------------------------------------------

    def _up(self) -> None:
        self.healthy = True
        was_down = self.down_since
        self.down_since = None
        if self._metrics is not None:
            self._metrics.up.labels(self.name).set(1)
        if self._on_health is not None:
            self._on_health(True)
        if was_down is not None:
            log.info("feed %s: subscribed and caught up", self.name)

    def _down(self, reason: str) -> None:
        self.drops += 1
        if self._metrics is not None:
            self._metrics.drops.labels(self.name).inc()
            self._metrics.up.labels(self.name).set(0)
        if self.healthy or self.down_since is None:
            self.down_since = self._clock()
        self.healthy = False
        if self._on_health is not None:
            self._on_health(False)
        log.warning("feed %s dropped: %s; reconnecting", self.name, reason)

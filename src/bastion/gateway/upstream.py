"""Upstream groups: targets, keep-alive connection pools, health and circuit breakers.

An :class:`UpstreamGroup` is what a route forwards to. Each target (``host:port``) has one pool
shared by every client connection of the process:

* idle connections are kept LIFO (the most recently used is the warmest), at most
  ``max_idle_per_target`` of them, closed after ``idle_timeout`` seconds unused;
* at most ``max_per_target`` connections exist at once; a request beyond that waits for one to
  be released (bounded by its connect timeout);
* an idle connection the upstream closed is noticed (``connection_lost`` / EOF) and dropped
  before anyone picks it; the engine retries once on a fresh connection when the close races
  with a request (see ``proxy.py``);
* a connection with unread or unexpected bytes is closed, never pooled: one whose response was
  followed by more bytes, or whose end rested on the request method or status while its fields
  announced content (any ``HEAD``; a 204 or 304 with a length — ``ResponseReader.reusable``),
  and an idle one that becomes readable (bytes received while idle close it; a socket with
  bytes not yet read is discarded when picked).

Target selection is round-robin over targets that are healthy:

* passive health: ``failure_threshold`` consecutive connect failures mark a target down for
  ``cool_off`` seconds;
* active health (optional): every ``health_check_interval`` seconds a ``GET`` of
  ``health_check_path`` on a fresh connection; anything but a 2xx/3xx marks it down;
* a :class:`~bastion.gateway.breaker.CircuitBreaker` per target counts transport failures and
  timeouts of real requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Protocol
from typing import cast

from bastion.gateway.breaker import CircuitBreaker
from bastion.gateway.http1 import Data
from bastion.gateway.http1 import Response
from bastion.gateway.http1 import ResponseReader
from bastion.gateway.http1 import UpstreamProtocolError

__all__ = ["NoTargetError", "PoolTimeoutError", "UpstreamConnection", "UpstreamGroup", "UpstreamListener"]

_log = logging.getLogger("bastion.gateway.upstream")


class NoTargetError(Exception):
    """No target of the group may take a request now; ``reason`` is a metrics label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PoolTimeoutError(Exception):
    """Every connection of a target stayed busy for the whole connect timeout."""


class UpstreamListener(Protocol):
    """What an upstream connection reports to the exchange using it."""

    def upstream_response(self, response: Response) -> None: ...

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_end(self) -> None: ...

    def upstream_flush(self) -> None: ...

    def upstream_failed(self, reason: str) -> None: ...

    def upstream_pause_writing(self) -> None: ...

    def upstream_resume_writing(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a target; used by one exchange at a time."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader()
        self.listener: UpstreamListener | None = None
        #: Requests started on this connection (``> 1``: it was reused from the pool).
        self.uses = 0
        self.idle_since = 0.0
        self.closed = False
        self._reading_paused = False
        #: The socket's descriptor, for :meth:`readable` (-1: not a socket transport).
        self._fd = -1

    # -- used by the exchange ----------------------------------------------------------------

    def begin(self, listener: UpstreamListener, *, head_request: bool) -> None:
        """Bind to ``listener`` for one request/response."""
        self.listener = listener
        self.uses += 1
        self.reader.start(head_request=head_request)

    def write(self, data: bytes) -> None:
        """Send bytes to the upstream."""
        if self.transport is not None:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Send several pieces to the upstream."""
        if self.transport is not None:
            self.transport.writelines(parts)

    def pause_reading(self) -> None:
        """Stop reading the upstream (the client is not keeping up)."""
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the upstream again."""
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def release(self, *, reusable: bool, now: float | None = None) -> None:
        """Detach from the exchange and go back to the pool (or close).

        Args:
            reusable: Whether the exchange left the connection fit for another request.
            now: The loop time, when the caller has it (saves a ``get_running_loop``).
        """
        self.listener = None
        self.resume_reading()
        self.target.release(self, reusable=reusable and self.reader.reusable, now=now)

    def close(self) -> None:
        """Detach and close the connection."""
        self.listener = None
        if self.transport is not None and not self.closed:
            self.transport.close()

    def readable(self) -> bool:
        """Whether bytes (or the end of the stream) wait unread on the idle socket.

        Nothing may arrive on a connection between two exchanges. Bytes that did are handed to
        :meth:`data_received`, which closes the connection, but only when the loop next polls
        its sockets: a request handled earlier in the same loop iteration would otherwise bind
        to the connection first and read those bytes as its response. One ``poll`` with a zero
        timeout closes that window (as httpcore checks a pooled connection before reuse).
        """
        if self.transport is None or self.closed:
            return True
        fd = self._fd
        if fd < 0:
            return False  # not a socket transport; nothing to poll
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    @property
    def write_buffer_size(self) -> int:
        """Bytes waiting to be sent to the upstream."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport by construction; uvloop's does not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self.target.live.add(self)

    def data_received(self, data: bytes) -> None:
        if self.listener is None:
            # Bytes on an idle connection: the upstream is confused; never reuse it.
            self.close()
            return
        try:
            self.reader.receive_data(data)
        except UpstreamProtocolError:
            self._fail("upstream_protocol")
            return
        self._dispatch()

    def eof_received(self) -> bool:
        if self.listener is not None:
            try:
                self.reader.receive_eof()
            except UpstreamProtocolError:
                self._fail("upstream_closed")
                return False
            self._dispatch()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.target.forget(self)
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.upstream_failed("upstream_closed")

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.upstream_resume_writing()

    # -- internals ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        reader = self.reader
        while (listener := self.listener) is not None:
            event = reader.next_event()
            if event is None:
                listener.upstream_flush()
                return
            if type(event) is Data:
                listener.upstream_data(event.data)
            elif type(event) is Response:
                listener.upstream_response(event)
            else:
                listener.upstream_end()

    def _fail(self, reason: str) -> None:
        listener = self.listener
        self.close()
        if listener is not None:
            listener.upstream_failed(reason)


class Target:
    """One ``host:port`` of a group, with its pool and health state."""

    def __init__(self, group: UpstreamGroup, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.group = group
        self.host = host
        self.port = port
        #: Client TLS context for an ``https://`` target, else ``None``.
        self.tls = tls
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.idle: list[UpstreamConnection] = []
        self.live: set[UpstreamConnection] = set()
        self.pending = 0
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.breaker = CircuitBreaker(
            group.breaker_failures, group.breaker_window, group.breaker_open_seconds
        )
        self.connect_failures = 0
        self.down_until = 0.0
        self.active_healthy = True

    def __repr__(self) -> str:
        return f"Target({self.address})"

    def healthy(self, now: float) -> bool:
        """Passive and active health together."""
        return self.active_healthy and now >= self.down_until

    def take_idle(self, now: float) -> UpstreamConnection | None:
        """The warmest usable idle connection, or ``None``."""
        idle = self.idle
        limit = now - self.group.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.idle_since < limit or conn.readable():
                conn.close()
                continue
            return conn
        return None

    async def connect(self, deadline: float) -> UpstreamConnection:
        """Open a new connection (or wait for a released one when the target is at its cap).

        Args:
            deadline: loop time by which the connection must be open.

        Raises:
            TimeoutError: the connection did not open in time.
            OSError: the connection was refused or failed.
            PoolTimeoutError: every connection stayed busy until ``deadline``.
        """
        loop = asyncio.get_running_loop()
        while self.pending + len(self.live) >= self.group.max_per_target:
            waiter: asyncio.Future[UpstreamConnection | None] = loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except TimeoutError:
                raise PoolTimeoutError from None
            finally:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            if handed is not None and not handed.closed:
                if not handed.readable():
                    return handed
                handed.close()
        self.pending += 1
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
        except (OSError, TimeoutError):
            self._connect_failed(loop.time())
            raise
        finally:
            self.pending -= 1
        self.connect_failures = 0
        return conn

    def _connect_failed(self, now: float) -> None:
        self.connect_failures += 1
        if self.connect_failures >= self.group.failure_threshold:
            self.down_until = now + self.group.cool_off
            _log.warning("upstream target %s marked down for %.1fs", self.address, self.group.cool_off)

    def release(self, conn: UpstreamConnection, *, reusable: bool, now: float | None = None) -> None:
        """Take back a connection after an exchange (``now``: the loop time, if known)."""
        if reusable and not conn.closed and not self.group.closed:
            waiters = self.waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            if len(self.idle) < self.group.max_idle_per_target:
                # On Python 3.11 ``get_running_loop`` costs a ``getpid`` system call: the hot
                # path passes the time it already has.
                conn.idle_since = now if now is not None else asyncio.get_running_loop().time()
                self.idle.append(conn)
                return
        conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: drop it and let a waiter open a new one."""
        self.live.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close_idle(self) -> None:
        """Close every idle connection."""
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


def _parse_target(spec: str) -> tuple[bool, str, int]:
    """``(tls, host, port)`` of ``host:port``, ``http://host[:port]`` or ``https://host[:port]``."""
    text = spec.strip()
    default_port = 80
    tls = False
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme == "https":
            tls = True
            default_port = 443
        elif scheme != "http":
            raise ValueError(f"upstream target {spec!r}: only http:// and https:// targets are supported")
        text = text.rstrip("/")
        if "/" in text:
            raise ValueError(f"upstream target {spec!r} must not have a path")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not host:
        raise ValueError(f"upstream target {spec!r} has no host")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"upstream target {spec!r} has an invalid port") from None
    if not 0 < port < 65536:
        raise ValueError(f"upstream target {spec!r} has an invalid port")
    return tls, host, port


class UpstreamGroup:
    """A named set of upstream targets with pooled keep-alive connections.

    Args:
        name: the group's name (used in logs and metrics).
        targets: ``"host:port"`` or ``"http://host:port"`` strings.
        max_idle_per_target: idle keep-alive connections kept per target.
        max_per_target: connections open at once per target (busy and idle).
        idle_timeout: seconds an idle pooled connection is kept.
        failure_threshold: consecutive connect failures that mark a target down.
        cool_off: seconds a target stays down after ``failure_threshold`` failures.
        breaker_failures: failures within ``breaker_window`` that open a target's breaker
            (0 disables the breaker).
        breaker_window: seconds over which breaker failures are counted.
        breaker_open_seconds: seconds a breaker stays open before one probe request.
        health_check_path: origin-form path for active health checks; ``None`` disables them.
        health_check_interval: seconds between active checks of each target.
        health_check_timeout: seconds a check may take.
        tls: client TLS context for ``https://`` targets (default: the system trust store,
            certificate and host name verified).

    Raises:
        ValueError: a target or a number is invalid.
    """

    def __init__(
        self,
        name: str,
        targets: Sequence[str],
        *,
        max_idle_per_target: int = 64,
        max_per_target: int = 512,
        idle_timeout: float = 30.0,
        failure_threshold: int = 3,
        cool_off: float = 10.0,
        breaker_failures: int = 5,
        breaker_window: float = 10.0,
        breaker_open_seconds: float = 30.0,
        health_check_path: str | None = None,
        health_check_interval: float = 5.0,
        health_check_timeout: float = 2.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not targets:
            raise ValueError(f"upstream group {name!r} has no targets")
        if max_per_target < 1 or max_idle_per_target < 0 or failure_threshold < 1:
            raise ValueError(f"upstream group {name!r}: pool sizes and thresholds must be positive")
        if idle_timeout <= 0 or cool_off <= 0 or health_check_interval <= 0 or health_check_timeout <= 0:
            raise ValueError(f"upstream group {name!r}: durations must be positive")
        if health_check_path is not None and not health_check_path.startswith("/"):
            raise ValueError(f"upstream group {name!r}: health_check_path must start with '/'")
        self.name = name
        self.max_idle_per_target = max_idle_per_target
        self.max_per_target = max_per_target
        self.idle_timeout = idle_timeout
        self.failure_threshold = failure_threshold
        self.cool_off = cool_off
        self.breaker_failures = breaker_failures
        self.breaker_window = breaker_window
        self.breaker_open_seconds = breaker_open_seconds
        self.health_check_path = health_check_path
        self.health_check_interval = health_check_interval
        self.health_check_timeout = health_check_timeout
        self.closed = False
        seen: set[tuple[str, int]] = set()
        self._targets: list[Target] = []
        for spec in targets:
            secure, host, port = _parse_target(spec)
            if (host, port) in seen:
                raise ValueError(f"upstream group {name!r} lists {spec!r} twice")
            seen.add((host, port))
            if secure and tls is None:
                tls = ssl.create_default_context()
            self._targets.append(Target(self, host, port, tls if secure else None))
        self._next = 0
        self._health_task: asyncio.Task[None] | None = None
        # Active checks start with the first request if nobody called start() before.
        self._autostart = health_check_path is not None

    def __repr__(self) -> str:
        return f"UpstreamGroup({self.name!r}, {[t.address for t in self._targets]})"

    @property
    def targets(self) -> tuple[Target, ...]:
        """The group's targets, in configuration order."""
        return tuple(self._targets)

    def select(self, now: float, exclude: Target | None = None) -> Target:
        """The next healthy target whose breaker lets a request through (round-robin).

        Raises:
            NoTargetError: ``"circuit_open"`` when breakers refuse every healthy target,
                ``"no_healthy_target"`` otherwise.
        """
        if self._autostart:
            self.start()
        targets = self._targets
        count = len(targets)
        start = self._next
        self._next = (start + 1) % count
        refused_by_breaker = False
        for i in range(count):
            target = targets[(start + i) % count]
            if target is exclude or not target.healthy(now):
                continue
            if target.breaker.allow(now):
                return target
            refused_by_breaker = True
        raise NoTargetError("circuit_open" if refused_by_breaker else "no_healthy_target")

    def has_alternative(self, now: float, exclude: Target) -> bool:
        """Whether another target could take a retry now."""
        return any(t is not exclude and t.healthy(now) and t.breaker.would_allow(now) for t in self._targets)

    def buffered_bytes(self) -> int:
        """Bytes queued towards all targets (for back-pressure checks and metrics)."""
        return sum(conn.write_buffer_size for t in self._targets for conn in t.live)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start active health checks, if configured (call from the running loop).

        Optional: the first :meth:`select` starts them too.
        """
        self._autostart = False
        if self.health_check_path is not None and self._health_task is None and not self.closed:
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def aclose(self) -> None:
        """Stop health checks and close idle connections; busy ones close when released."""
        self.closed = True
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for target in self._targets:
            target.close_idle()

    async def __aenter__(self) -> UpstreamGroup:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def check_health(self) -> None:
        """Run one active health check of every target now."""
        await asyncio.gather(*(self._check(t) for t in self._targets))

    async def _health_loop(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.health_check_interval)

    async def _check(self, target: Target) -> None:
        path = self.health_check_path or "/"
        request = (
            f"GET {path} HTTP/1.1\r\nhost: {target.address}\r\nconnection: close\r\n"
            "user-agent: bastion-health\r\n\r\n"
        ).encode()
        healthy = False
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.health_check_timeout):
                reader, writer = await asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=target.tls,
                    server_hostname=target.host if target.tls is not None else None,
                )
                writer.write(request)
                line = await reader.readline()
            parts = line.split(None, 2)
            healthy = (
                len(parts) >= 2 and parts[0] in (b"HTTP/1.1", b"HTTP/1.0") and parts[1][:1] in (b"2", b"3")
            )
        except (OSError, TimeoutError):
            healthy = False
        finally:
            if writer is not None:
                writer.close()
        if healthy != target.active_healthy:
            _log.warning("upstream target %s active health: %s", target.address, "up" if healthy else "down")
        target.active_healthy = healthy
        if healthy:
            target.down_until = 0.0
            target.connect_failures = 0

"""The gateway's HTTP/1.1 front: a thin asyncio driver around :class:`ServerConnection`.

:class:`GatewayServer` listens (plain TCP or TLS, ``SO_REUSEPORT`` so several worker processes
can share a port) and creates one :class:`FrontProtocol` per client connection. The protocol
feeds bytes to the sans-I/O core (``http1.py``), starts an :class:`~bastion.gateway.proxy.Exchange`
per request head, and enforces the client-side timeouts of :class:`EngineLimits` with a single
lazily re-armed timer per connection.

It runs on any asyncio loop; the CLI installs uvloop's policy (measured 1.8-2.1x HAProxy's JWT
gateway on one core with it, see ``bench/``).

Connection states, as the timer sees them:

* idle — between requests: closes after ``keepalive_timeout`` (``header_timeout`` before the
  first request);
* head — part of a request head arrived: 408 and close after ``header_timeout`` (slowloris);
* body — the exchange reads the request body: 408 (or close) after ``body_timeout`` without a
  byte, or when the body falls below ``min_body_rate`` on average after ``body_timeout`` (a
  pause in reading for back-pressure restarts that count);
* busy — the exchange waits for the handler or the upstream: the exchange's own timeouts run;
* lingering — closing after an error: input is read and discarded for a short while so the
  answer is not destroyed by a TCP reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import ssl as ssl_module
import time
from collections.abc import Callable
from typing import Final
from typing import cast

from bastion.gateway.contract import Handler
from bastion.gateway.contract import RequestHead
from bastion.gateway.http1 import NEED_DATA
from bastion.gateway.http1 import PAUSED
from bastion.gateway.http1 import ConnectionClosed
from bastion.gateway.http1 import Data
from bastion.gateway.http1 import EndOfMessage
from bastion.gateway.http1 import Rejected
from bastion.gateway.http1 import Request
from bastion.gateway.http1 import ServerConnection
from bastion.gateway.limits import EngineLimits
from bastion.gateway.problems import problem
from bastion.gateway.proxy import Exchange

__all__ = ["FrontProtocol", "GatewayServer"]

_log = logging.getLogger("bastion.gateway")
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 1024 * 1024


class GatewayServer:
    """Serves HTTP/1.1 (optionally over TLS) and hands each request to a handler.

    Args:
        handler: the policy layer's entry point.
        limits: client-side sizes and timeouts.
        ssl: a server TLS context (see :func:`bastion.gateway.tls.make_server_ssl_context`).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        limits: EngineLimits | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits if limits is not None else EngineLimits()
        #: Told ``(peer address, status)`` of every request the front refuses itself (malformed
        #: framing, smuggling attempts, oversized heads), e.g. to count toward a ban.
        self.on_rejected: Callable[[str, int], None] | None = None
        self.ssl = ssl
        self.closing = False
        self.connections: set[FrontProtocol] = set()
        self._server: asyncio.Server | None = None
        self._date_second = 0
        self._date_value = b""
        self._drained: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = True,
        sock: socket.socket | None = None,
        backlog: int = 1024,
    ) -> None:
        """Start listening on ``host:port`` (``port=0``: an ephemeral port), or on ``sock``.

        Raises:
            RuntimeError: the server is already started.
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("GatewayServer already started")
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(
                lambda: FrontProtocol(self), sock=sock, ssl=self.ssl, backlog=backlog
            )
        else:
            self._server = await loop.create_server(
                lambda: FrontProtocol(self),
                host,
                port,
                ssl=self.ssl,
                backlog=backlog,
                reuse_port=reuse_port,
                reuse_address=True,
            )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (empty before :meth:`start`)."""
        if self._server is None:
            return ()
        return tuple(self._server.sockets)

    @property
    def port(self) -> int:
        """The port of the first listening socket.

        Raises:
            RuntimeError: the server is not started.
        """
        sockets = self.sockets
        if not sockets:
            raise RuntimeError("GatewayServer is not listening")
        return int(sockets[0].getsockname()[1])

    def set_handler(self, handler: Handler) -> None:
        """Swap the handler; requests already decided finish with the previous one."""
        self.handler = handler

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for ``grace`` seconds, then cut."""
        self.closing = True
        server = self._server
        if server is not None:
            server.close()
        for proto in list(self.connections):
            proto.shutdown()
        if self.connections:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        for proto in list(self.connections):
            proto.abort()
        if server is not None:
            await server.wait_closed()
        self._server = None

    # -- shared helpers ----------------------------------------------------------------------

    def date(self) -> bytes:
        """The ``Date`` field value (RFC 9110 §6.6.1), rebuilt once per second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_value = email.utils.formatdate(now, usegmt=True).encode()
        return self._date_value

    def buffered_bytes(self) -> int:
        """Bytes queued towards all clients (for back-pressure checks and metrics)."""
        return sum(p.write_buffer_size for p in self.connections)

    def _forget(self, proto: FrontProtocol) -> None:
        self.connections.discard(proto)
        if not self.connections and self._drained is not None:
            self._drained.set()


class FrontProtocol(asyncio.Protocol):
    """One client connection (see the module docstring for its states)."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.conn = ServerConnection(server.limits)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.writing_paused = False
        self.closing = server.closing
        self._client: tuple[str, int] = ("", 0)
        self._tls = server.ssl is not None
        self._reading_paused = False
        self._pumping = False
        self._served = 0
        self._lingering = False
        self._linger_left = 0
        self._idle_since = 0.0
        self._head_started = 0.0
        self._last_rx = 0.0
        #: When the current body's rate window started (``None``: not reading a body) and the
        #: bytes received since.
        self._body_since: float | None = None
        self._body_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(
            high=self.limits.write_buffer_high, low=self.limits.write_buffer_low
        )
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (str(peer[0]), int(peer[1]))
        self.server.connections.add(self)
        now = self.loop.time()
        self._idle_since = now
        self._arm(now + self.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger_left -= len(data)
            if self._linger_left <= 0:
                self.abort()
            return
        now = self.loop.time()
        self._last_rx = now
        conn = self.conn
        conn.receive_data(data)
        if self.exchange is None and conn.head_in_progress and not self._head_started:
            self._head_started = now
            self._arm(now + self.limits.header_timeout)
        self.pump()

    def eof_received(self) -> bool | None:
        if self._lingering:
            return False
        self.conn.receive_data(b"")
        self.pump()
        # Keep the write side open while a response is still being produced (half-close).
        return self.exchange is not None and not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.client_lost()
        self.server._forget(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.exchange is not None:
            self.exchange.client_pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.exchange is not None:
            self.exchange.client_resume_writing()

    # -- used by the exchange ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes to the client."""
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Send several pieces to the client."""
        transport = self.transport
        if transport is not None:
            transport.writelines(parts)

    @property
    def write_buffer_size(self) -> int:
        """Bytes waiting to be sent to the client."""
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def abort(self) -> None:
        """Drop the connection at once (a response cannot be completed)."""
        if self.transport is not None:
            self.transport.abort()

    def pump(self) -> None:
        """Hand queued events to the exchange while it accepts them; start new exchanges."""
        if self._pumping:
            return
        self._pumping = True
        conn = self.conn
        try:
            while True:
                exchange = self.exchange
                if exchange is not None and not exchange.accepting:
                    self._pause_reading()
                    return
                event = conn.next_event()
                kind = type(event)
                if kind is Data:
                    if exchange is not None:
                        data = cast(Data, event).data
                        self._body_bytes += len(data)
                        exchange.request_data(data)
                elif kind is Request:
                    self._start_exchange(cast(Request, event))
                elif kind is EndOfMessage:
                    if exchange is not None:
                        exchange.request_end()
                elif event is NEED_DATA:
                    self._resume_reading()
                    if exchange is not None:
                        # Reading the body: the body timeout runs from the last byte, and the
                        # rate window from the body's start.
                        if self._body_since is None:
                            self._body_since = self.loop.time()
                            self._body_bytes = 0
                        self._arm(self._body_deadline())
                    return
                elif event is PAUSED:
                    self._pause_reading()
                    return
                elif kind is Rejected:
                    self._rejected(cast(Rejected, event))
                    return
                else:
                    self._client_eof(cast(ConnectionClosed, event))
                    return
        finally:
            self._pumping = False

    def exchange_done(self, exchange: Exchange) -> None:
        """The exchange wrote its whole response: start the next cycle or close."""
        if self.exchange is not exchange:
            return
        self.exchange = None
        self._served += 1
        self._body_since = None
        conn = self.conn
        if self.closing or not conn.keep_alive or self.transport is None:
            self._close()
            return
        conn.start_next_cycle()
        now = self.loop.time()
        self._idle_since = now
        self._head_started = 0.0
        self._arm(now + self.limits.keepalive_timeout)
        self.pump()
        if self.exchange is None and conn.head_in_progress:
            self._head_started = now
            self._arm(now + self.limits.header_timeout)

    def shutdown(self) -> None:
        """The server is closing: finish the current exchange, then close."""
        self.closing = True
        if self.exchange is None:
            self._close()

    # -- internals ---------------------------------------------------------------------------

    def _start_exchange(self, request: Request) -> None:
        head = RequestHead(
            method=request.method,
            target=request.target,
            headers=request.headers,
            client=self._client,
            http_version=request.http_version,
            tls=self._tls,
            started=self.loop.time(),
        )
        exchange = Exchange(self, request, head)
        self.exchange = exchange
        exchange.run(self.server.handler)

    def _rejected(self, rejected: Rejected) -> None:
        hook = self.server.on_rejected
        if hook is not None:
            try:
                hook(self._client[0], rejected.status)
            except Exception:  # an observer's bug must not keep the refusal from being sent
                _log.exception("on_rejected hook failed")
        exchange = self.exchange
        if exchange is not None:
            exchange.client_rejected(rejected.status, rejected.detail)
            return
        self._error_response(rejected.status, rejected.detail)

    def _error_response(self, status: int, detail: str) -> None:
        headers, body = problem(status, detail)
        headers.append((b"date", self.server.date()))
        head = self.conn.start_response(status, headers, content_length=len(body), close=True)
        self.writelines([head, body])
        self._close()

    def _client_eof(self, event: ConnectionClosed) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client_lost()
            self.exchange = None
        self._close()

    def _close(self) -> None:
        """Close after flushing; linger briefly so unread input does not reset the answer."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._pause_reading()
        if not self._tls and transport.can_write_eof() and self.conn.in_message:
            transport.write_eof()
            self._lingering = True
            self._linger_left = _LINGER_BYTES
            self._resume_reading()
            self._arm(self.loop.time() + _LINGER_SECONDS)
            return
        transport.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
            if self._body_since is not None:
                # The pause was ours (back-pressure): the client's rate counts afresh.
                self._body_since = self.loop.time()
                self._body_bytes = 0

    def _body_deadline(self) -> float:
        limits = self.limits
        deadline = self._last_rx + limits.body_timeout
        if limits.min_body_rate and self._body_since is not None:
            earned = self._body_since + limits.body_timeout + self._body_bytes / limits.min_body_rate
            deadline = min(deadline, earned)
        return deadline

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires no later than ``deadline``."""
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self.loop.time()
        limits = self.limits
        if self._lingering:
            self.abort()
            return
        exchange = self.exchange
        if exchange is None:
            if self._head_started:
                deadline = self._head_started + limits.header_timeout
                if now >= deadline:
                    self._error_response(408, "The request header was not received in time.")
                    return
            else:
                wait = limits.keepalive_timeout if self._served else limits.header_timeout
                deadline = self._idle_since + wait
                if now >= deadline:
                    transport.close()
                    return
        elif exchange.accepting and not self._reading_paused:
            deadline = self._body_deadline()
            if now >= deadline:
                exchange.client_timeout()
                return
        else:
            deadline = now + limits.body_timeout
        self._arm(deadline)

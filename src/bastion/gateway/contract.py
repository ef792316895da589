"""The seam between the gateway's HTTP engine and its policy layer.

The engine (``http1.py`` sans-I/O framing, ``server.py`` asyncio driver, ``upstream.py`` pools)
knows HTTP/1.1 and nothing about tokens or routes. The policy layer (``routing.py``,
``policies.py``, ``app.py``) knows routes, tokens and headers and nothing about sockets. For each
request the engine hands a :class:`RequestHead` to a :data:`Handler`, which answers with a
:class:`Reply` (the gateway answers itself) or a :class:`Forward` (the engine proxies to an
upstream). When the exchange ends the engine calls :meth:`Forward.on_complete` /
:meth:`Reply.on_complete` with an :class:`Outcome`, so the policy layer can log and count.

Invariants:

* The handler sees the request head only; bodies stream through the engine untouched.
* Header names are lower-cased bytes; values are bytes exactly as received (no decoding).
* ``Forward.headers`` is the complete set the upstream will see, apart from framing headers
  (``content-length`` / ``transfer-encoding`` / ``connection`` / ``host``) that the engine owns
  and, unless ``Forward.connection_filtered``, the fields the client's ``Connection`` names.
* ``Forward.response_headers`` filters what goes back to the client (hide ``server`` etc.).
"""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Protocol

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class RequestHead:
    """A parsed request line and header block, before any body byte is read."""

    method: bytes
    #: The request target exactly as sent (origin-form expected; the policy layer validates it).
    target: bytes
    #: Lower-cased header names, values as sent, in order, duplicates kept.
    headers: Headers
    #: Peer address of the TCP connection (``(host, port)``).
    client: tuple[str, int]
    http_version: bytes = b"1.1"
    #: ``True`` when the front terminated TLS for this connection.
    tls: bool = False
    #: Monotonic time the head was complete; the engine fills it.
    started: float = 0.0


@dataclass(slots=True)
class Outcome:
    """What happened, reported once per request when the response is complete or fails."""

    status: int
    bytes_sent: int
    total_seconds: float
    upstream_seconds: float | None = None
    #: The upstream target (``host:port``) that answered, if any.
    upstream: str | None = None
    #: ``None`` on success; otherwise a short reason (``"upstream_connect"``, ``"upstream_timeout"``,
    #: ``"client_closed"``, ``"circuit_open"`` …) usable as a metrics label.
    error: str | None = None


class UpstreamGroup(Protocol):
    """A named set of targets with its pools; built and owned by the engine (``upstream.py``)."""

    name: str


@dataclass(slots=True)
class Reply:
    """The gateway answers the request itself (401, 403, 404, 400, 429 ...)."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    on_complete: Callable[[Outcome], None] | None = None


@dataclass(slots=True)
class Forward:
    """Proxy the request to ``upstream`` with a rewritten target and header set."""

    upstream: UpstreamGroup
    #: Origin-form target sent upstream (canonical path, rewritten prefix, original query).
    target: bytes
    headers: Headers
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    total_timeout: float = 60.0
    #: Whether the engine may retry once on another target (idempotent methods only; the policy
    #: layer decides, the engine additionally never retries once request body bytes were sent).
    retry: bool = False
    #: Called with the upstream's status and headers; returns the headers the client gets.
    response_headers: Callable[[int, Headers], Headers] | None = None
    on_complete: Callable[[Outcome], None] | None = None
    #: ``True`` when the handler already removed the client fields its ``Connection`` header
    #: names (RFC 9110 §7.6.1). The engine then drops nothing more from :attr:`headers` on that
    #: account, so a client cannot make it drop a field the handler set itself (Traefik
    #: CVE-2024-45410: ``Connection: X-Forwarded-For``). ``False``: the engine removes every
    #: field named in the client's ``Connection`` from :attr:`headers`.
    connection_filtered: bool = False
    #: Most request content the engine forwards for this request (a route's ``max_body``),
    #: below the engine's own ``max_body``; counted while streaming, so a chunked body is cut
    #: with 413 too. ``None``: the engine's limit alone.
    max_body: int | None = None
    #: The headers of :attr:`headers` that speak for the verified identity (``X-Bastion-*`` and
    #: the route's claim headers), apart, for forward-auth answers; ``None``: no identity.
    identity: Headers | None = None


Decision = Reply | Forward

#: The policy layer's entry point. It may return the decision directly (the fast path: a token
#: found in the verified-token cache needs no await) or an awaitable of it.
Handler = Callable[[RequestHead], Decision | Awaitable[Decision]]

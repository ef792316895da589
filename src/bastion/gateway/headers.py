"""Header rewriting: what the upstream sees and what the client gets back.

Request side, in one pass over the client's headers (:func:`scan_request`):

* hop-by-hop headers are dropped (RFC 9110 §7.6.1: ``Connection``, ``Keep-Alive``,
  ``Proxy-Authenticate``, ``Proxy-Authorization``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
  ``Upgrade``, and every header named in ``Connection``), as are the framing headers the engine
  owns (``Host``, ``Content-Length``);
* every identity header the gateway sets is dropped whatever its case: the ``X-Bastion-*``
  family, the configured ``strip_headers`` and the forwarding headers (``Forwarded``,
  ``X-Forwarded-*``, ``X-Real-IP``, ``X-Request-Id``), which are then set again from facts the
  gateway trusts (:func:`forward_headers`);
* ``Authorization`` is held aside and forwarded only when the route says so;
* a name that spells one of the above with ``_`` for ``-`` (``X_Bastion_Subject``,
  ``x_forwarded_for``) is dropped too: CGI and WSGI servers map ``-`` and ``_`` to the same
  ``HTTP_X_BASTION_SUBJECT`` variable, which is why nginx and Envoy single out underscores.

The client address is the socket peer, unless the peer is a trusted proxy: then
``X-Forwarded-For`` is walked from the right, skipping trusted proxies, and the first untrusted
address is the client (:class:`TrustedProxies`). A client-sent ``X-Request-Id`` is replaced unless
it came through a trusted proxy.

Response side (:func:`response_filter`): hop-by-hop headers, ``Server`` and ``X-Powered-By`` are
hidden, ``Server: bastion`` (configurable) and ``X-Request-Id`` added.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import secrets
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final

import orjson

from bastion.gateway.contract import Headers
from bastion.net import TrustedProxies

__all__ = [
    "HOP_BY_HOP",
    "HeaderRules",
    "ScannedHeaders",
    "TrustedProxies",
    "claim_value",
    "forward_headers",
    "identity_headers",
    "identity_value",
    "new_request_id",
    "response_filter",
    "scan_request",
    "unsettable_header",
]

#: RFC 9110 §7.6.1 and RFC 9112 §6.1 / §7.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Framing the engine writes itself (see ``contract.py``).
_ENGINE_OWNED: Final = frozenset({b"host", b"content-length"})
#: Forwarding facts the gateway sets from what it trusts.
_FORWARDING: Final = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-real-ip",
        b"x-request-id",
        # W3C Trace Context: replaced by the gateway's own (see ``tracing.py``).
        b"traceparent",
        b"tracestate",
    }
)
_IDENTITY_PREFIX: Final = b"x-bastion-"
_RESPONSE_HIDDEN: Final = HOP_BY_HOP - {b"transfer-encoding"} | {b"server", b"x-powered-by", b"x-request-id"}
# Matched with fullmatch: ``$`` also matches before a final newline.
_REQUEST_ID_RE: Final = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
_HOST_RE: Final = re.compile(rb"[A-Za-z0-9.\-_~!$&'()*+,;=:\[\]%]{1,255}")
_SAFE_VALUE_RE: Final = re.compile(r"[\x21-\x7e]*")


class _RequestIds:
    """Request ids: a per-process random prefix (64 bits) and a counter (64 bits), in hex.

    Unique within the process by the counter and across processes by the prefix, at the cost of
    one string format instead of a ``getrandom`` system call per request (measured at ~5% of the
    gateway's time under load). Ids are correlation handles, not secrets: nothing may rely on
    them being unguessable.
    """

    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.prefix = ""
        self.counter = itertools.count()
        self.reseed()

    def reseed(self) -> None:
        """A new prefix and counter (at start-up and in a forked child)."""
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_REQUEST_IDS: Final = _RequestIds()
if hasattr(os, "register_at_fork"):  # a forked worker must not repeat its parent's ids
    os.register_at_fork(after_in_child=_REQUEST_IDS.reseed)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, unique per process run (see :class:`_RequestIds`)."""
    return _REQUEST_IDS.next()


def identity_value(value: str) -> bytes:
    """A claim value made safe for a header: visible ASCII kept, anything else %-escaped.

    Claims are attacker-influenced text (a user may choose their ``sub`` or name); a CR, LF or
    NUL copied into a header would split it. ``%`` itself is escaped so the mapping is
    reversible with one percent-decode.
    """
    if _SAFE_VALUE_RE.fullmatch(value) and "%" not in value:
        return value.encode("ascii")
    return "".join(
        c if "\x21" <= c <= "\x7e" and c != "%" else "".join(f"%{b:02X}" for b in c.encode()) for c in value
    ).encode("ascii")


def claim_value(value: Any) -> bytes | None:
    """A token claim as a header value (a route's ``claim_headers``); ``None``: send no header.

    A string is sent as it is, any other JSON value (a list of roles, an object, a number, a
    boolean) as compact JSON (``["admin","ops"]``); then, like every identity value, anything
    but visible ASCII, and ``%``, is %-escaped (:func:`identity_value`), so a CR, LF or NUL in a
    claim can never end the field or start another, and one percent-decode gives the string or
    the UTF-8 JSON back. ``null`` or a value that is not JSON sends nothing.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return identity_value(value)
    try:
        text = orjson.dumps(value).decode("utf-8")
    except (orjson.JSONEncodeError, TypeError):
        return None
    return identity_value(text)


#: Headers a route's ``claim_headers`` may not set: framing, hop-by-hop, credentials, the
#: forwarding facts and the identity headers the gateway sets itself.
_UNSETTABLE: Final = frozenset(
    {b"authorization", b"cookie", b"expect", b"x-bastion-subject", b"x-bastion-client", b"x-bastion-scopes"}
)


def unsettable_header(name: str) -> bool:
    """Whether a route may not set header ``name`` from a claim (settings validation).

    ``_`` is read as ``-`` (CGI servers do): ``X_Forwarded_For`` is ``X-Forwarded-For``.
    """
    raw = name.lower().replace("_", "-").encode("ascii")
    if raw in _UNSETTABLE:
        return True
    return not raw.startswith(_IDENTITY_PREFIX) and _reserved(raw, frozenset())


@dataclass(slots=True)
class ScannedHeaders:
    """The client's headers split into what passes and the facts the gateway needs."""

    #: End-to-end headers that pass through unchanged.
    kept: Headers = field(default_factory=list)
    authorization: list[bytes] = field(default_factory=list)
    host: bytes | None = None
    forwarded_for: list[bytes] = field(default_factory=list)
    forwarded_proto: bytes | None = None
    forwarded_host: bytes | None = None
    request_id: bytes | None = None
    #: The client's ``traceparent``; ``b""`` when it sent several (invalid).
    traceparent: bytes | None = None
    tracestate: list[bytes] | None = None


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """The per-gateway header configuration, compiled."""

    #: Lower-cased extra client header names to drop.
    strip: frozenset[bytes] = frozenset()
    proxies: TrustedProxies = field(default_factory=lambda: TrustedProxies(()))
    server: bytes | None = b"bastion"

    @classmethod
    def build(
        cls,
        strip_headers: Iterable[str],
        trusted_proxies: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
        server_header: str | None,
    ) -> HeaderRules:
        """Compile the settings' header options."""
        return cls(
            strip=frozenset(name.lower().encode("ascii") for name in strip_headers),
            proxies=TrustedProxies(trusted_proxies),
            server=server_header.encode("ascii") if server_header is not None else None,
        )


def _reserved(name: bytes, strip: frozenset[bytes]) -> bool:
    """Whether ``name`` is one the gateway removes, owns or sets itself."""
    return (
        name in HOP_BY_HOP
        or name in _ENGINE_OWNED
        or name in _FORWARDING
        or name == b"authorization"
        or name.startswith(_IDENTITY_PREFIX)
        or name in strip
    )


def scan_request(headers: Headers, rules: HeaderRules) -> ScannedHeaders:
    """One pass over the client's headers (lower-cased names, see ``contract.py``)."""
    out = ScannedHeaders()
    kept = out.kept
    connection: list[bytes] = []
    strip = rules.strip
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"connection":
                connection.append(value)
        elif name in _ENGINE_OWNED:
            if name == b"host":
                out.host = value if out.host is None else b""  # two Host headers: unusable
        elif name == b"authorization":
            out.authorization.append(value)
        elif name in _FORWARDING:
            if name == b"x-forwarded-for":
                out.forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                out.forwarded_proto = value
            elif name == b"x-forwarded-host":
                out.forwarded_host = value
            elif name == b"x-request-id":
                out.request_id = value
            elif name == b"traceparent":
                out.traceparent = value if out.traceparent is None else b""
            elif name == b"tracestate":
                if out.tracestate is None:
                    out.tracestate = [value]
                else:
                    out.tracestate.append(value)
        elif not name.startswith(_IDENTITY_PREFIX) and name not in strip:
            if b"_" in name and _reserved(name.replace(b"_", b"-"), strip):
                continue  # ``X_Bastion_Subject``: the same CGI variable as the real header
            kept.append((name, value))
    if connection:
        named = {token.strip().lower() for value in connection for token in value.split(b",")}
        out.kept = [(name, value) for name, value in kept if name not in named]
    return out


def forward_headers(
    scanned: ScannedHeaders,
    *,
    peer: str,
    peer_trusted: bool,
    client_ip: str,
    tls: bool,
    request_id: str,
    identity: Headers | None,
    forward_authorization: bool,
    traceparent: bytes | None = None,
    continued: bool = False,
) -> Headers:
    """The complete header set for the upstream (framing headers aside).

    Args:
        scanned: The client's headers from :func:`scan_request`.
        peer: The socket peer address.
        peer_trusted: Whether ``peer`` is a trusted proxy.
        client_ip: The resolved client address (for logs; XFF carries the chain).
        tls: Whether the front terminated TLS.
        request_id: The id of this request.
        identity: The :func:`identity_headers` of the verified token, or ``None``.
        forward_authorization: Whether the client's ``Authorization`` passes through.
        traceparent: The gateway's ``traceparent`` (``tracing.gateway_traceparent``).
        continued: Whether it continues the client's trace: then its ``tracestate`` passes.
    """
    headers = list(scanned.kept)
    if forward_authorization and scanned.authorization:
        headers.append((b"authorization", scanned.authorization[0]))
    # X-Forwarded-For: the trusted chain is kept and the peer appended; from anybody else the
    # peer alone (their claimed chain is noise at best, a spoof at worst).
    if peer_trusted and scanned.forwarded_for:
        chain = b", ".join(value.strip() for value in scanned.forwarded_for)
        headers.append((b"x-forwarded-for", chain + b", " + peer.encode("ascii")))
    else:
        headers.append((b"x-forwarded-for", peer.encode("ascii")))
    proto = b"https" if tls else b"http"
    if peer_trusted and scanned.forwarded_proto in (b"http", b"https"):
        proto = scanned.forwarded_proto  # type: ignore[assignment]
    headers.append((b"x-forwarded-proto", proto))
    host = scanned.forwarded_host if peer_trusted and scanned.forwarded_host else scanned.host
    if host and _HOST_RE.fullmatch(host):
        headers.append((b"x-forwarded-host", host))
    headers.append((b"x-real-ip", client_ip.encode("ascii")))
    headers.append((b"x-request-id", request_id.encode("ascii")))
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
        if continued and scanned.tracestate:
            headers.append((b"tracestate", b",".join(scanned.tracestate)))
    if identity:
        headers.extend(identity)
    return headers


def identity_headers(subject: str | None, client_id: str | None, scopes: Iterable[str]) -> Headers:
    """The ``X-Bastion-*`` headers for a verified identity (scopes sorted, values escaped)."""
    headers: Headers = []
    if subject is not None:
        headers.append((b"x-bastion-subject", identity_value(subject)))
    if client_id is not None:
        headers.append((b"x-bastion-client", identity_value(client_id)))
    headers.append((b"x-bastion-scopes", b" ".join(identity_value(scope) for scope in sorted(scopes))))
    return headers


def trusted_request_id(scanned: ScannedHeaders, peer_trusted: bool) -> str:
    """The request id: a trusted proxy's well-formed one, else a fresh one."""
    if peer_trusted and scanned.request_id is not None and _REQUEST_ID_RE.fullmatch(scanned.request_id):
        return scanned.request_id.decode("ascii")
    return new_request_id()


def response_filter(request_id: str, server: bytes | None) -> Callable[[int, Headers], Headers]:
    """A ``Forward.response_headers`` callback for one request.

    Drops hop-by-hop headers (keeping ``Transfer-Encoding``, which the engine needs for framing),
    those named in ``Connection``, ``Server``, ``X-Powered-By`` and the upstream's
    ``X-Request-Id``; adds ``Server`` and this request's ``X-Request-Id``.
    """
    rid = request_id.encode("ascii")

    def _filter(status: int, headers: Headers) -> Headers:
        named: set[bytes] = set()
        for name, value in headers:
            if name == b"connection":
                named.update(token.strip().lower() for token in value.split(b","))
        named.discard(b"transfer-encoding")
        named.discard(b"content-length")
        out = [(n, v) for n, v in headers if n not in _RESPONSE_HIDDEN and n not in named]
        if server is not None:
            out.append((b"server", server))
        out.append((b"x-request-id", rid))
        return out

    return _filter


def reply_headers(request_id: str, server: bytes | None) -> Headers:
    """Headers every response the gateway writes itself carries."""
    headers: Headers = [(b"x-request-id", request_id.encode("ascii"))]
    if server is not None:
        headers.append((b"server", server))
    return headers

"""CORS at the authorization server, for browser-based clients (the Fetch standard's CORS protocol).

A single-page application registered as a public client (OAuth 2.0 for Browser-Based
Applications, draft-ietf-oauth-browser-based-apps §6.3: "a public client … the browser-based
OAuth client") talks to this server from script: it exchanges its code at ``/token`` with PKCE,
refreshes and revokes there, asks ``/userinfo``, and reads the metadata and the JWKS. The
Security BCP (RFC 9700 §4.16 "Usage of CORS") says these endpoints "MAY support the use of
Cross-Origin Resource Sharing", and "CORS MUST NOT be supported at the Authorization Endpoint as
the client does not access this endpoint directly" — nor are ``/login``, ``/consent`` and
``/logout``: navigations, never read by script. Nor is ``/introspect``: resource servers call it.

Two kinds of path:

* **Public documents** (RFC 8414 and OpenID discovery metadata, the JWKS): the same bytes for
  every caller, no credentials, no personal data, readable by any server anyway. They carry
  ``Access-Control-Allow-Origin: *`` on every response, whatever the ``Origin`` — so the answer
  does not vary by origin and stays cacheable as it is (``Cache-Control: public``), with no
  ``Vary`` needed.
* **Client endpoints** (``/token``, ``/revoke``, ``/userinfo``): only the origins of the
  redirect URIs of the registered, enabled *public* clients. A confidential client is a server
  (a BFF, a web back end) holding a secret a browser must never see: a page of its origin has
  no business at ``/token``, so its origin is never allowed — allowing it would only hand its
  cross-site scripting a way to read token responses. The allowed origin is echoed back, with
  ``Vary: Origin`` on every response of these paths (allowed or not: a cache must not hand one
  origin's answer to another), and never ``Access-Control-Allow-Credentials``: these endpoints
  use no cookies, so a browser sending some would have them ignored and the response withheld.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here
with 204 and the allow headers, or refused with 403 ``application/problem+json`` without CORS
headers (to the browser the same failure as a 204 without them; the status tells the operator).

The allowed set is read through the client store (:class:`BrowserOrigins`): cached for
``client_cache_ttl`` seconds, dropped at once when this process creates, changes or deletes a
client. Another process's change (``bastion clients create`` in a shell) reaches this one within
``client_cache_ttl`` — the same bound as a disabled client or a rotated secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import orjson

from bastion.protocol.models import Client
from bastion.services.clients import ClientService
from bastion.storage.protocols import StorageError
from bastion.types import ASGIApp
from bastion.types import Message
from bastion.types import Receive
from bastion.types import Scope
from bastion.types import Send

__all__ = ["PUBLIC_DOCUMENTS", "BrowserOrigins", "CorsMiddleware", "client_endpoints", "web_origin"]

log = logging.getLogger("bastion.server")

#: Documents any origin may read (``Access-Control-Allow-Origin: *``).
PUBLIC_DOCUMENTS: Final = (
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
    "/jwks.json",
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_MAX_AGE: Final = b"600"
_VARY: Final = (b"vary", b"origin")
_VARY_PREFLIGHT: Final = (b"vary", b"origin, access-control-request-method, access-control-request-headers")
#: Headers a client endpoint sends that script needs: the 401 challenge, a 503's wait.
_EXPOSED: Final = (b"access-control-expose-headers", b"www-authenticate, retry-after")


@dataclass(frozen=True, slots=True)
class _Rule:
    """What one path allows: any origin (public documents) or the clients' origins."""

    any_origin: bool
    methods: bytes
    headers: frozenset[bytes]
    allow_headers: bytes | None


def _rule(any_origin: bool, methods: str, headers: Iterable[str] = ()) -> _Rule:
    names = tuple(headers)
    return _Rule(
        any_origin=any_origin,
        methods=methods.encode("ascii"),
        headers=frozenset(name.encode("ascii") for name in names),
        allow_headers=", ".join(names).encode("ascii") if names else None,
    )


def client_endpoints(served: Iterable[str]) -> dict[str, _Rule]:
    """The CORS rule of every path in ``served`` that has one."""
    rules = {
        # The form content type is CORS-safelisted; a client library may still send one with a
        # charset, which is not, and so preflights: allow the header.
        "/token": _rule(False, "POST", ["content-type"]),
        "/revoke": _rule(False, "POST", ["content-type"]),
        "/userinfo": _rule(False, "GET, POST", ["authorization", "content-type"]),
        **{path: _rule(True, "GET, HEAD") for path in PUBLIC_DOCUMENTS},
    }
    paths = set(served)
    return {path: rule for path, rule in rules.items() if path in paths}


def web_origin(uri: str) -> str | None:
    """The origin a browser sends for a page at ``uri`` (Fetch: scheme, host, port; the default
    port left out), or ``None`` for a URI no web page has (a native app's private-use scheme)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _browser_origins(clients: Iterable[Client]) -> frozenset[str]:
    return frozenset(
        origin
        for client in clients
        if client.public and not client.disabled
        for uri in client.redirect_uris
        if (origin := web_origin(uri)) is not None
    )


class BrowserOrigins:
    """The origins of the enabled public clients' redirect URIs, read through the client store.

    Cached for ``ttl`` seconds; :meth:`invalidate` (hooked to the client service's
    ``on_changed``) drops the copy at once, and a load that was running when it was called is
    not kept, so a change made by this process is never hidden by a read that raced it.
    """

    def __init__(self, clients: ClientService, *, ttl: float, clock: Callable[[], float] = time.time) -> None:
        """Read ``clients``; keep what was read for ``ttl`` seconds of ``clock``."""
        self._clients = clients
        self._ttl = ttl
        self._clock = clock
        self._origins: frozenset[str] | None = None
        self._expires = 0.0
        self._generation = 0
        self._lock = asyncio.Lock()

    def invalidate(self, _client_id: str = "") -> None:
        """Forget the cached set (a client was created, changed or deleted)."""
        self._generation += 1
        self._origins = None

    async def origins(self) -> frozenset[str]:
        """The allowed origins, at most ``ttl`` seconds old.

        Raises:
            StorageError: the client store cannot be read.
        """
        cached = self._origins
        if cached is not None and self._expires > self._clock():
            return cached
        async with self._lock:
            cached = self._origins
            if cached is not None and self._expires > self._clock():
                return cached
            generation = self._generation
            started = self._clock()
            loaded = _browser_origins(await self._clients.list())
            if generation == self._generation:
                self._origins = loaded
                self._expires = started + self._ttl
            return loaded

    async def allows(self, origin: str) -> bool:
        """Whether ``origin`` is one of a registered public client's; a store that cannot be
        read allows nothing (fail closed, logged)."""
        try:
            return origin in await self.origins()
        except StorageError as exc:
            log.error("CORS: cannot read the registered clients: %s", exc)
            return False


def _fields(scope: Scope) -> tuple[bytes | None, bytes | None, list[bytes]]:
    """``Origin`` (``None`` when absent or sent twice), ``Access-Control-Request-Method`` and
    the ``Access-Control-Request-Headers`` values."""
    origin: bytes | None = None
    origins = 0
    method: bytes | None = None
    requested: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"origin":
            origin = value
            origins += 1
        elif name == b"access-control-request-method":
            method = value
        elif name == b"access-control-request-headers":
            requested.append(value)
    return (origin if origins == 1 else None), method, requested


class CorsMiddleware:
    """Pure ASGI: CORS for the paths of :func:`client_endpoints`, everything else untouched."""

    def __init__(self, app: ASGIApp, rules: dict[str, _Rule], origins: BrowserOrigins) -> None:
        """Serve ``app`` with ``rules`` by path, client origins from ``origins``."""
        self.app = app
        self.rules = rules
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a preflight, or add the CORS headers to the app's response."""
        rule = self.rules.get(scope["path"]) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        origin, method, requested = _fields(scope)
        if scope["method"] == "OPTIONS" and origin is not None and method is not None:
            await self._preflight(rule, origin, method, requested, send)
            return
        if rule.any_origin:
            added = [(b"access-control-allow-origin", b"*")]
        elif origin is not None and await self._allows(rule, origin):
            added = [_VARY, (b"access-control-allow-origin", origin), _EXPOSED]
        else:
            added = [_VARY]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _allows(self, rule: _Rule, origin: bytes) -> bool:
        if origin == b"null":  # sandboxed frames, data: and file: pages: any page can send it
            return False
        if rule.any_origin:
            return True
        return await self.origins.allows(origin.decode("latin-1"))

    async def _preflight(
        self, rule: _Rule, origin: bytes, method: bytes, requested: list[bytes], send: Send
    ) -> None:
        if not await self._allows(rule, origin):
            await _refuse(send, "The origin is not allowed to call this endpoint")
            return
        if method not in {m.strip() for m in rule.methods.split(b",")}:
            await _refuse(send, "The requested method is not allowed on this endpoint")
            return
        for value in requested:
            for part in value.split(b","):
                name = part.strip(b" \t").lower()
                if name and name not in rule.headers:
                    await _refuse(send, "A requested header is not allowed on this endpoint")
                    return
        headers = [
            _VARY_PREFLIGHT,
            (b"access-control-allow-origin", b"*" if rule.any_origin else origin),
            (b"access-control-allow-methods", rule.methods),
            (b"access-control-max-age", _MAX_AGE),
        ]
        if rule.allow_headers is not None:
            headers.append((b"access-control-allow-headers", rule.allow_headers))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, detail: str) -> None:
    body = orjson.dumps({"type": "about:blank", "title": "Forbidden", "status": 403, "detail": detail})
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        _VARY_PREFLIGHT,
    ]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})

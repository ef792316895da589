"""Forward-auth against the proxy: one matrix of requests, two ways through the gateway.

Each :class:`Case` is a client request (method, raw target, credential, extra header lines).
:func:`through_proxy` sends it to the gateway's own proxy from an untrusted client address
(``127.0.0.2``) and notes what the recording upstream received; the forward-auth side (a direct
ask here, a real nginx in ``tests/e2e/test_forward_auth_nginx.py``) must then come to the same
outcome: forwarded with the same identity, or refused with the same status and challenge.

The stack (``tests.conformance.gw_attack``) trusts ``127.0.0.1`` as its proxy and has
forward-auth enabled; its routes are ``/admin`` (scope ``admin``), ``/catalog``
(``catalog:read`` for GET/HEAD, ``catalog:write`` otherwise), ``/public`` and ``/`` (no token).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bastion.protocol import jose
from tests.conformance.gw_attack import HOST
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import start_stack
from tests.gateway.engine.servers import RawClient
from tests.gateway.engine.servers import Reply

#: The client address of requests through the proxy: not a trusted proxy.
CLIENT = "127.0.0.2"
#: The identity fields the gateway sets for the upstream.
IDENTITY = (b"x-bastion-subject", b"x-bastion-client", b"x-bastion-scopes")


@dataclass(frozen=True)
class Case:
    """One client request of the matrix."""

    name: str
    #: The status through the proxy (200: forwarded).
    expect: int
    method: bytes
    target: bytes
    #: ``None``, ``"bad"``, ``"foreign"`` (signed by another key), ``"expired"``, or the scope
    #: string of a valid token.
    token: str | None = None
    headers: tuple[bytes, ...] = ()


READ = "catalog:read"
WRITE = "catalog:read catalog:write"
ADMIN = "admin"

MATRIX = [
    # protected paths with and without a good token
    Case("no-token", 401, b"GET", b"/catalog/items"),
    Case("read", 200, b"GET", b"/catalog/items", READ),
    Case("read-with-query", 200, b"GET", b"/catalog/items?page=2&sort=name", READ),
    Case("head", 200, b"HEAD", b"/catalog/items", READ),
    Case("write", 200, b"POST", b"/catalog/items", WRITE, (b"Content-Length: 0",)),
    Case("admin", 200, b"GET", b"/admin/users", ADMIN),
    # bad tokens
    Case("garbage-token", 401, b"GET", b"/catalog/items", "bad"),
    Case("foreign-key", 401, b"GET", b"/catalog/items", "foreign"),
    Case("expired", 401, b"GET", b"/catalog/items", "expired"),
    Case("basic-scheme", 401, b"GET", b"/catalog/items", None, (b"Authorization: Basic YTpi",)),
    Case("token-in-query", 401, b"GET", b"/catalog/items?access_token=abc"),
    # insufficient scope
    Case("read-cannot-write", 403, b"POST", b"/catalog/items", READ, (b"Content-Length: 0",)),
    Case("read-cannot-delete", 403, b"DELETE", b"/catalog/items/1", READ),
    Case("read-is-not-admin", 403, b"GET", b"/admin/users", READ),
    # public paths, with spoofed identity headers the upstream must never see
    Case("public", 200, b"GET", b"/public/x"),
    Case("public-root", 200, b"GET", b"/"),
    Case(
        "public-spoofed",
        200,
        b"GET",
        b"/public/x",
        None,
        (b"X-Bastion-Subject: admin", b"X-Bastion-Scopes: admin"),
    ),
    Case("public-with-token", 200, b"GET", b"/public/x", READ),
    # bypass attempts: dot segments and their encodings
    Case("dotdot", 400, b"GET", b"/public/../admin/users"),
    Case("dotdot-encoded", 400, b"GET", b"/public/%2e%2e/admin/users"),
    Case("dotdot-mixed", 400, b"GET", b"/public/.%2E/admin/users"),
    Case("dot", 400, b"GET", b"/public/./../admin/users"),
    # encoded slashes and backslashes
    Case("encoded-slash", 400, b"GET", b"/public%2f..%2fadmin/users"),
    Case("encoded-slash-upper", 400, b"GET", b"/public%2F..%2Fadmin/users"),
    Case("double-encoded-slash", 400, b"GET", b"/public%252f..%252fadmin/users"),
    Case("encoded-backslash", 400, b"GET", b"/public%5c..%5cadmin/users"),
    Case("backslash", 400, b"GET", b"/public\\..\\admin/users"),
    # case and trailing-dot variants
    Case("upper", 400, b"GET", b"/ADMIN/users"),
    Case("mixed-case", 400, b"GET", b"/Admin/users"),
    Case("trailing-dot", 400, b"GET", b"/admin./users"),
    Case("escaped-letter", 401, b"GET", b"/%61dmin/users"),
    Case("escaped-letter-admin", 200, b"GET", b"/%61dmin/users", ADMIN),
    # ';' parameters
    Case("matrix-dotdot", 400, b"GET", b"/public/..;/admin/users"),
    Case("matrix-param", 400, b"GET", b"/admin;x=1/users"),
    Case("matrix-public", 400, b"GET", b"/public;/../admin/users"),
    # double slashes
    Case("double-slash", 400, b"GET", b"//admin/users"),
    Case("double-slash-inner", 400, b"GET", b"/public//../admin/users"),
    # queries that look like public paths
    Case("query-public", 401, b"GET", b"/admin/users?/public"),
    Case("query-public-slash", 401, b"GET", b"/admin/users?x=/public/"),
    Case("query-encoded", 401, b"GET", b"/admin/users?%2fpublic"),
    Case("query-dotdot", 200, b"GET", b"/public?x=/../admin"),
    # Unicode look-alikes
    Case("fullwidth", 400, b"GET", b"/%ef%bd%81dmin/users"),
    Case("overlong", 400, b"GET", b"/public/%c0%ae%c0%ae/admin/users"),
]


def token_for(stack: Stack, kind: str | None) -> bytes | None:
    """The ``Authorization`` value a case's ``token`` stands for."""
    if kind is None:
        return None
    if kind == "bad":
        return b"Bearer not-a-jwt"
    if kind == "foreign":
        return b"Bearer " + stack.token(scope=READ, key=jose.generate_private_key("ES256"))
    if kind == "expired":
        return b"Bearer " + stack.token(scope=READ, lifetime=-600)
    return b"Bearer " + stack.token(scope=kind, subject="alice", client_id="shop")


def client_request(case: Case, authorization: bytes | None, host: bytes = HOST) -> bytes:
    """The raw request a client sends for ``case``."""
    lines = [case.method + b" " + case.target + b" HTTP/1.1", b"Host: " + host]
    if authorization is not None:
        lines.append(b"Authorization: " + authorization)
    lines.extend(case.headers)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def send(port: int, data: bytes, *, method: bytes = b"GET", local: str = "127.0.0.1") -> Reply:
    """Send ``data`` from address ``local`` on a fresh connection and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    client = RawClient(reader, writer)
    try:
        return await asyncio.wait_for(client.request(data, method), 10)
    finally:
        await client.aclose()


@dataclass
class Outcome:
    """How one request ended: the client's reply and what the upstream received."""

    reply: Reply
    #: The identity fields the upstream received (``None``: nothing was forwarded).
    identity: dict[bytes, list[bytes]] | None
    target: bytes | None

    @property
    def forwarded(self) -> bool:
        return self.identity is not None


def upstream_identity(stack: Stack, since: int) -> tuple[dict[bytes, list[bytes]] | None, bytes | None]:
    """The identity fields of the one request the upstream received after ``since``."""
    received = stack.upstream.requests[since:]
    if not received:
        return None, None
    [seen] = received
    return {name: seen.header(name) for name in IDENTITY}, seen.target


async def through_proxy(stack: Stack, case: Case, authorization: bytes | None) -> Outcome:
    """``case`` sent to the gateway's own proxy by a client."""
    since = len(stack.upstream.requests)
    reply = await send(stack.port, client_request(case, authorization), method=case.method, local=CLIENT)
    identity, target = upstream_identity(stack, since)
    return Outcome(reply, identity, target)


def challenge(reply: Reply) -> bytes | None:
    return reply.header(b"www-authenticate")


async def forward_auth_stack(**overrides: Any) -> Stack:
    """The attack stack with forward-auth on, trusting ``127.0.0.1`` as its proxy."""
    settings: dict[str, Any] = {"trusted_proxies": ["127.0.0.1/32"], "forward_auth": {"enabled": True}}
    settings.update(overrides)
    return await start_stack(**settings)

"""Header attacks through the whole gateway: identity spoofing, hop-by-hop abuse, tokens out of place.

Every case goes over a real socket to the gateway (engine + policy layer) in front of a recording
upstream; the assertions are about what the upstream received. Sources: Traefik CVE-2024-45410
and Apache CVE-2022-31813 (a client naming the proxy's own headers in ``Connection`` so that they
are dropped), nginx/Envoy's special handling of ``_`` in header names (a WSGI/CGI server maps
``X_Bastion_Subject`` and ``X-Bastion-Subject`` to the same ``HTTP_X_BASTION_SUBJECT``),
RFC 6750 §2 (where a bearer token may be) and RFC 9110 §7.6.1 (``Connection``).
"""

from __future__ import annotations

import pytest

from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import get
from tests.conformance.gw_attack import stack

__all__ = ["stack"]

#: Headers the gateway sets itself on every forwarded request.
GATEWAY_SET = (
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-real-ip",
    b"x-request-id",
)
IDENTITY = (b"x-bastion-subject", b"x-bastion-client", b"x-bastion-scopes")


def _one(stack: Stack, name: bytes) -> bytes:
    [received] = stack.upstream.requests
    values = received.header(name)
    assert len(values) == 1, (name, received.headers)
    return values[0]


@pytest.mark.anyio
async def test_connection_cannot_drop_the_headers_the_gateway_sets(stack: Stack) -> None:
    """Traefik CVE-2024-45410: ``Connection: X-Forwarded-For`` made the proxy drop its own header.

    Here the client names every header the gateway sets; the upstream still receives each of
    them exactly once, with the gateway's values, and the verified identity intact.
    """
    named = b", ".join(GATEWAY_SET + IDENTITY)
    token = stack.token(scope="admin", subject="alice", client_id="shop")
    reply = await stack.send(get(b"/admin/users", bearer(token), b"Connection: close, " + named))
    assert reply.status == 200
    assert _one(stack, b"x-bastion-subject") == b"alice"
    assert _one(stack, b"x-bastion-client") == b"shop"
    assert _one(stack, b"x-bastion-scopes") == b"admin"
    assert _one(stack, b"x-forwarded-for") == b"127.0.0.1"
    assert _one(stack, b"x-real-ip") == b"127.0.0.1"
    assert _one(stack, b"x-forwarded-proto") == b"http"
    assert _one(stack, b"x-forwarded-host") == b"api.example"
    assert _one(stack, b"x-request-id") == reply.header(b"x-request-id")


@pytest.mark.anyio
async def test_connection_still_drops_the_client_fields_it_names(stack: Stack) -> None:
    reply = await stack.send(
        get(
            b"/public/x",
            b"Connection: close, X-Private, x-other",
            b"X-Private: 1",
            b"X-Other: 2",
            b"X-Kept: 3",
        )
    )
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert b"x-private" not in received.names()
    assert b"x-other" not in received.names()
    assert received.header(b"x-kept") == [b"3"]
    assert b"connection" not in received.names()


@pytest.mark.anyio
async def test_connection_naming_identity_with_a_spoofed_value_keeps_the_verified_one(stack: Stack) -> None:
    token = stack.token(scope="admin", subject="alice")
    reply = await stack.send(
        get(b"/admin/x", bearer(token), b"Connection: close, X-Bastion-Subject", b"X-Bastion-Subject: root")
    )
    assert reply.status == 200
    assert _one(stack, b"x-bastion-subject") == b"alice"

"""Claims to headers through the whole gateway: what the upstream receives, and what it never does.

A route forwards chosen claims of the verified token as headers. The recording upstream shows the
values the gateway set, that no client copy (in any case, with ``_`` for ``-``, on any route)
reached it, and that a claim carrying CR, LF or NUL could not add a header of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import get
from tests.conformance.gw_attack import running_stack

ROUTES = [
    {
        "prefix": "/orders",
        "upstream": "app",
        "claim_headers": {"roles": "X-Bastion-Roles", "email": "X-User-Email", "tenant": "X-Tenant"},
        "read_timeout": 1.0,
    },
    {"prefix": "/public", "upstream": "app", "auth": "none", "read_timeout": 1.0},
]
SPOOFS = (
    b"X-User-Email: boss@example.com",
    b"x-user-email: boss2@example.com",
    b"X_User_Email: boss3@example.com",
    b"X-Bastion-Roles: admin",
    b"X-Tenant: other",
)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(routes=ROUTES) as running:
        yield running


@pytest.mark.anyio
async def test_chosen_claims_are_forwarded_and_client_copies_dropped(stack: Stack) -> None:
    token = stack.token(roles=["customer", "beta"], email="alice@example.com", tenant={"id": 7})
    reply = await stack.send(get(b"/orders/1", bearer(token), *SPOOFS))
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert received.header(b"x-bastion-roles") == [b'["customer","beta"]']
    assert received.header(b"x-user-email") == [b"alice@example.com"]
    assert received.header(b"x-tenant") == [b'{"id":7}']
    assert b"x_user_email" not in received.names()


@pytest.mark.anyio
async def test_a_missing_claim_sends_no_header_and_no_client_copy(stack: Stack) -> None:
    token = stack.token()
    assert (await stack.send(get(b"/orders/1", bearer(token), *SPOOFS))).status == 200
    [received] = stack.upstream.requests
    for name in (b"x-bastion-roles", b"x-user-email", b"x_user_email", b"x-tenant"):
        assert name not in received.names()


@pytest.mark.anyio
async def test_client_copies_are_dropped_on_routes_without_claims_too(stack: Stack) -> None:
    assert (await stack.send(get(b"/public/x", *SPOOFS))).status == 200
    [received] = stack.upstream.requests
    for name in (b"x-bastion-roles", b"x-user-email", b"x_user_email", b"x-tenant"):
        assert name not in received.names()


@pytest.mark.anyio
async def test_a_claim_cannot_inject_a_header(stack: Stack) -> None:
    token = stack.token(
        subject="alice",
        email="a@example.com\r\nX-Bastion-Subject: admin\r\n\r\nGET /admin HTTP/1.1",
        roles=["user\nX-Bastion-Scopes: admin", "nul\x00"],
        tenant="t\u2028\u0085é",
    )
    reply = await stack.send(get(b"/orders/1", bearer(token)))
    assert reply.status == 200
    [received] = stack.upstream.requests  # one request: nothing was smuggled
    assert received.header(b"x-user-email") == [
        b"a@example.com%0D%0AX-Bastion-Subject:%20admin%0D%0A%0D%0AGET%20/admin%20HTTP/1.1"
    ]
    assert received.header(b"x-bastion-roles") == [b'["user\\nX-Bastion-Scopes:%20admin","nul\\u0000"]']
    assert received.header(b"x-tenant") == [b"t%E2%80%A8%C2%85%C3%A9"]
    assert received.header(b"x-bastion-subject") == [b"alice"]
    assert received.header(b"x-bastion-scopes") == [b"catalog:read"]
    assert stack.upstream.errors == []

"""The guard on Starlette, FastAPI and Flask, with real tokens from an issuer on loopback.

The same orders service (``apps.py``) is exercised through each framework: a valid token gets
its own order, no token a bare RFC 6750 challenge, a bad one ``invalid_token``, a missing scope
``insufficient_scope`` naming it, someone else's order 404 (owner policy), an admin-only action
403, spoofed ``X-Bastion-*`` headers nothing, and a token the authorization server revokes is
refused by the service itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from bastion.services.tokens import REVOCATION_CHANNEL
from bastion.services.tokens import revoked_key
from bastion.storage.protocols import FastState
from bastion.tokens import FastStateRevocations
from bastion.tokens import TokenValidator
from tests.guard import apps
from tests.tokens.tokens_helpers import AUDIENCE
from tests.tokens.tokens_helpers import Issuer

pytestmark = pytest.mark.anyio

FRAMEWORKS = ["starlette", "fastapi", "flask"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


Call = Callable[..., Awaitable[Answer]]


@dataclass
class Service:
    call: Call
    validator: TokenValidator


def _parse(body: bytes) -> Any:
    return orjson.loads(body) if body else None


@pytest.fixture(params=FRAMEWORKS)
async def service(request: pytest.FixtureRequest, issuer: Issuer) -> AsyncIterator[Service]:
    """The orders service on one framework, its validator fetching the issuer's JWKS."""
    async with _service(request.param, issuer, None) as built:
        yield built


@contextlib.asynccontextmanager
async def _service(
    framework: str, issuer: Issuer, revocations: FastStateRevocations | None
) -> AsyncIterator[Service]:
    validator = TokenValidator(issuer.url, audience=AUDIENCE, revocation=revocations)
    if framework == "flask":
        app, guard = apps.flask_app({"validator": validator, "revocations": revocations})
        client = app.test_client()

        async def call_flask(method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
            response = await asyncio.to_thread(client.open, path, method=method, headers=headers or {})
            return Answer(response.status_code, dict(response.headers.items()), _parse(response.data))

        try:
            yield Service(call_flask, validator)
        finally:
            await asyncio.to_thread(guard.close)
        return
    follower = (
        asyncio.get_running_loop().create_task(revocations.follow([validator])) if revocations else None
    )
    app = apps.starlette_app(validator) if framework == "starlette" else apps.fastapi_app(validator)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://orders.test") as http:

        async def call_asgi(method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
            response = await http.request(method, path, headers=headers or {})
            return Answer(
                response.status_code,
                {name.lower(): value for name, value in response.headers.items()},
                _parse(response.content),
            )

        try:
            yield Service(call_asgi, validator)
        finally:
            if follower is not None:
                follower.cancel()
            await validator.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


async def test_a_valid_token_reads_its_own_order(service: Service, issuer: Issuer) -> None:
    answer = await service.call("GET", "/orders/1", bearer(issuer.mint(sub="alice", scope="orders:read")))
    assert answer.status == 200
    assert answer.body == {"id": 1, "owner_id": "alice", "total": 30}


async def test_public_paths_need_no_token(service: Service) -> None:
    assert (await service.call("GET", "/health")).status == 200
    assert (await service.call("GET", "/catalog/items")).status == 200


async def test_no_token_is_a_bare_challenge(service: Service) -> None:
    answer = await service.call("GET", "/orders/1")
    headers = lower(answer.headers)
    assert answer.status == 401
    # RFC 6750 §3.1: without credentials the challenge SHOULD NOT carry an error code.
    assert headers["www-authenticate"] == 'Bearer realm="orders"'
    assert headers["content-type"] == "application/problem+json"
    assert answer.body["status"] == 401


async def test_another_scheme_is_a_bare_challenge(service: Service) -> None:
    answer = await service.call("GET", "/me", {"Authorization": "Basic YWxpY2U6czNjcmV0"})
    assert answer.status == 401
    assert lower(answer.headers)["www-authenticate"] == 'Bearer realm="orders"'


async def test_a_bad_token_is_invalid_token(service: Service, issuer: Issuer) -> None:
    token = issuer.mint(sub="alice")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    answer = await service.call("GET", "/orders/1", bearer(forged))
    assert answer.status == 401
    assert lower(answer.headers)["www-authenticate"] == (
        'Bearer realm="orders", error="invalid_token", '
        'error_description="The access token signature is invalid"'
    )
    assert answer.body == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "The access token signature is invalid",
    }


async def test_a_token_for_another_audience_is_invalid_token(service: Service, issuer: Issuer) -> None:
    answer = await service.call("GET", "/me", bearer(issuer.mint(aud="https://payments.example")))
    assert answer.status == 401
    assert 'error="invalid_token"' in lower(answer.headers)["www-authenticate"]


async def test_a_malformed_bearer_credential_is_invalid_request(service: Service) -> None:
    answer = await service.call("GET", "/me", {"Authorization": "Bearer not a token"})
    assert answer.status == 400
    assert 'error="invalid_request"' in lower(answer.headers)["www-authenticate"]


async def test_a_missing_scope_is_insufficient_scope(service: Service, issuer: Issuer) -> None:
    answer = await service.call("GET", "/orders/1", bearer(issuer.mint(sub="alice", scope="catalog:read")))
    assert answer.status == 403
    assert lower(answer.headers)["www-authenticate"] == (
        'Bearer realm="orders", error="insufficient_scope", '
        'error_description="The access token lacks a required scope", scope="orders:read"'
    )


async def test_someone_elses_order_is_not_found(
    service: Service, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = issuer.mint(sub="alice", scope="orders:read")
    with caplog.at_level(logging.INFO, logger="bastion.guard"):
        answer = await service.call("GET", "/orders/2", bearer(token))
    # The owner policy hides carol's order: the same answer as an order that does not exist.
    assert answer.status == 404
    assert answer.body == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "Not found"}
    assert "www-authenticate" not in lower(answer.headers)
    missing = await service.call("GET", "/orders/99", bearer(token))
    assert (missing.status, missing.body) == (answer.status, answer.body)
    refusals = [record for record in caplog.records if getattr(record, "event", None) == "guard.refused"]
    assert next((r.subject, r.action, r.object_type, r.object_id, r.status) for r in refusals) == (  # type: ignore[attr-defined]
        "alice",
        "read",
        "Order",
        "2",
        404,
    )
    assert all(
        token not in record.getMessage() and token not in str(record.__dict__) for record in caplog.records
    )


async def test_an_admin_reads_every_order(service: Service, issuer: Issuer) -> None:
    token = issuer.mint(sub="bob", scope="orders:read", roles=["admin"])
    answer = await service.call("GET", "/orders/2", bearer(token))
    assert answer.status == 200
    assert answer.body["owner_id"] == "carol"


async def test_an_admin_only_action_is_forbidden_to_others(service: Service, issuer: Issuer) -> None:
    alice = issuer.mint(sub="alice", scope="orders:read orders:write")
    answer = await service.call("POST", "/orders/1/cancel", bearer(alice))
    # The role policy refuses with 403: alice may know her order exists.
    assert answer.status == 403
    assert answer.body["detail"] == "You are not allowed to do this"
    assert "www-authenticate" not in lower(answer.headers)
    bob = issuer.mint(sub="bob", scope="orders:write", roles=["admin"])
    assert (await service.call("POST", "/orders/1/cancel", bearer(bob))).status == 200


async def test_spoofed_identity_headers_without_a_token_are_refused(service: Service) -> None:
    spoofed = {"X-Bastion-Subject": "bob", "X-Bastion-Scopes": "orders:read", "X-Bastion-Client": "shop"}
    answer = await service.call("GET", "/orders/2", spoofed)
    assert answer.status == 401
    assert lower(answer.headers)["www-authenticate"] == 'Bearer realm="orders"'


async def test_identity_headers_that_contradict_the_token_are_refused(
    service: Service, issuer: Issuer
) -> None:
    token = issuer.mint(sub="alice", scope="orders:read")
    answer = await service.call("GET", "/orders/2", {**bearer(token), "X-Bastion-Subject": "bob"})
    assert answer.status == 400
    assert 'error="invalid_request"' in lower(answer.headers)["www-authenticate"]
    agreeing = await service.call("GET", "/orders/1", {**bearer(token), "X-Bastion-Subject": "alice"})
    assert agreeing.status == 200


async def test_the_principal_is_the_tokens(service: Service, issuer: Issuer) -> None:
    answer = await service.call("GET", "/me", bearer(issuer.mint(sub="carol", scope="orders:read b")))
    assert answer.body == {"subject": "carol", "scopes": ["b", "orders:read"]}


# -- revocation --------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def revoke_as_the_authorization_server(state: FastState, jti: str, exp: float) -> None:
    """What ``TokenService.revoke_jti`` writes: the mark, then the announcement."""
    await state.set(revoked_key(jti), b"1", exp - time.time() + 60)
    await state.publish(REVOCATION_CHANNEL, orjson.dumps({"jti": jti, "exp": int(exp)}))


@pytest.mark.parametrize(
    ("framework", "state"),
    # Memory and Redis clients live on one event loop; Flask's guard runs its validator on its own.
    [(framework, "sqlite") for framework in FRAMEWORKS]
    + [(framework, store) for framework in ("starlette", "fastapi") for store in ("memory", "redis")],
    indirect=["state"],
)
async def test_a_revoked_token_is_refused_by_the_service(
    framework: str, state: FastState, issuer: Issuer
) -> None:
    revocations = FastStateRevocations(state)
    async with _service(framework, issuer, revocations) as service:
        exp = time.time() + 900
        seen = issuer.mint(sub="alice", scope="orders:read", jti="seen-1", exp=int(exp))
        unseen = issuer.mint(sub="alice", scope="orders:read", jti="unseen-1", exp=int(exp))
        assert (await service.call("GET", "/orders/1", bearer(seen))).status == 200
        assert (await service.call("GET", "/orders/1", bearer(seen))).status == 200

        # Its announcement lost: only the mark the authorization server writes first says so.
        await state.set(revoked_key("unseen-1"), b"1", 900)

        async def refused() -> bool:
            # The feed may still be subscribing: announce again until it is heard, as a
            # follower that joined late would after its catch-up.
            await revoke_as_the_authorization_server(state, "seen-1", exp)
            return (await service.call("GET", "/orders/1", bearer(seen))).status == 401

        # The validated token was cached: the feed must make the service forget it.
        await until(refused, "the cached token is refused")
        answer = await service.call("GET", "/orders/1", bearer(seen))
        assert lower(answer.headers)["www-authenticate"] == (
            'Bearer realm="orders", error="invalid_token", error_description="The access token was revoked"'
        )
        # Never seen before: refused by the mark on the first request.
        assert (await service.call("GET", "/orders/1", bearer(unseen))).status == 401

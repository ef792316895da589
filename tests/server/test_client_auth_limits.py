"""Limits at the authorization server's doors, through the real ASGI app on the embedded default
(a SQLite database and the SQLite state file), memory and Redis: failed client authentication
at /token, /introspect, /revoke and /revocations is counted before the secret is checked, and
each client's request rate at introspection and revocation is limited."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.ratelimit import Limiter
from bastion.ratelimit.local import LocalLimiter
from bastion.server.app import AuthorizationServer
from bastion.server.app import create_app
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.revocation_list import REVOCATIONS_SCOPE
from bastion.settings import AuthorizationServerSettings
from bastion.settings import ClientAuthThrottleSettings
from bastion.settings import ClientRateLimitSettings
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate
from tests.people.support import STATES
from tests.people.support import fast_state
from tests.people.support import with_state

pytestmark = pytest.mark.anyio

ISSUER = "http://127.0.0.1:8000"
PER_PAIR = 5
PER_ADDRESS = 20
PER_CLIENT = 40
WINDOW = 600.0
ATTACKER = "203.0.113.66"
ENDPOINTS = ("/token", "/introspect", "/revoke", "/revocations")


class CountingSealer(Sealer):
    """The real HMAC comparison, recording the secret each check was given."""

    def __init__(self, kek: bytes) -> None:
        super().__init__(kek)
        self.checked: list[str] = []

    def verify_secret(self, secret: str, stored: str) -> bool:
        self.checked.append(secret)
        return super().verify_secret(secret, stored)


@dataclass
class Door:
    """The app over real stores, its services, and the checks its sealer ran."""

    app: AuthorizationServer
    services: Services
    sealer: CountingSealer
    events: list[AuditEvent]

    def http(self, ip: str = "192.0.2.10") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 50_000))
        return httpx.AsyncClient(transport=transport, base_url=ISSUER)

    async def client(self, client_id: str, **kwargs: Any) -> str:
        """Register a client; its secret (``""`` for a public one)."""
        kwargs.setdefault("scopes", ("read", REVOCATIONS_SCOPE))
        _, secret = await self.services.clients.create(name=client_id, client_id=client_id, **kwargs)
        return secret or ""

    def wrong_checks(self, right: str) -> int:
        return sum(secret != right for secret in self.sealer.checked)


def _limiter(kind: str, tmp_path: Path, redis_url: str) -> Limiter:
    if kind == "sqlite":
        from bastion.ratelimit.sqlite import SQLiteLimiter

        return SQLiteLimiter(tmp_path / "state.db")
    if kind == "redis":
        from bastion.ratelimit.redis import RedisLimiter

        return RedisLimiter(redis_url, prefix=f"test:{secrets.token_hex(6)}:")
    return LocalLimiter()


async def _door(tmp_path: Path, kind: str, redis_url: str, **settings: Any) -> AsyncIterator[Door]:
    stores = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", "memory://")
    stores = with_state(stores, fast_state(kind, tmp_path, redis_url))
    await migrate(stores.db)
    limiter = _limiter(kind, tmp_path, redis_url)
    audit = AuditLog(tmp_path / "audit.log")
    events: list[AuditEvent] = []
    audit.listeners.append(events.append)
    settings.setdefault(
        "client_auth_throttle",
        ClientAuthThrottleSettings(
            window=WINDOW, per_client_address=PER_PAIR, per_address=PER_ADDRESS, per_client=PER_CLIENT
        ),
    )
    sealer = CountingSealer(b"k" * 48)
    services = Services.create(
        AuthorizationServerSettings(issuer=ISSUER, **settings), stores, sealer, audit, limiter=limiter
    )
    await services.keys.load()
    await services.keys.ensure()
    try:
        yield Door(create_app(services), services, sealer, events)
    finally:
        await audit.close()
        await limiter.close()
        await stores.close()


@pytest.fixture(params=STATES)
async def door(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Door]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    async for built in _door(tmp_path, request.param, redis_url):
        yield built


def _form(path: str) -> dict[str, str]:
    return {"grant_type": "client_credentials"} if path == "/token" else {"token": "not-a-token"}


async def call(http: httpx.AsyncClient, path: str, client_id: str, secret: str) -> httpx.Response:
    return await http.post(path, data=_form(path), auth=(client_id, secret))


def assert_throttled(response: httpx.Response, window: float = WINDOW) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == {
        "error": "temporarily_unavailable",
        "error_description": "Too many failed client authentications. Try again later.",
    }
    assert 1 <= int(response.headers["retry-after"]) <= window
    assert response.headers["cache-control"] == "no-store"
    assert "www-authenticate" not in response.headers


def assert_invalid_client(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"] == f'Basic realm="{ISSUER}"'


def assert_served(path: str, response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    if path == "/token":
        assert "access_token" in response.json()


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_wrong_secrets_are_401_until_the_limit_then_429_with_retry_after(door: Door, path: str) -> None:
    right = await door.client("billing")
    await door.client("orders")
    async with door.http(ATTACKER) as attacker, door.http("198.51.100.7") as elsewhere:
        for _ in range(PER_PAIR):
            assert_invalid_client(await call(attacker, path, "billing", "wrong"))
        assert_throttled(await call(attacker, path, "billing", "wrong"))
        assert_throttled(await call(attacker, path, "billing", right)), "refused before any check"
        assert door.wrong_checks(right) == PER_PAIR
        assert_served(path, await call(elsewhere, path, "billing", right))
        assert_invalid_client(await call(attacker, path, "orders", "wrong")), "another client from there"
    throttled = [event for event in door.events if event.type == "client.auth_throttled"]
    assert [(e.details["gate"], e.subject, e.address) for e in throttled] == [
        ("client_address", "billing", ATTACKER)
    ]
    assert door.services.metrics.throttled[("client_auth", "client_address")] == 2


async def test_200_concurrent_wrong_secrets_reach_the_check_at_most_the_limit_while_the_client_works_elsewhere(
    door: Door,
) -> None:
    right = await door.client("billing")
    async with door.http(ATTACKER) as attacker, door.http("198.51.100.7") as owner:
        guesses = [call(attacker, "/token", "billing", f"guess {n}") for n in range(200)]
        own = [call(owner, "/introspect", "billing", right) for _ in range(20)]
        answers = await asyncio.gather(*guesses, *own)
    statuses = [response.status_code for response in answers[:200]]
    assert statuses.count(401) == door.wrong_checks(right) == PER_PAIR
    assert statuses.count(429) == 200 - PER_PAIR
    for response in answers[:200]:
        if response.status_code == 429:
            assert_throttled(response)
    assert [response.status_code for response in answers[200:]] == [200] * 20


async def test_an_address_guessing_across_client_ids_is_refused_for_every_client(door: Door) -> None:
    right = await door.client("billing")
    async with door.http(ATTACKER) as attacker, door.http("198.51.100.7") as elsewhere:
        answers = await asyncio.gather(*(call(attacker, "/introspect", f"id{n}", "x") for n in range(100)))
        statuses = [response.status_code for response in answers]
        assert statuses.count(401) == PER_ADDRESS
        assert door.wrong_checks(right) == PER_ADDRESS, "unknown ids cost the same dummy check"
        assert_throttled(await call(attacker, "/introspect", "billing", right))
        assert_served("/introspect", await call(elsewhere, "/introspect", "billing", right))


async def test_guessing_one_client_from_many_addresses_locks_it_from_everywhere(door: Door) -> None:
    right = await door.client("billing")
    for n in range(PER_CLIENT // PER_PAIR):
        async with door.http(f"2001:db8:{n}::1") as attacker:
            for _ in range(PER_PAIR):
                assert_invalid_client(await call(attacker, "/revoke", "billing", "wrong"))
    async with door.http("198.51.100.7") as owner:
        assert_throttled(await call(owner, "/revoke", "billing", right))
    assert door.wrong_checks(right) == PER_CLIENT


async def test_addresses_in_one_ipv6_64_share_a_count(door: Door) -> None:
    await door.client("billing")
    for n in range(PER_PAIR):
        async with door.http(f"2001:db8:5:6::{n + 1:x}") as attacker:
            assert_invalid_client(await call(attacker, "/token", "billing", "wrong"))
    async with door.http("2001:db8:5:6:ffff:ffff:ffff:ffff") as same, door.http("2001:db8:5:7::1") as other:
        assert_throttled(await call(same, "/token", "billing", "wrong"))
        assert_invalid_client(await call(other, "/token", "billing", "wrong"))


async def test_a_success_gives_back_its_own_attempt_but_never_the_failures(door: Door) -> None:
    right = await door.client("billing")
    async with door.http(ATTACKER) as shared:
        for _ in range(PER_PAIR - 1):
            assert_invalid_client(await call(shared, "/token", "billing", "wrong"))
        # The client itself, behind the attacker's address, succeeds many times over.
        for _ in range(3 * PER_ADDRESS):
            assert_served("/token", await call(shared, "/token", "billing", right))
        assert_invalid_client(await call(shared, "/token", "billing", "wrong"))
        assert_throttled(await call(shared, "/token", "billing", "wrong"))
    assert door.wrong_checks(right) == PER_PAIR


@pytest.mark.parametrize("trusted", [True, False])
async def test_behind_trusted_proxies_the_forwarded_client_is_counted(tmp_path: Path, trusted: bool) -> None:
    proxies = ("10.0.0.0/8",) if trusted else ()
    async for door in _door(tmp_path, "sqlite", "", trusted_proxies=proxies):
        await door.client("billing")
        async with door.http("10.1.2.3") as proxy:
            for n in range(PER_PAIR):
                response = await proxy.post(
                    "/token",
                    data=_form("/token"),
                    auth=("billing", "wrong"),
                    headers={"x-forwarded-for": f"{ATTACKER}, 10.9.9.{n}"},
                )
                assert_invalid_client(response)
            other = await proxy.post(
                "/token",
                data=_form("/token"),
                auth=("billing", "wrong"),
                headers={"x-forwarded-for": "192.0.2.99"},
            )
            if trusted:
                assert_invalid_client(other)  # another client behind the same proxy
            else:
                assert_throttled(other)  # untrusted: the peer is the client, whatever it says


async def test_public_clients_and_malformed_requests_are_not_failures(door: Door) -> None:
    await door.client(
        "web", public=True, grant_types=("authorization_code",), redirect_uris=("https://a/cb",)
    )
    async with door.http(ATTACKER) as http:
        for _ in range(3 * PER_PAIR):
            response = await http.post("/revoke", data={"client_id": "web", "token": "x"})
            assert response.status_code == 200
            malformed = await http.post("/token", data=_form("/token"), headers={"authorization": "Basic !!"})
            assert_invalid_client(malformed)
        for _ in range(PER_PAIR):
            assert_invalid_client(await http.post("/introspect", data={"client_id": "web", "token": "x"}))
        assert_throttled(await http.post("/introspect", data={"client_id": "web", "token": "x"}))


async def test_with_the_limit_off_every_wrong_secret_is_checked(tmp_path: Path) -> None:
    off = ClientAuthThrottleSettings(enabled=False)
    async for door in _door(tmp_path, "sqlite", "", client_auth_throttle=off):
        right = await door.client("billing")
        async with door.http(ATTACKER) as attacker:
            answers = await asyncio.gather(*(call(attacker, "/token", "billing", "wrong") for _ in range(50)))
        assert [response.status_code for response in answers] == [401] * 50
        assert door.wrong_checks(right) == 50


@pytest.mark.parametrize("kind", STATES)
async def test_each_clients_request_rate_at_introspection_and_revocation(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    rate = ClientRateLimitSettings(requests=1, per=60.0, burst=4)
    async for door in _door(tmp_path, kind, redis_url, client_rate_limit=rate):
        billing = await door.client("billing")
        orders = await door.client("orders")
        async with door.http() as http:
            # A stranger's wrong secrets with billing's id do not spend billing's rate.
            for _ in range(3):
                assert_invalid_client(await call(http, "/introspect", "billing", "wrong"))
            answers = [await call(http, path, "billing", billing) for path in (*ENDPOINTS[1:], "/introspect")]
            assert [response.status_code for response in answers] == [200, 200, 200, 200]
            refused = await call(http, "/revoke", "billing", billing)
            assert refused.status_code == 429
            assert refused.json() == {
                "error": "temporarily_unavailable",
                "error_description": "Too many requests from this client. Try again later.",
            }
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert_served("/introspect", await call(http, "/introspect", "orders", orders))
            assert_served("/token", await call(http, "/token", "billing", billing)), "/token is not rated"


async def test_the_request_rate_is_generous_by_default(door: Door) -> None:
    billing = await door.client("billing")

    async def sender(http: httpx.AsyncClient) -> list[int]:
        return [(await call(http, "/introspect", "billing", billing)).status_code for _ in range(20)]

    async with door.http() as http:
        statuses = await asyncio.gather(*(sender(http) for _ in range(10)))
    assert statuses == [[200] * 20] * 10, "a burst of 200, ten at a time"
    assert door.services.settings.client_rate_limit == ClientRateLimitSettings(
        requests=100, per=1.0, burst=200
    )


async def test_a_rate_limit_backend_that_cannot_decide_is_503_not_a_waiver(tmp_path: Path) -> None:
    from bastion.ratelimit.redis import RedisLimiter
    from tests.e2e.harness import free_port

    stores = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", "memory://")
    await migrate(stores.db)
    audit = AuditLog(tmp_path / "audit.log")
    unreachable = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    services = Services.create(
        AuthorizationServerSettings(issuer=ISSUER), stores, Sealer(b"k" * 48), audit, limiter=unreachable
    )
    door = Door(create_app(services), services, CountingSealer(b"k" * 48), [])
    try:
        billing = await door.client("billing")
        async with door.http() as http:
            response = await call(http, "/introspect", "billing", billing)
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["retry-after"] == "5"
    finally:
        await audit.close()
        await unreachable.close()
        await stores.close()

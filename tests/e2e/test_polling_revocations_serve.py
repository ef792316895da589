"""``PollingRevocations`` against a real ``bastion serve``: a service on another machine (no
shared store) refuses what the authorization server revokes within the poll interval; when the
server goes away it stops trusting its cache and fails closed, and when the server comes back it
catches up on what happened meanwhile."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bastion.tokens import IssuerUnavailable
from bastion.tokens import PollingRevocations
from bastion.tokens import TokenRevoked
from bastion.tokens import TokenValidator
from tests.e2e.harness import Bastion

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

AUDIENCE = "https://api.example"
INTERVAL = 0.2
MAX_STALE = 1.0


@pytest.fixture
def bastion(tmp_path: Path) -> Iterator[Bastion]:
    instance = Bastion(tmp_path)
    yield instance
    instance.stop()


def basic(client: dict[str, str]) -> dict[str, str]:
    raw = f"{client['client_id']}:{client['client_secret']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def within(seconds: float, check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.02)


async def refused(validator: TokenValidator, token: str, error: type[Exception], seconds: float) -> float:
    """Validate ``token`` until it raises ``error``; returns how long that took."""
    start = time.monotonic()
    while True:
        try:
            await validator.validate(token)
        except error:
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{token[:20]}… still accepted after {seconds} s (want {error.__name__})")
        await asyncio.sleep(0.02)


async def test_a_service_sees_revocations_and_fails_closed_while_the_server_is_down(bastion: Bastion) -> None:
    reader = bastion.cli_json("clients", "create", "--name", "orders-api", "--scope", "bastion:revocations")
    app = bastion.cli_json("clients", "create", "--name", "app", "--scope", "read", "--audience", AUDIENCE)
    other = bastion.cli_json(
        "clients", "create", "--name", "other", "--scope", "read", "--audience", AUDIENCE
    )
    bastion.start()

    async with aiohttp.ClientSession() as http:

        async def token(client: dict[str, str]) -> str:
            async with http.post(
                f"{bastion.issuer}/token", data={"grant_type": "client_credentials"}, headers=basic(client)
            ) as response:
                assert response.status == 200
                return str((await response.json())["access_token"])

        async def revoke(client: dict[str, str], value: str) -> None:
            async with http.post(
                f"{bastion.issuer}/revoke", data={"token": value}, headers=basic(client)
            ) as response:
                assert response.status == 200

        revocations = PollingRevocations(
            bastion.issuer,
            client_id=reader["client_id"],
            client_secret=reader["client_secret"],
            interval=INTERVAL,
            max_stale=MAX_STALE,
        )
        async with (
            revocations,
            TokenValidator(bastion.issuer, audience=AUDIENCE, revocation=revocations) as validator,
        ):
            follower = asyncio.get_running_loop().create_task(revocations.follow([validator]))
            try:
                # Healthy: a revoked token is refused within the poll interval, cached or not.
                revoked, kept, others = await token(app), await token(app), await token(other)
                for value in (revoked, kept, others):
                    await validator.validate(value)
                assert validator.cached(revoked) is not None
                await revoke(app, revoked)
                took = await refused(validator, revoked, TokenRevoked, 5 * INTERVAL + 2)
                assert took <= 3 * INTERVAL + 1, f"seen after {took:.2f} s with a {INTERVAL} s interval"
                assert validator.cached(revoked) is None
                assert (await validator.validate(kept)).client_id == app["client_id"]
                assert revocations.healthy

                # Fault: the authorization server goes away. The cache is distrusted at once, and
                # once no poll succeeded for max_stale, tokens are refused (503), not accepted.
                bastion.stop()
                await within(5, lambda: not validator.cache_trusted, "the cache is distrusted")
                assert validator.cached(kept) is None
                assert revocations.drops >= 1
                await refused(validator, kept, IssuerUnavailable, MAX_STALE + 5)
                with pytest.raises(IssuerUnavailable) as caught:
                    await validator.validate(kept)
                assert caught.value.status_code == 503
                assert caught.value.reason == "revocation_unavailable"

                # While it is down, a client is disabled (durably, by the CLI).
                bastion.cli("clients", "disable", other["client_id"])

                # Recovery: the server is back; the source reads the full list, trusts the cache
                # again, and the token of the client disabled meanwhile is refused.
                bastion.start()
                await within(10, lambda: revocations.healthy and validator.cache_trusted, "recovered")
                await refused(validator, others, TokenRevoked, 2)
                assert (await validator.validate(kept)).client_id == app["client_id"]
                assert validator.cached(kept) is not None
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

"""``FastStateRevocations``: a service validating tokens itself sees revocations.

Against the real stores the authorization server writes (a SQLite state file and a private
``redis-server``): a token revoked by the authorization server is refused by the service's
validator, cached or not; while the feed is down the cache is not trusted, and after a restart
of the store the service reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from bastion.storage.open import open_state
from bastion.storage.protocols import FastState
from bastion.storage.protocols import StorageError
from bastion.tokens import FastStateRevocations
from bastion.tokens import IssuerUnavailable
from bastion.tokens import StaticKeys
from bastion.tokens import TokenRevoked
from bastion.tokens import TokenValidator
from tests.private_redis import PrivateRedis
from tests.tokens.tokens_helpers import AUDIENCE
from tests.tokens.tokens_helpers import Issuer

pytestmark = pytest.mark.anyio


async def until(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(params=["sqlite", "redis"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[FastState, object]]:
    if request.param == "sqlite":
        opened = open_state(f"sqlite:///{tmp_path / 'state.db'}")
        yield opened, None
        await opened.close()
    else:
        redis = PrivateRedis(tmp_path)
        opened = open_state(redis.url)
        yield opened, redis
        await opened.close()
        redis.kill()


async def test_the_service_refuses_what_the_authorization_server_revokes(
    state: tuple[FastState, object], issuer: Issuer
) -> None:
    store, redis = state
    revocations = FastStateRevocations(store)
    validator = TokenValidator(
        issuer.url, audience=AUDIENCE, key_source=StaticKeys(issuer.jwks()), revocation=revocations
    )
    follower = asyncio.get_running_loop().create_task(revocations.follow([validator]))
    try:
        cached, missed = issuer.mint(jti="c1"), issuer.mint(jti="m1")
        await validator.validate(cached)
        # What the authorization server does on /revoke: mark, then announce.
        await store.set("revoked:m1", b"1", 600)
        with pytest.raises(TokenRevoked):
            await validator.validate(missed)
        for _ in range(100):
            await store.publish("revocations", orjson.dumps({"jti": "c1", "exp": time.time() + 600}))
            if validator.cached(cached) is None:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(TokenRevoked):
            await validator.validate(cached)

        if isinstance(redis, PrivateRedis):
            kept = issuer.mint(jti="k1")
            await validator.validate(kept)
            redis.kill()
            await until(lambda: not validator.cache_trusted, "the cache is distrusted")
            with pytest.raises(IssuerUnavailable):
                await validator.validate(kept)
            redis.start()
            for _ in range(10):
                with contextlib.suppress(StorageError):
                    await store.set("revoked:k1", b"1", 600)
                    break  # revoked while the feed was down

            async def ping() -> bool:
                with contextlib.suppress(StorageError):  # the pool's stale connections go first
                    await store.publish("revocations", b"{}")
                return validator.cache_trusted

            for _ in range(400):
                if await ping():
                    break
                await asyncio.sleep(0.05)
            assert revocations.drops >= 1
            with pytest.raises(TokenRevoked):
                await validator.validate(kept)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await validator.close()

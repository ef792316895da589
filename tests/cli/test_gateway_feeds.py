"""The gateway's feed followers (revocations, signing keys) against real stores.

Each feed has a healthy-path test and fault tests: its connection dropped (``CLIENT KILL`` on a
private ``redis-server``), the server restarted empty, and on the embedded default (a SQLite
state file) a store that errors. The promises held: a token revoked while the feed was down is
refused within a few seconds of the reconnect (catch-up from the durable record), cache hits are
never trusted while it is down (re-checked; 503 when nothing can answer), and every drop is
logged and counted on the gateway's metrics registry.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from bastion.cli.gateway import GatewayFeeds
from bastion.cli.gateway import StateRevocations
from bastion.ops.audit import AuditLog
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.keys import KEYS_CHANNEL
from bastion.services.tokens import revoked_key
from bastion.settings import AuthorizationServerSettings
from bastion.storage.fast.sqlite import SQLiteState
from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.protocols import StorageError
from bastion.storage.sql.migrate import migrate
from bastion.tokens import IssuerUnavailable
from bastion.tokens import IssuerVerifier
from bastion.tokens import TokenRevoked
from bastion.tokens import TokenValidator
from bastion.tokens import UnknownKey
from tests.private_redis import PrivateRedis
from tests.tokens.tokens_helpers import AUDIENCE
from tests.tokens.tokens_helpers import Clock
from tests.tokens.tokens_helpers import Issuer

pytestmark = pytest.mark.anyio

#: How long after a reconnect the promise must hold again (backoff is capped far below).
BOUND = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def eventually(check: Callable[[], Any], what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def refused(validator: TokenValidator, token: str, error: type[Exception]) -> bool:
    """Whether ``token`` is refused now with ``error`` (and nothing else)."""
    if validator.cached(token, AUDIENCE) is not None:
        return False
    try:
        await validator.validate(token, audience=AUDIENCE)
    except error:
        return True
    except Exception:
        return False
    return False


class Rig:
    """A gateway's feeds and one issuer's verifier, plus the authorization server's services,
    over the same durable store and fast-state store."""

    def __init__(self, stores: Stores, issuer: Issuer, tmp: Path) -> None:
        self.stores = stores
        self.issuer = issuer
        self.registry = CollectorRegistry(auto_describe=True)
        self.revocations = StateRevocations(stores.state, stores)
        self.feeds = GatewayFeeds(stores, self.revocations, self.registry)
        self.validator = TokenValidator(
            issuer.url, audience=AUDIENCE, revocation=self.revocations, refetch_cooldown=0
        )
        self.feeds.add(IssuerVerifier(self.validator))
        self.services = Services.create(
            AuthorizationServerSettings(issuer=issuer.url),
            stores,
            Sealer(b"k" * 40),
            AuditLog(tmp / "audit.log"),
        )

    def drops(self, feed: str) -> float:
        return self.registry.get_sample_value("bastion_feed_drops_total", {"feed": feed}) or 0.0

    async def accepted_and_cached(self, token: str) -> None:
        await self.validator.validate(token, audience=AUDIENCE)
        assert self.validator.cached(token, AUDIENCE) is not None

    def mint(self, jti: str, **claims: Any) -> str:
        return self.issuer.mint(jti=jti, **claims)


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    server = Issuer(Clock())
    server.add_key("k1")
    await server.start()
    yield server
    await server.stop()


async def _rig(state_url: str, issuer: Issuer, tmp: Path) -> AsyncIterator[Rig]:
    stores = open_stores(f"sqlite:///{tmp / 'bastion.db'}", state_url)
    await migrate(stores.db)
    rig = Rig(stores, issuer, tmp)
    rig.feeds.start()
    try:
        await eventually(lambda: rig.feeds.healthy, "the feeds are subscribed and caught up")
        yield rig
    finally:
        await rig.feeds.stop()
        await rig.validator.close()
        await rig.services.audit.close()
        await stores.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server  # type: ignore[misc]
    server.kill()


@pytest.fixture
async def redis_rig(private_redis: PrivateRedis, issuer: Issuer, tmp_path: Path) -> AsyncIterator[Rig]:
    async for rig in _rig(private_redis.url, issuer, tmp_path):
        yield rig


@pytest.fixture(params=["sqlite", "memory", "redis"])
async def rig(request: pytest.FixtureRequest, issuer: Issuer, tmp_path: Path) -> AsyncIterator[Rig]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    elif request.param == "memory":
        url = "memory://"
    else:
        url = request.getfixturevalue("private_redis").url
    async for opened in _rig(url, issuer, tmp_path):
        yield opened


# -- healthy paths ------------------------------------------------------------------------------


async def test_a_revocation_reaches_a_cached_token(rig: Rig) -> None:
    token = rig.mint("live-1")
    await rig.accepted_and_cached(token)
    await rig.services.tokens.revoke_jti("live-1", time.time() + 900)
    await eventually(lambda: refused(rig.validator, token, TokenRevoked), "the revoked token is refused")
    assert rig.drops("revocations") == 0


async def test_a_disabled_client_is_announced_and_caught_up(rig: Rig, tmp_path: Path) -> None:
    client, _ = await rig.services.clients.create(name="shop", client_id="shop")
    other = rig.mint("other-1", client_id="someone-else")
    token = rig.mint("shop-1", client_id=client.client_id)
    await rig.accepted_and_cached(token)
    await rig.accepted_and_cached(other)
    await rig.services.clients.set_disabled(client.client_id)
    await eventually(lambda: refused(rig.validator, token, TokenRevoked), "the client's token is refused")
    assert rig.validator.cached(other, AUDIENCE) is not None, "other clients' tokens are untouched"

    # A gateway started afterwards learns it from the durable record (catch-up).
    late = Rig(rig.stores, rig.issuer, tmp_path)
    late.feeds.start()
    try:
        await eventually(lambda: late.feeds.healthy, "the late gateway caught up")
        assert await refused(late.validator, token, TokenRevoked)
    finally:
        await late.feeds.stop()
        await late.validator.close()
        await late.services.audit.close()


async def test_a_revoked_key_is_forgotten_at_once(rig: Rig) -> None:
    token = rig.mint("key-1")
    await rig.accepted_and_cached(token)
    # The issuer's JWKS still lists k1 (a stale cache): the announcement alone must suffice.
    await rig.stores.state.publish(KEYS_CHANNEL, orjson.dumps({"event": "revoked", "kid": "k1"}))
    await eventually(lambda: refused(rig.validator, token, UnknownKey), "tokens signed by k1 are refused")
    # Once the issuer's JWKS no longer lists it, a new key works and k1 stays refused.
    rig.issuer.keys.pop("k1")
    rig.issuer.add_key("k2")
    await rig.stores.state.publish(KEYS_CHANNEL, b"k2")  # a bare kid: "created"
    fresh = rig.issuer.mint(kid="k2", jti="key-2")
    await rig.validator.validate(fresh, audience=AUDIENCE)
    assert await refused(rig.validator, token, UnknownKey)


# -- faults: Redis ------------------------------------------------------------------------------


async def test_redis_restart_revocation_while_down_is_refused_after_reconnect(
    redis_rig: Rig, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    rig = redis_rig
    caplog.set_level(logging.WARNING, logger="bastion.feeds")
    before = rig.mint("before-1")
    during = rig.mint("during-1")
    kept = rig.mint("kept-1")
    for token in (before, during, kept):
        await rig.accepted_and_cached(token)
    await rig.services.tokens.revoke_jti("before-1", time.time() + 900)
    await eventually(lambda: refused(rig.validator, before, TokenRevoked), "revoked before the outage")

    private_redis.kill()
    await eventually(lambda: not rig.feeds.healthy, "the follower noticed the drop")
    # While down, cache hits are not trusted: re-checked, and the store cannot answer: 503.
    assert rig.validator.cached(kept, AUDIENCE) is None
    with pytest.raises(IssuerUnavailable) as info:
        await rig.validator.validate(kept, audience=AUDIENCE)
    assert info.value.status_code == 503
    # The authorization server records the revocation durably; the fast store is gone.
    with pytest.raises(StorageError):
        await rig.services.tokens.revoke_jti("during-1", time.time() + 900)

    private_redis.restart()  # empty: no persistence
    await eventually(lambda: rig.feeds.healthy, "reconnected and caught up")
    assert await refused(rig.validator, during, TokenRevoked), "revoked while the feed was down"
    assert await refused(rig.validator, before, TokenRevoked), "revoked before the restart"
    await rig.validator.validate(kept, audience=AUDIENCE)
    assert rig.validator.cached(kept, AUDIENCE) is not None, "hits are trusted again"
    # The fast store was re-warmed from the durable record.
    assert await rig.stores.state.get(revoked_key("during-1")) is not None
    assert rig.drops("revocations") >= 1
    assert rig.drops("keys") >= 1
    assert any("feed revocations dropped" in r.getMessage() for r in caplog.records)


async def test_redis_pubsub_connection_killed_catches_up(redis_rig: Rig, private_redis: PrivateRedis) -> None:
    rig = redis_rig
    token = rig.mint("lost-1")
    await rig.accepted_and_cached(token)
    # A revocation whose announcement this gateway never hears (written, but not published).
    await rig.stores.tokens.record_revoked_jti("lost-1", time.time() + 900, time.time())
    drops = rig.drops("revocations")
    assert private_redis.command("CLIENT", "KILL", "TYPE", "pubsub").startswith(b":")
    await eventually(lambda: rig.drops("revocations") > drops, "the drop is counted")
    await eventually(lambda: rig.feeds.healthy, "healthy again")
    assert await refused(rig.validator, token, TokenRevoked), "caught up after the reconnect"


async def test_while_down_a_reset_store_is_backed_by_the_durable_record(
    redis_rig: Rig, private_redis: PrivateRedis
) -> None:
    rig = redis_rig
    token = rig.mint("reset-1")
    await rig.accepted_and_cached(token)
    await rig.stores.tokens.record_revoked_jti("reset-1", time.time() + 900, time.time())
    # Hold the feed down (its follower cannot resubscribe while the server is away) ...
    private_redis.kill()
    await eventually(lambda: not rig.feeds.revocations.healthy, "the follower noticed the drop")
    private_redis.start()
    # ... and ask before it has caught up: the empty store says nothing, the durable record does.
    if not rig.feeds.revocations.healthy:
        assert await rig.revocations.is_revoked("reset-1")
    await eventually(lambda: refused(rig.validator, token, TokenRevoked), "refused")


# -- faults: the embedded default (SQLite state file) -------------------------------------------


@pytest.fixture
async def sqlite_rig(issuer: Issuer, tmp_path: Path) -> AsyncIterator[Rig]:
    async for rig in _rig(f"sqlite:///{tmp_path / 'state.db'}", issuer, tmp_path):
        yield rig


async def test_sqlite_state_errors_reconnect_and_catch_up(sqlite_rig: Rig, tmp_path: Path) -> None:
    rig = sqlite_rig
    path = tmp_path / "state.db"
    token = rig.mint("file-1")
    kept = rig.mint("file-2")
    await rig.accepted_and_cached(token)
    await rig.accepted_and_cached(kept)
    wipe = sqlite3.connect(path)
    wipe.executescript("DROP TABLE messages; DROP TABLE kv;")  # the state file is wiped
    wipe.close()
    await eventually(lambda: rig.drops("revocations") >= 1, "the drop is counted")
    assert not rig.feeds.healthy
    with pytest.raises(IssuerUnavailable):
        await rig.validator.validate(kept, audience=AUDIENCE)  # a hit, re-checked: 503
    await rig.stores.tokens.record_revoked_jti("file-1", time.time() + 900, time.time())
    # Another process opening the state file recreates it; the follower reconnects.
    await SQLiteState(path).close()
    await eventually(lambda: rig.feeds.healthy, "reconnected and caught up")
    assert await refused(rig.validator, token, TokenRevoked)
    await rig.validator.validate(kept, audience=AUDIENCE)

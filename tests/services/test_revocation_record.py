"""Durable revocations are the truth: a reset fast store brings no revoked token back.

Introspection (and UserInfo, which asks it) confirms "not revoked" against the durable record;
after a Redis ``FLUSHALL`` or restart without persistence, or a wiped SQLite state file, a
revoked JWT stays inactive. Revocations are remembered ``MAX_LEEWAY`` past ``exp``: no validator
may accept a token longer than that after it expires.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.gateway.settings import IssuerSettings
from bastion.ops.audit import AuditLog
from bastion.protocol.models import GrantType
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.tokens import revoked_key
from bastion.settings import AuthorizationServerSettings
from bastion.storage.open import open_state
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate
from bastion.tokens import MAX_LEEWAY
from bastion.tokens import TokenValidator
from tests.private_redis import PrivateRedis

pytestmark = pytest.mark.anyio

ISSUER = "https://as.example"


async def _services(db: str, state: str, tmp: Path) -> Services:
    stores = open_stores(f"sqlite:///{db}", state)
    await migrate(stores.db)
    services = Services.create(
        AuthorizationServerSettings(issuer=ISSUER), stores, Sealer(b"k" * 40), AuditLog(tmp / "audit.log")
    )
    await services.keys.load()
    await services.keys.ensure()
    return services


async def _close(services: Services) -> None:
    await services.audit.close()
    await services.stores.close()


@pytest.fixture(params=["redis", "sqlite"])
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, Services, object]]:
    if request.param == "redis":
        redis = PrivateRedis(tmp_path)
        services = await _services(str(tmp_path / "b.db"), redis.url, tmp_path)
        try:
            yield request.param, services, redis
        finally:
            await _close(services)
            redis.kill()
    else:
        services = await _services(str(tmp_path / "b.db"), f"sqlite:///{tmp_path / 'state.db'}", tmp_path)
        try:
            yield request.param, services, tmp_path
        finally:
            await _close(services)


async def test_a_revoked_jwt_stays_inactive_after_the_fast_store_is_reset(
    setup: tuple[str, Services, object], tmp_path: Path
) -> None:
    kind, services, handle = setup
    client, _ = await services.clients.create(name="svc", grant_types=[GrantType.CLIENT_CREDENTIALS])
    issued = await services.tokens.issue_access_token(
        client=client, subject=client.client_id, scope="", audience=("https://api",)
    )
    live = await services.tokens.issue_access_token(
        client=client, subject=client.client_id, scope="", audience=("https://api",)
    )
    await services.tokens.revoke(issued.token, client)
    assert (await services.tokens.introspect(issued.token))["active"] is False

    if kind == "redis":
        assert isinstance(handle, PrivateRedis)
        handle.command("FLUSHALL")
        assert await services.stores.state.get(revoked_key(issued.jti)) is None
        checked = services
    else:
        # The state file is wiped: a new (empty) file, as after deleting it and restarting.
        await services.stores.state.close()
        (tmp_path / "state.db").unlink()
        services.stores.state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
        checked = Services.create(services.settings, services.stores, services.sealer, services.audit)
        await checked.keys.load()
    assert (await checked.tokens.introspect(issued.token))["active"] is False
    assert (await checked.tokens.introspect(live.token))["active"] is True
    # And the fast store can be re-warmed from the record.
    assert await checked.tokens.warm_revocations() == 1
    assert await checked.stores.state.get(revoked_key(issued.jti)) is not None


async def test_revocations_outlive_the_largest_validator_leeway(tmp_path: Path) -> None:
    services = await _services(str(tmp_path / "b.db"), "memory://", tmp_path)
    try:
        now = time.time()
        await services.tokens.revoke_jti("j1", now + 10, now)
        assert await services.stores.tokens.revoked_jtis(now) == [("j1", now + 10 + MAX_LEEWAY)]
    finally:
        await _close(services)
    assert IssuerSettings.model_fields["leeway"].metadata, "bounded"
    with pytest.raises(ValueError, match="leeway"):
        IssuerSettings(issuer=ISSUER, leeway=MAX_LEEWAY + 1)
    with pytest.raises(ValueError, match="MAX_LEEWAY"):
        TokenValidator(ISSUER, leeway=MAX_LEEWAY + 1)

"""Conformance suite for the durable stores, run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from bastion.protocol.models import Client
from bastion.protocol.models import SigningKey
from bastion.protocol.models import StoredAccessToken
from bastion.protocol.models import TokenFormat
from bastion.storage.open import Stores
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import NotFound
from bastion.storage.sql.migrate import migrate
from bastion.storage.sql.migrate import pending

pytestmark = pytest.mark.anyio

CLIENT = Client(
    client_id="svc",
    name="Service",
    public=False,
    grant_types=frozenset({"client_credentials"}),
    scopes=frozenset({"a", "b"}),
    redirect_uris=("https://app.example/cb",),
    audience="https://api.example",
    token_format=TokenFormat.OPAQUE,
    secret_hash="h",
    created_at=1.0,
    updated_at=1.0,
)


async def test_migrations_are_idempotent(stores: Stores) -> None:
    assert await pending(stores.db) == []
    before, after = await migrate(stores.db)
    assert before == after


async def test_client_round_trip(stores: Stores) -> None:
    await stores.clients.create_client(CLIENT)
    assert await stores.clients.get_client("svc") == CLIENT
    with pytest.raises(Conflict):
        await stores.clients.create_client(CLIENT)
    changed = dataclasses.replace(CLIENT, disabled=True, scopes=frozenset({"a"}), updated_at=2.0)
    await stores.clients.update_client(changed)
    assert await stores.clients.get_client("svc") == changed
    assert [c.client_id for c in await stores.clients.list_clients()] == ["svc"]
    assert await stores.clients.delete_client("svc")
    assert not await stores.clients.delete_client("svc")
    assert await stores.clients.get_client("svc") is None
    with pytest.raises(NotFound):
        await stores.clients.update_client(changed)


async def test_revocation_list_queries(stores: Stores) -> None:
    # What POST /revocations reads: jtis revoked after a time, clients disabled after a time.
    await stores.tokens.record_revoked_jti("early", expires_at=500.0, now=10.0)
    await stores.tokens.record_revoked_jti("late", expires_at=500.0, now=30.0)
    await stores.tokens.record_revoked_jti("gone", expires_at=40.0, now=30.0)
    assert sorted(await stores.tokens.revoked_jtis_since(20.0, now=35.0)) == [("gone", 40.0), ("late", 500.0)]
    assert await stores.tokens.revoked_jtis_since(20.0, now=45.0) == [("late", 500.0)]
    assert await stores.tokens.revoked_jtis_since(30.0, now=45.0) == [], "strictly after"

    await stores.clients.create_client(CLIENT)
    await stores.clients.create_client(dataclasses.replace(CLIENT, client_id="on", updated_at=50.0))
    assert await stores.clients.disabled_clients(0.0) == []
    await stores.clients.update_client(dataclasses.replace(CLIENT, disabled=True, updated_at=60.0))
    assert await stores.clients.disabled_clients(59.0) == [("svc", 60.0)]
    assert await stores.clients.disabled_clients(60.0) == []


async def test_keys_round_trip_and_generation_conflict(stores: Stores) -> None:
    key = SigningKey(
        kid="k1", alg="ES256", public_jwk={"kty": "EC"}, created_at=1.0, activates_at=1.0, generation=1
    )
    await stores.keys.add_key(key, b"\x00sealed")
    with pytest.raises(Conflict):
        await stores.keys.add_key(dataclasses.replace(key, kid="k2"), b"x")
    [(loaded, sealed)] = await stores.keys.list_keys()
    assert loaded == key
    assert sealed == b"\x00sealed"
    assert await stores.keys.delete_key("k1")
    assert await stores.keys.list_keys() == []


async def test_key_revocation_is_stored_once(stores: Stores) -> None:
    key = SigningKey(
        kid="k1", alg="ES256", public_jwk={"kty": "EC"}, created_at=1.0, activates_at=1.0, generation=1
    )
    await stores.keys.add_key(key, b"sealed")
    assert await stores.keys.revoke_key("nope", 5.0) is None
    revoked = await stores.keys.revoke_key("k1", 5.0)
    assert revoked == dataclasses.replace(key, revoked_at=5.0)
    assert await stores.keys.revoke_key("k1", 9.0) == revoked, "the first revocation time stays"
    [(loaded, sealed)] = await stores.keys.list_keys()
    assert loaded.revoked_at == 5.0
    assert sealed == b"sealed"
    with pytest.raises(Conflict, match="kid 'k1' already exists"):
        await stores.keys.add_key(dataclasses.replace(key, generation=2), b"x")


async def test_opaque_tokens_and_revocation(stores: Stores) -> None:
    token = StoredAccessToken(
        token_hash="th",
        jti="j1",
        client_id="svc",
        subject="svc",
        scope="a b",
        audience=("https://api.example",),
        issued_at=10.0,
        expires_at=100.0,
        claims={"x": 1},
    )
    await stores.tokens.add_access_token(token)
    assert await stores.tokens.get_access_token("th") == token
    revoked = await stores.tokens.revoke_access_token("th", now=20.0)
    assert revoked is not None
    assert revoked.revoked_at == 20.0
    again = await stores.tokens.revoke_access_token("th", now=30.0)
    assert again is not None
    assert again.revoked_at == 20.0, "the first revocation time is kept"
    assert await stores.tokens.revoke_access_token("nope", now=30.0) is None

    await stores.tokens.record_revoked_jti("jwt-1", expires_at=50.0, now=20.0)
    await stores.tokens.record_revoked_jti("jwt-1", expires_at=50.0, now=21.0)
    assert await stores.tokens.is_jti_revoked("jwt-1")
    assert not await stores.tokens.is_jti_revoked("jwt-2")
    await stores.tokens.record_revoked_jti("jwt-3", expires_at=40.0, now=20.0)
    assert sorted(await stores.tokens.revoked_jtis(now=30.0)) == [("jwt-1", 50.0), ("jwt-3", 40.0)]
    assert await stores.tokens.revoked_jtis(now=45.0) == [("jwt-1", 50.0)], "expired ones are not listed"
    assert await stores.tokens.purge_expired(now=60.0) == 2
    assert not await stores.tokens.is_jti_revoked("jwt-1")
    assert await stores.tokens.purge_expired(now=200.0) == 1


async def test_concurrent_writers_do_not_fail(stores: Stores) -> None:
    async def add(i: int) -> None:
        await stores.clients.create_client(dataclasses.replace(CLIENT, client_id=f"c{i}"))

    await asyncio.gather(*(add(i) for i in range(20)))
    assert len(await stores.clients.list_clients()) == 20

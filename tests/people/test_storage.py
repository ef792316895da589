"""Conformance suite for the people stores, run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bastion.protocol.models import Role
from bastion.protocol.models import User
from bastion.protocol.rfc6749.grants.refresh_token import RefreshFamily
from bastion.protocol.rfc6749.grants.refresh_token import RefreshToken
from bastion.storage.open import Stores
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import NotFound
from bastion.storage.sql.people import PeopleStores
from bastion.storage.sql.schema import metadata

pytestmark = pytest.mark.anyio

ALICE = User(
    user_id="u1",
    username="Alice",
    password_hash="$argon2id$x",
    email="alice@example.com",
    name="Alice A.",
    roles=frozenset({"reader"}),
    created_at=1.0,
    updated_at=1.0,
)


async def test_migration_matches_the_tables(stores: Stores) -> None:
    def diff(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(sync_conn)  # type: ignore[arg-type]
        return list(compare_metadata(context, metadata))

    async with stores.db.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


async def test_users_and_roles(people: PeopleStores) -> None:
    await people.roles.create_role(Role("reader", frozenset({"orders:read"}), "reads"))
    await people.roles.create_role(Role("writer", frozenset({"orders:write", "orders:read"})))
    with pytest.raises(Conflict):
        await people.roles.create_role(Role("reader", frozenset()))
    await people.users.create_user(ALICE)
    assert await people.users.get_user("u1") == ALICE
    assert await people.users.get_user_by_username("alice") == ALICE
    assert await people.users.get_user_by_username("ALICE") == ALICE
    assert await people.users.get_user_by_username("bob") is None
    with pytest.raises(Conflict):  # usernames are unique without regard to case
        await people.users.create_user(dataclasses.replace(ALICE, user_id="u2", username="alice"))
    with pytest.raises(Conflict):  # unknown role
        await people.users.create_user(User("u3", "carol", "h", roles=frozenset({"nope"})))
    assert await people.users.get_user("u3") is None, "a failed create leaves nothing behind"

    changed = dataclasses.replace(ALICE, roles=frozenset({"writer", "reader"}), disabled=True, updated_at=2.0)
    await people.users.update_user(changed)
    assert await people.users.get_user("u1") == changed
    with pytest.raises(NotFound):
        await people.users.update_user(dataclasses.replace(ALICE, user_id="ghost"))
    assert [r.name for r in await people.roles.get_roles(["writer", "reader", "ghost"])] == [
        "reader",
        "writer",
    ]
    assert [r.name for r in await people.roles.list_roles()] == ["reader", "writer"]
    assert await people.roles.get_roles([]) == []

    assert await people.roles.delete_role("writer")
    assert not await people.roles.delete_role("writer")
    assert (await people.users.get_user("u1")).roles == frozenset({"reader"})  # type: ignore[union-attr]

    await people.users.create_user(User("u2", "bob", "h", created_at=3.0, updated_at=3.0))
    assert [u.username for u in await people.users.list_users()] == ["Alice", "bob"]
    await people.consents.grant_consent("u1", "web", ["openid"], 5.0)
    assert await people.users.delete_user("u1")
    assert not await people.users.delete_user("u1")
    assert await people.users.get_user("u1") is None
    assert await people.consents.get_consent("u1", "web") is None


async def test_consents_accumulate(people: PeopleStores) -> None:
    await people.users.create_user(User("u1", "alice", "h"))
    assert await people.consents.get_consent("u1", "web") is None
    first = await people.consents.grant_consent("u1", "web", ["openid", "a"], 10.0)
    assert first.scopes == frozenset({"openid", "a"})
    second = await people.consents.grant_consent("u1", "web", ["b"], 20.0)
    assert second.scopes == frozenset({"openid", "a", "b"})
    assert await people.consents.get_consent("u1", "web") == second
    assert await people.consents.get_consent("u1", "other") is None
    assert await people.consents.revoke_consent("u1", "web")
    assert not await people.consents.revoke_consent("u1", "web")


async def test_concurrent_first_consents_do_not_fail(people: PeopleStores) -> None:
    await people.users.create_user(User("u1", "alice", "h"))
    await asyncio.gather(*(people.consents.grant_consent("u1", "web", [f"s{i}"], 1.0) for i in range(5)))
    consent = await people.consents.get_consent("u1", "web")
    assert consent is not None
    assert consent.scopes == {f"s{i}" for i in range(5)}


FAMILY = RefreshFamily(
    family_id="f1",
    client_id="web",
    subject="u1",
    scope=("openid", "offline_access", "a"),
    sid="s1",
    auth_time=100.0,
    created_at=100.0,
    absolute_expires_at=10_000.0,
)
FIRST = RefreshToken(token_hash="h1", family_id="f1", issued_at=100.0, expires_at=1_000.0)
SECOND = RefreshToken(token_hash="h2", family_id="f1", issued_at=200.0, expires_at=1_200.0)


async def test_refresh_family_and_rotation(people: PeopleStores) -> None:
    store = people.refresh
    await store.create_family(FAMILY, FIRST)
    found = await store.find("h1")
    assert found is not None
    assert found.token == FIRST
    assert found.family == FAMILY
    assert found.successor_response is None
    assert await store.find("nope") is None

    assert await store.rotate("h1", SECOND, b"sealed", 200.0)
    assert not await store.rotate("h1", dataclasses.replace(SECOND, token_hash="h3"), b"other", 201.0)
    assert await store.find("h3") is None, "a losing rotation inserts nothing"
    rotated = await store.find("h1")
    assert rotated is not None
    assert rotated.token.rotated_at == 200.0
    assert rotated.successor_response == b"sealed"
    assert (await store.find("h2")).token == SECOND  # type: ignore[union-attr]

    assert await store.revoke_family("f1", 300.0)
    assert not await store.revoke_family("f1", 301.0)
    revoked = await store.find("h1")
    assert revoked is not None
    assert revoked.family.revoked_at == 300.0
    assert revoked.successor_response is None, "a revoked family's responses are dropped"
    assert not await store.rotate("h2", dataclasses.replace(SECOND, token_hash="h4"), b"x", 302.0)


async def test_rotation_is_exclusive_under_concurrency(people: PeopleStores) -> None:
    await people.refresh.create_family(FAMILY, FIRST)
    successors = [dataclasses.replace(SECOND, token_hash=f"s{i}") for i in range(20)]
    results = await asyncio.gather(*(people.refresh.rotate("h1", s, b"r", 200.0) for s in successors))
    assert results.count(True) == 1
    present = [s.token_hash for s in successors if await people.refresh.find(s.token_hash)]
    assert len(present) == 1


async def test_revoke_subject_and_purge(people: PeopleStores) -> None:
    store = people.refresh
    await store.create_family(FAMILY, FIRST)
    other = dataclasses.replace(FAMILY, family_id="f2", absolute_expires_at=150.0)
    await store.create_family(other, dataclasses.replace(FIRST, token_hash="o1", family_id="f2"))
    assert await store.rotate("h1", SECOND, b"sealed", 200.0)
    # At 1100: f2 is past its absolute lifetime; h1 rotated long ago loses its response only.
    changed = await store.purge_expired(1_100.0, keep_responses=300)
    assert changed >= 2
    assert await store.find("o1") is None
    kept = await store.find("h1")
    assert kept is not None
    assert kept.successor_response is None
    assert await store.find("h2") is not None
    assert await store.revoke_subject("u1", 1_200.0) == ["f1"]
    assert await store.revoke_subject("u1", 1_201.0) == []


async def test_login_session_index_ends_one_or_all_of_a_user(people: PeopleStores) -> None:
    index = people.sessions
    await index.add_session("s1", "u1", 100.0, 200.0)
    await index.add_session("s2", "u1", 110.0, 210.0)
    await index.add_session("s3", "u2", 120.0, 220.0)
    assert await index.session_alive("s1", 150.0)
    assert not await index.session_alive("s1", 200.0), "expired at expires_at"
    assert not await index.session_alive("nope", 150.0)
    assert await index.end_session("s1")
    assert not await index.end_session("s1")
    assert not await index.session_alive("s1", 150.0)
    await index.add_session("s4", "u1", 130.0, 230.0)
    assert sorted(await index.end_user_sessions("u1")) == ["s2", "s4"]
    assert await index.end_user_sessions("u1") == []
    assert not await index.session_alive("s2", 150.0)
    assert await index.session_alive("s3", 150.0), "another user's session is untouched"
    await index.add_session("s5", "u2", 130.0, 160.0)
    assert await index.purge_expired(200.0) == 1
    assert await index.session_alive("s3", 200.0)

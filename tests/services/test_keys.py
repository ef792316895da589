"""Signing-key lifecycle: states follow from times; rotation never leaves a token unverifiable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.protocol import jose
from bastion.services.crypto import Sealer
from bastion.services.crypto import SealError
from bastion.services.keys import KeyPolicy
from bastion.services.keys import KeyService
from bastion.services.keys import KeyState
from bastion.storage.fast.memory import MemoryState
from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate

pytestmark = pytest.mark.anyio

KEK = b"k" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    opened = open_stores(f"sqlite:///{tmp_path / 'b.db'}", "memory://")
    await migrate(opened.db)
    yield opened
    await opened.close()


def service(stores: Stores, clock: Clock) -> KeyService:
    policy = KeyPolicy(
        algorithms=("ES256", "RS256"),
        rotation_period=30 * 86400,
        publish_delay=600,
        retention=960,
        jwks_max_age=600,
    )
    return KeyService(stores.keys, Sealer(KEK), policy, clock=clock)


async def test_first_start_creates_active_keys_per_algorithm(stores: Stores) -> None:
    clock = Clock()
    keys = service(stores, clock)
    await keys.load()
    created = await keys.ensure()
    assert sorted(k.alg for k in created) == ["ES256", "RS256"]
    assert all(keys.state(k) is KeyState.ACTIVE for k in created)
    assert await keys.ensure() == []


async def test_rotation_publishes_first_then_signs_then_retires_then_expires(stores: Stores) -> None:
    clock = Clock()
    keys = service(stores, clock)
    await keys.load()
    await keys.ensure()
    old = keys.signing_key("ES256")
    new = await keys.rotate("ES256")
    assert keys.state(new) is KeyState.PENDING
    assert new.kid in {k["kid"] for k in keys.jwks()["keys"]}, "published at once"
    assert keys.signing_key("ES256").kid == old.kid, "not signing before the publish delay"

    # Signing starts one refresh interval (10 s) plus the publish delay after creation: every
    # process serves the key for the whole delay.
    clock.now += 600
    assert keys.signing_key("ES256").kid == old.kid
    clock.now += 10
    assert keys.signing_key("ES256").kid == new.kid
    [old_record] = [k for k in keys.all_keys() if k.kid == old.kid]
    assert keys.state(old_record) is KeyState.RETIRED
    assert old.kid in {k["kid"] for k in keys.jwks()["keys"]}, "retired keys stay published"

    clock.now += 960
    assert keys.state(old_record) is KeyState.EXPIRED
    assert old.kid not in {k["kid"] for k in keys.jwks()["keys"]}


async def test_automatic_schedule_rotates_due_keys(stores: Stores) -> None:
    clock = Clock()
    keys = service(stores, clock)
    await keys.load()
    await keys.ensure()
    clock.now += 30 * 86400 - 600
    created = await keys.ensure()
    assert sorted(k.alg for k in created) == ["ES256", "RS256"]
    assert all(keys.state(k) is KeyState.PENDING for k in created)
    assert await keys.ensure() == [], "a pending successor is not rotated again"


async def test_two_processes_rotating_at_once_agree(stores: Stores) -> None:
    clock = Clock()
    a, b = service(stores, clock), service(stores, clock)
    await a.load()
    await a.ensure()
    await b.load()
    clock.now += 30 * 86400
    first = await a.ensure()
    second = await b.ensure()  # b decided on the same stale view: its insert conflicts
    assert {k.kid for k in second} <= {k.kid for k in first}, "the loser adopts the winner's keys"
    await a.load()
    assert len([k for k in a.all_keys() if k.alg == "ES256"]) == 2
    assert len([k for k in a.all_keys() if k.alg == "RS256"]) == 2


async def test_jwks_never_exposes_private_members_and_keys_are_encrypted(stores: Stores) -> None:
    clock = Clock()
    keys = service(stores, clock)
    await keys.load()
    await keys.ensure()
    for jwk in keys.jwks()["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)
        assert {"kid", "alg", "use"} <= set(jwk)
    for record, sealed in await stores.keys.list_keys():
        assert b"PRIVATE KEY" not in sealed
        with pytest.raises(SealError):
            Sealer(b"x" * 40).open(sealed, record.kid.encode())


async def test_signed_tokens_verify_against_the_published_key(stores: Stores) -> None:
    clock = Clock()
    keys = service(stores, clock)
    await keys.load()
    await keys.ensure()
    active = keys.signing_key("ES256")
    token = jose.encode_jwt("ES256", active.private_key, {"kid": active.kid}, {"sub": "x"})
    parsed = jose.parse_compact(token)
    [jwk] = [k for k in keys.jwks()["keys"] if k["kid"] == active.kid]
    assert jose.verify("ES256", jose.load_public_jwk(jwk), parsed.signing_input, parsed.signature)


def test_sealer_binds_context_and_hashes_in_constant_time() -> None:
    sealer = Sealer(KEK)
    blob = sealer.seal(b"secret", b"kid-1")
    assert sealer.open(blob, b"kid-1") == b"secret"
    with pytest.raises(SealError):
        sealer.open(blob, b"kid-2")
    stored = sealer.hash_secret("s3cret")
    assert sealer.verify_secret("s3cret", stored)
    assert not sealer.verify_secret("s3cret!", stored)
    with pytest.raises(ValueError, match="at least"):
        Sealer(b"short")


async def test_other_processes_load_an_announced_key_at_once(stores: Stores) -> None:
    clock = Clock()
    state = MemoryState()
    policy = KeyPolicy(
        algorithms=("ES256",), rotation_period=30 * 86400, publish_delay=600, retention=960, jwks_max_age=600
    )
    a = KeyService(stores.keys, Sealer(KEK), policy, clock=clock, state=state, refresh_interval=3600)
    b = KeyService(stores.keys, Sealer(KEK), policy, clock=clock, state=state, refresh_interval=3600)
    await a.load()
    await a.ensure()
    await b.load()
    b.start()
    await asyncio.sleep(0.05)  # b is subscribed
    new = await a.rotate("ES256")
    for _ in range(100):
        if new.kid in {k["kid"] for k in b.jwks()["keys"]}:
            break
        await asyncio.sleep(0.01)
    assert new.kid in {k["kid"] for k in b.jwks()["keys"]}, "published by b long before its hourly refresh"
    await b.close()

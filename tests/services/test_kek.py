"""Key-encryption-key rotation: every sealed blob re-sealed at once, or none; the keyed hashes
of secrets survive it; the old KEK opens nothing afterwards."""

from __future__ import annotations

import pytest
from sqlalchemy import insert
from sqlalchemy import select

from bastion.protocol.models import SigningKey
from bastion.services.crypto import Sealer
from bastion.services.crypto import SealError
from bastion.services.kek import SECRET_HASH
from bastion.services.kek import open_sealer
from bastion.services.kek import rotate_kek
from bastion.services.keys import KeyPolicy
from bastion.services.keys import KeyService
from bastion.storage.open import Stores
from bastion.storage.sql.schema_people import refresh_families
from bastion.storage.sql.schema_people import refresh_tokens

pytestmark = pytest.mark.anyio

OLD = b"old-" + b"k" * 40
NEW = b"new-" + b"n" * 40
POLICY = KeyPolicy(
    algorithms=("ES256", "RS256"),
    rotation_period=86400.0,
    publish_delay=0.0,
    retention=960.0,
    jwks_max_age=600,
)

# ``stores`` (tests/conftest.py): every test runs on SQLite and on PostgreSQL.


async def keys_under(stores: Stores, sealer: Sealer) -> KeyService:
    keys = KeyService(stores.keys, sealer, POLICY)
    await keys.load()
    return keys


async def add_sealed_response(stores: Stores, sealer: Sealer, token_hash: str) -> None:
    async with stores.db.write() as conn:
        await conn.execute(
            insert(refresh_families).values(
                family_id="f1",
                client_id="c",
                subject="u",
                scope="",
                sid="s",
                auth_time=1.0,
                created_at=1.0,
                absolute_expires_at=2e9,
                revoked_at=None,
            )
        )
        await conn.execute(
            insert(refresh_tokens).values(
                token_hash=token_hash,
                family_id="f1",
                issued_at=1.0,
                expires_at=2e9,
                rotated_at=1.0,
                successor_response=sealer.seal(b'{"access_token":"x"}', token_hash.encode()),
            )
        )


async def sealed_response(stores: Stores, token_hash: str) -> bytes:
    async with stores.db.read() as conn:
        row = (
            await conn.execute(
                select(refresh_tokens.c.successor_response).where(refresh_tokens.c.token_hash == token_hash)
            )
        ).one()
    return bytes(row.successor_response)


async def test_rotation_reseals_every_blob_and_carries_the_secret_hash_key(stores: Stores) -> None:
    old = await open_sealer(stores.keys, OLD)
    created = await (await keys_under(stores, old)).ensure()
    await add_sealed_response(stores, old, "h1")
    client_secret_hash = old.hash_secret("a client secret")

    count = await rotate_kek(stores.keys, old, NEW, now=10.0)

    assert count == len(created) + 1
    new = await open_sealer(stores.keys, NEW)
    assert new.hash_secret("a client secret") == client_secret_hash, "stored hashes keep verifying"
    keys = await keys_under(stores, new)
    assert {k.kid for k in keys.all_keys()} == {k.kid for k in created}
    assert keys.signing_key("ES256").kid in {k.kid for k in created}
    assert new.open(await sealed_response(stores, "h1"), b"h1") == b'{"access_token":"x"}'
    for _, blob in await stores.keys.list_keys():  # the old KEK opens nothing stored any more
        with pytest.raises(SealError):
            Sealer(OLD).open(blob, b"")
    with pytest.raises(SealError, match="cannot decrypt the stored secret-hash key"):
        await open_sealer(stores.keys, OLD)


async def test_a_second_rotation_keeps_the_first_secret_hash_key(stores: Stores) -> None:
    old = await open_sealer(stores.keys, OLD)
    await (await keys_under(stores, old)).ensure()
    expected = old.hash_secret("s")
    await rotate_kek(stores.keys, old, NEW, now=10.0)
    third = b"third-" + b"t" * 40
    await rotate_kek(stores.keys, await open_sealer(stores.keys, NEW), third, now=20.0)
    assert (await open_sealer(stores.keys, third)).hash_secret("s") == expected
    await keys_under(stores, await open_sealer(stores.keys, third))


async def test_a_failure_midway_leaves_every_blob_as_it_was(stores: Stores) -> None:
    old = await open_sealer(stores.keys, OLD)
    await (await keys_under(stores, old)).ensure()
    before = [blob for _, blob in await stores.keys.list_keys()]
    new = Sealer(NEW)
    calls = 0

    def crash_on_second(blob: bytes, aad: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("power cut")
        return new.seal(old.open(blob, aad), aad)

    with pytest.raises(RuntimeError, match="power cut"):
        await stores.keys.reseal(crash_on_second, {SECRET_HASH: b"x" * 40}, 10.0)
    assert calls == 2
    assert [blob for _, blob in await stores.keys.list_keys()] == before
    assert await stores.keys.get_sealed_secret(SECRET_HASH) is None
    await keys_under(stores, old)  # the old KEK still opens everything


async def test_a_blob_under_an_unknown_kek_stops_the_rotation_and_names_it(stores: Stores) -> None:
    old = await open_sealer(stores.keys, OLD)
    await (await keys_under(stores, old)).ensure()
    odd = SigningKey(kid="odd", alg="ES256", public_jwk={}, created_at=1.0, activates_at=1.0, generation=-5)
    await stores.keys.add_key(odd, Sealer(b"x" * 40).seal(b"pem", b"odd"))  # another KEK's key
    before = [blob for _, blob in await stores.keys.list_keys()]
    with pytest.raises(SealError, match=f"sealed for '{odd.kid}' with BASTION_KEK or BASTION_KEK_PREVIOUS"):
        await rotate_kek(stores.keys, old, NEW, now=10.0)
    assert [blob for _, blob in await stores.keys.list_keys()] == before


async def test_a_key_sealed_under_the_previous_kek_opens_and_is_resealed_next_time(stores: Stores) -> None:
    old = await open_sealer(stores.keys, OLD)
    running = await keys_under(stores, old)  # a server started before the KEK rotation
    await running.ensure()
    await rotate_kek(stores.keys, old, NEW, now=10.0)
    # It keeps its keys in memory, and seals the key it rotates next under the old KEK.
    late = await running.rotate("ES256", publish_delay=0.0)
    assert running.signing_key("ES256").kid == late.kid
    with pytest.raises(SealError, match=f"cannot decrypt signing key {late.kid}"):
        await keys_under(stores, await open_sealer(stores.keys, NEW))
    during = await open_sealer(stores.keys, NEW, previous=[OLD])
    assert late.kid in {k.kid for k in (await keys_under(stores, during)).all_keys()}
    await rotate_kek(stores.keys, during, NEW, now=20.0)  # re-seal what was sealed meanwhile
    await keys_under(stores, await open_sealer(stores.keys, NEW))


def test_a_sealer_seals_under_its_current_kek_only() -> None:
    both = Sealer(NEW, previous=[OLD])
    blob = both.seal(b"data", b"aad")
    assert Sealer(NEW).open(blob, b"aad") == b"data"
    with pytest.raises(SealError):
        Sealer(OLD).open(blob, b"aad")
    assert both.open(Sealer(OLD).seal(b"old", b"aad"), b"aad") == b"old"
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Sealer(NEW, previous=[b"short"])

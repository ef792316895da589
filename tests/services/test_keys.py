"""Signing-key lifecycle: states follow from times; rotation never leaves a token unverifiable;
a revoked key is withdrawn at once; an imported key verifies what it signed before."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.protocol import jose
from bastion.services.crypto import Sealer
from bastion.services.crypto import SealError
from bastion.services.keys import KEYS_CHANNEL
from bastion.services.keys import Activation
from bastion.services.keys import KeyPolicy
from bastion.services.keys import KeyService
from bastion.services.keys import KeyState
from bastion.services.keys import NoSigningKey
from bastion.storage.fast.memory import MemoryState
from bastion.storage.open import Stores
from bastion.storage.open import open_state
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import NotFound
from tests.private_redis import PrivateRedis

pytestmark = pytest.mark.anyio

#: Event types the lifecycle test below emits (the run through the app emits the others).
KEY_STEP_TYPES = frozenset({"key.activated", "key.retired", "key.expired"})

KEK = b"k" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# ``stores`` (tests/conftest.py): every test runs on SQLite and on PostgreSQL.


def service(stores: Stores, clock: Clock, **kwargs: Any) -> KeyService:
    policy = KeyPolicy(
        algorithms=("ES256", "RS256"),
        rotation_period=30 * 86400,
        publish_delay=600,
        retention=960,
        jwks_max_age=600,
    )
    return KeyService(stores.keys, Sealer(KEK), policy, clock=clock, **kwargs)


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


def _kids(keys: KeyService) -> set[str]:
    return {k["kid"] for k in keys.jwks()["keys"]}


def _record(keys: KeyService, kid: str) -> Any:
    return next(k for k in keys.all_keys() if k.kid == kid)


async def _started(clock: Clock, stores: Stores, **kwargs: Any) -> KeyService:
    keys = service(stores, clock, **kwargs)
    await keys.load()
    await keys.ensure()
    return keys


# -- revocation -------------------------------------------------------------------------------


async def test_revoking_the_active_key_withdraws_it_and_a_replacement_signs_at_once(stores: Stores) -> None:
    clock = Clock()
    events: list[AuditEvent] = []
    audit = AuditLog(None, clock=clock)
    audit.listeners.append(events.append)
    keys = await _started(clock, stores, audit=audit)
    old = keys.signing_key("ES256")
    old_key = next(k for k in keys.all_keys() if k.kid == old.kid)
    clock.now += 5
    # The only ES256 key: revoking the last key of an algorithm is allowed.
    done = await keys.revoke(old.kid)
    assert not done.already
    assert done.key.revoked_at == clock.now
    assert keys.state(done.key) is KeyState.REVOKED
    assert old.kid not in _kids(keys), "out of JWKS at once"
    assert keys.public_key(old.kid) is None, "its tokens no longer verify"
    assert keys.is_revoked(old.kid)
    assert old.kid not in keys._private, "its private key is dropped from memory"
    assert done.replacement is not None
    assert done.replacement.alg == "ES256"
    assert done.replacement.activates_at == clock.now, "no publish delay: the revoked key must not sign"
    assert keys.signing_key("ES256").kid == done.replacement.kid
    assert keys.signing_key("RS256").kid != old.kid
    assert [e for e in events if e.type == "key.revoked"] == [
        AuditEvent(
            time=clock.now,
            type="key.revoked",
            outcome="success",
            actor="system",
            subject=old.kid,
            details={
                "alg": "ES256",
                "generation": old_key.generation,
                "activates_at": old_key.activates_at,
                "replacement": done.replacement.kid,
            },
        )
    ]
    created = [e for e in events if e.type == "key.created" and e.subject == done.replacement.kid]
    assert [e.reason for e in created] == ["replaces_revoked_key"]
    # Durable: another process reading the store agrees.
    other = service(stores, clock)
    await other.load()
    assert other.is_revoked(old.kid)
    assert old.kid not in _kids(other)
    assert other.signing_key("ES256").kid == done.replacement.kid


async def test_revoking_a_retired_key_leaves_the_signer_alone(stores: Stores) -> None:
    clock = Clock()
    keys = await _started(clock, stores)
    old = keys.signing_key("ES256")
    new = await keys.rotate("ES256", publish_delay=0)
    assert keys.state(_record(keys, old.kid)) is KeyState.RETIRED
    done = await keys.revoke(old.kid)
    assert done.replacement is None
    assert keys.signing_key("ES256").kid == new.kid
    assert old.kid not in _kids(keys)
    assert len([k for k in keys.all_keys() if k.alg == "ES256"]) == 2, "no key created"


async def test_revoking_a_pending_key_leaves_the_signer_alone(stores: Stores) -> None:
    clock = Clock()
    keys = await _started(clock, stores)
    active = keys.signing_key("ES256")
    pending = await keys.rotate("ES256")
    done = await keys.revoke(pending.kid)
    assert done.replacement is None
    assert pending.kid not in _kids(keys)
    clock.now += 3600
    assert keys.signing_key("ES256").kid == active.kid, "the revoked key never signs"
    assert await keys.ensure() == [], "the active key is not due for rotation"


async def test_revoking_an_unknown_kid_is_refused(stores: Stores) -> None:
    keys = await _started(Clock(), stores)
    with pytest.raises(NotFound, match="no signing key has kid 'nope'"):
        await keys.revoke("nope")


async def test_revoking_again_keeps_the_first_time_and_announces_again(stores: Stores) -> None:
    clock = Clock()
    state = MemoryState()
    keys = await _started(clock, stores, state=state)
    kid = keys.signing_key("ES256").kid
    first = await keys.revoke(kid)
    clock.now += 60
    heard: list[bytes] = []

    async def listen() -> None:
        async for message in state.subscribe(KEYS_CHANNEL):
            heard.append(message)
            return

    listener = asyncio.get_running_loop().create_task(listen())
    await asyncio.sleep(0.01)  # subscribed
    again = await keys.revoke(kid)
    await asyncio.wait_for(listener, 5)
    assert again.already
    assert again.replacement is None
    assert again.key.revoked_at == first.key.revoked_at
    assert orjson.loads(heard[0]) == {"event": "revoked", "kid": kid}


async def test_changes_are_announced_as_json_after_they_are_stored(stores: Stores) -> None:
    clock = Clock()
    state = MemoryState()
    keys = await _started(clock, stores, state=state)
    kid = keys.signing_key("ES256").kid
    heard: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def listen() -> None:
        # On each message, what a process reloading then would read from the store.
        async for message in state.subscribe(KEYS_CHANNEL):
            stored = {key.kid: key for key, _ in await stores.keys.list_keys()}
            event = orjson.loads(message)
            heard.append((event, {"revoked_at": stored[event["kid"]].revoked_at}))
            if event["event"] == "revoked":
                return

    listener = asyncio.get_running_loop().create_task(listen())
    await asyncio.sleep(0.01)
    done = await keys.revoke(kid)
    await asyncio.wait_for(listener, 5)
    assert done.replacement is not None
    assert heard == [
        ({"event": "created", "kid": done.replacement.kid}, {"revoked_at": None}),
        ({"event": "revoked", "kid": kid}, {"revoked_at": done.key.revoked_at}),
    ]


async def test_an_older_key_never_signs_in_place_of_a_revoked_one(stores: Stores) -> None:
    clock = Clock()
    keys = await _started(clock, stores)
    first = keys.signing_key("ES256")
    second = await keys.rotate("ES256", publish_delay=0)
    clock.now += 960  # the first key has left JWKS
    assert first.kid not in _kids(keys)
    # A revocation stored without its replacement (another process stopped half-way).
    await stores.keys.revoke_key(second.kid, clock.now)
    await keys.load()
    with pytest.raises(NoSigningKey):
        keys.signing_key("ES256")
    assert keys.state(_record(keys, first.kid)) is KeyState.EXPIRED
    assert first.kid not in _kids(keys), "a key that left JWKS never comes back"
    # The automatic schedule (every refresh) creates a signer at once.
    [created] = await keys.ensure()
    assert keys.signing_key("ES256").kid == created.kid
    assert created.generation == 3


# -- import -----------------------------------------------------------------------------------


async def test_an_imported_key_verifies_only_by_default_then_retires(stores: Stores) -> None:
    clock = Clock()
    keys = await _started(clock, stores)
    signer = keys.signing_key("ES256")
    external = ec.generate_private_key(ec.SECP256R1())
    token = jose.encode_jwt("ES256", external, {"kid": "legacy-1"}, {"sub": "x"})  # signed before import
    key = await keys.import_key(external, kid="legacy-1", alg="ES256")
    assert key.generation == 0, "older than every key of its algorithm"
    assert keys.state(key) is KeyState.RETIRED
    assert "legacy-1" in _kids(keys)
    found = keys.public_key("legacy-1")
    assert found is not None
    parsed = jose.parse_compact(token)
    assert jose.verify("ES256", found[1], parsed.signing_input, parsed.signature)
    assert keys.signing_key("ES256").kid == signer.kid, "it never signs"
    assert await keys.ensure() == []
    clock.now += 959
    assert "legacy-1" in _kids(keys)
    clock.now += 1
    assert keys.state(_record(keys, "legacy-1")) is KeyState.EXPIRED
    assert "legacy-1" not in _kids(keys)
    second = await keys.import_key(ec.generate_private_key(ec.SECP256R1()), kid="legacy-2", alg="ES256")
    assert second.generation == -1


async def test_an_imported_key_of_an_algorithm_not_signed_here_verifies_and_retires(stores: Stores) -> None:
    clock = Clock()
    keys = await _started(clock, stores)
    external = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = await keys.import_key(external, kid="old-ps", alg="PS256")
    assert keys.state(key) is KeyState.RETIRED
    assert "old-ps" in _kids(keys)
    with pytest.raises(ValueError, match="does not sign PS256"):
        await keys.import_key(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            kid="new-ps",
            alg="PS256",
            activate=Activation.NOW,
        )
    clock.now += 960
    assert "old-ps" not in _kids(keys)


async def test_an_imported_key_can_sign_now_or_after_the_publish_delay(stores: Stores) -> None:
    clock = Clock()
    keys = await _started(clock, stores)
    old = keys.signing_key("ES256")
    now_key = await keys.import_key(
        ec.generate_private_key(ec.SECP256R1()), kid="imported-now", alg="ES256", activate=Activation.NOW
    )
    assert now_key.generation == 2
    assert keys.signing_key("ES256").kid == "imported-now"
    assert keys.state(_record(keys, old.kid)) is KeyState.RETIRED
    later = await keys.import_key(
        ec.generate_private_key(ec.SECP256R1()),
        kid="imported-later",
        alg="ES256",
        activate=Activation.AFTER_DELAY,
        publish_delay=100,
    )
    assert keys.state(later) is KeyState.PENDING
    assert "imported-later" in _kids(keys)
    clock.now += 109  # the delay plus one refresh interval, as for a rotated key
    assert keys.signing_key("ES256").kid == "imported-now"
    clock.now += 1
    assert keys.signing_key("ES256").kid == "imported-later"


async def test_an_imported_key_is_sealed_like_a_generated_one(stores: Stores) -> None:
    clock = Clock()
    keys = await _started(clock, stores)
    external = ec.generate_private_key(ec.SECP384R1())
    await keys.import_key(external, kid="legacy-384", alg="ES384", activate=Activation.NEVER)
    [sealed] = [s for r, s in await stores.keys.list_keys() if r.kid == "legacy-384"]
    assert b"PRIVATE KEY" not in sealed
    assert Sealer(KEK).open(sealed, b"legacy-384") == jose.private_key_to_pem(external)
    with pytest.raises(SealError):
        Sealer(KEK).open(sealed, b"another-kid")
    other = service(stores, clock)
    await other.load()
    assert "legacy-384" in _kids(other)


async def test_import_refuses_a_taken_kid_a_stored_key_and_a_misfit(stores: Stores) -> None:
    keys = await _started(Clock(), stores)
    taken = keys.signing_key("ES256").kid
    external = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Conflict, match=f"kid '{taken}' already exists"):
        await keys.import_key(external, kid=taken, alg="ES256")
    await keys.import_key(external, kid="a", alg="ES256")
    with pytest.raises(Conflict, match="already stored, with kid 'a'"):
        await keys.import_key(external, kid="b", alg="ES256")
    with pytest.raises(ValueError, match="does not fit ES384"):
        await keys.import_key(ec.generate_private_key(ec.SECP256R1()), kid="c", alg="ES384")
    assert not any(k.kid in ("b", "c") for k in keys.all_keys())


async def test_the_store_names_a_duplicate_kid(stores: Stores) -> None:
    keys = await _started(Clock(), stores)
    record = _record(keys, keys.signing_key("ES256").kid)
    with pytest.raises(Conflict, match=f"kid '{record.kid}' already exists"):
        await stores.keys.add_key(record, b"x")


# -- the key feed under faults ----------------------------------------------------------------

#: With Redis away for well under a second, the follower's backoff (0.1 s doubling) has reached
#: at most a few seconds; reconnecting, proving the subscription and reloading take far less.
CATCH_UP_BOUND = 10.0


async def test_a_change_made_while_the_feed_was_down_is_seen_after_reconnect(
    stores: Stores, tmp_path: Path
) -> None:
    # Two processes on one durable store and one (private) Redis; the periodic refresh is
    # hourly, so only the feed's catch-up (a reload from the durable store) can tell b.
    redis = PrivateRedis(tmp_path)
    state_a, state_b = open_state(redis.url), open_state(redis.url)
    clock = Clock()
    a = await _started(clock, stores, state=state_a, refresh_interval=3600)
    b = await _started(clock, stores, state=state_b, refresh_interval=3600)
    b.start()
    try:
        # Healthy: b hears of a rotation at once.
        rotated = await a.rotate("ES256")
        await _eventually(lambda: rotated.kid in _kids(b), "b publishes the rotated key")

        redis.kill()  # every connection drops; the announcement below reaches nobody
        old = a.signing_key("RS256")
        done = await a.revoke(old.kid)
        assert done.replacement is not None
        assert old.kid in _kids(b), "b cannot know yet"
        redis.start()  # empty: nothing of the lost announcement survives there

        start = time.monotonic()
        await _eventually(lambda: b.is_revoked(old.kid), "b catches up after the reconnect", CATCH_UP_BOUND)
        took = time.monotonic() - start
        assert took < CATCH_UP_BOUND
        assert old.kid not in _kids(b)
        assert b.public_key(old.kid) is None, "its tokens no longer verify at b"
        assert b.signing_key("RS256").kid == done.replacement.kid
        assert done.replacement.kid in _kids(b)

        # And the feed is live again: the next change reaches b at once.
        again = await a.rotate("ES256")
        await _eventually(lambda: again.kid in _kids(b), "b follows again after the reconnect")
    finally:
        await b.close()
        await state_a.close()
        await state_b.close()
        redis.kill()


async def _eventually(check: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def test_lifecycle_steps_are_audited_once_across_processes(stores: Stores, tmp_path: Path) -> None:
    clock = Clock()
    heard: list[list[AuditEvent]] = [[], []]
    audits = [AuditLog(tmp_path / f"audit-{i}.log", clock=clock) for i in range(2)]
    for audit, events in zip(audits, heard, strict=True):
        audit.listeners.append(events.append)
    first, second = (service(stores, clock, state=stores.state, audit=audit) for audit in audits)
    await first.load()
    await first.ensure()
    await second.load()
    clock.now += 1

    def steps(events: list[AuditEvent]) -> list[tuple[str, str | None]]:
        return [(e.type, e.subject) for e in events if e.type in KEY_STEP_TYPES]

    assert await first.report_steps() == 2
    assert await second.report_steps() == 0, "the first process claimed both steps"
    old = first.signing_key("ES256").kid
    assert sorted(steps(heard[0])) == sorted(("key.activated", k.kid) for k in first.all_keys())
    new = await first.rotate("ES256")
    assert await first.report_steps() == 0, "pending: nothing happened yet"
    clock.now = new.activates_at + 1
    await second.load()
    assert await second.report_steps() == 2
    assert await first.report_steps() == 0
    assert steps(heard[1]) == [("key.activated", new.kid), ("key.retired", old)]
    retired = next(e for e in heard[1] if e.type == "key.retired")
    assert (retired.details["generation"], retired.details["at"]) == (1, new.activates_at)
    clock.now = new.activates_at + first.policy.retention + 1
    assert await first.report_steps() == 1
    assert steps(heard[0])[-1] == ("key.expired", old)
    assert old not in {k["kid"] for k in first.jwks()["keys"]}, "the expired key left the JWKS"
    for audit in audits:
        await audit.close()
    lines = (tmp_path / "audit-0.log").read_text()
    assert '"type":"key.expired"' in lines


# -- the rotation judgement shared by `bastion keys check` and the key_expiry alert ----------------


async def test_keys_check_and_the_key_expiry_alert_judge_rotation_alike(stores: Stores) -> None:
    from bastion.services.keycheck import check_rotation
    from bastion.services.keycheck import rotation_due_in

    clock = Clock()
    keys = await _started(clock, stores)
    month = 30 * 86400
    assert rotation_due_in(keys, clock.now) == {"ES256": month, "RS256": month}
    assert check_rotation(keys, clock.now, grace=0, warn_within=0) == []
    clock.now += month + 3600  # nobody rotated: an hour overdue
    due = rotation_due_in(keys, clock.now)
    assert due == {"ES256": -3600, "RS256": -3600}  # the alert's value: below a threshold of -600
    overdue = check_rotation(keys, clock.now, grace=0, warn_within=0)
    assert {(f.kind, f.alg) for f in overdue} == {("overdue", "ES256"), ("overdue", "RS256")}
    await keys.rotate("ES256")
    clock.now += 610  # the new key signs one refresh interval plus the publish delay later
    assert rotation_due_in(keys, clock.now)["ES256"] == month
    assert {f.alg for f in check_rotation(keys, clock.now, grace=0, warn_within=0)} == {"RS256"}

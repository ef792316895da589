"""The client-authentication throttle's decisions on every fast-state backend (the SQLite state
file, memory, Redis), and the clients' request rate: counted first, three gates in order, a
success gives back its own attempt and nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.protocol.errors import SlowDown
from bastion.protocol.models import Client
from bastion.ratelimit import Rate
from bastion.ratelimit.local import LocalLimiter
from bastion.services.client_auth import TOO_MANY_FAILURES
from bastion.services.client_auth import TOO_MANY_REQUESTS
from bastion.services.client_auth import Attempt
from bastion.services.client_auth import ClientAuthPolicy
from bastion.services.client_auth import ClientAuthThrottle
from bastion.services.client_auth import ClientRequestLimit
from bastion.storage.fast.memory import MemoryState
from bastion.storage.fast.sqlite import SQLiteState
from bastion.storage.protocols import FastState
from tests.people.support import STATES
from tests.people.support import fast_state

pytestmark = pytest.mark.anyio

POLICY = ClientAuthPolicy(window=60.0, per_client_address=3, per_address=6, per_client=9)


@pytest.fixture(params=STATES)
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastState]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    opened = fast_state(request.param, tmp_path, redis_url)
    yield opened
    await opened.close()


async def no_wait(_: float) -> None:
    await asyncio.sleep(0)


def throttle_on(state: FastState, audit: AuditLog | None = None) -> ClientAuthThrottle:
    """A throttle that really waits for a busy gate (a few milliseconds)."""
    return ClientAuthThrottle(state, POLICY, audit=audit)


async def guess(throttle: ClientAuthThrottle, client_id: str, ip: str) -> str | int:
    """A wrong secret: ``"checked"`` when admitted (and recorded as failed), else the
    ``Retry-After`` of its refusal."""
    outcome = await _attempt(throttle, client_id, ip)
    if isinstance(outcome, Attempt):
        await throttle.failed(outcome)
        return "checked"
    return outcome


async def _attempt(throttle: ClientAuthThrottle, client_id: str, ip: str) -> Attempt | int:
    refused: SlowDown | None = None
    try:
        return await throttle.attempt(client_id, ip)
    except SlowDown as exc:
        refused = exc
    assert (refused.status_hint, refused.error) == (429, "temporarily_unavailable")
    assert refused.description == TOO_MANY_FAILURES
    return refused.retry_after


async def succeed(throttle: ClientAuthThrottle, client_id: str, ip: str) -> None:
    await throttle.give_back(await throttle.attempt(client_id, ip))


async def test_the_attempt_after_the_limit_is_refused_with_the_rest_of_the_window(state: FastState) -> None:
    throttle = throttle_on(state)
    assert [await guess(throttle, "billing", "192.0.2.1") for _ in range(3)] == ["checked"] * 3
    refused = await guess(throttle, "billing", "192.0.2.1")
    assert isinstance(refused, int)
    assert 59 <= refused <= 60


async def test_a_refused_attempt_is_not_counted_at_the_gates_after_the_one_that_refused_it(
    state: FastState,
) -> None:
    throttle = throttle_on(state)
    outcomes = [await guess(throttle, "billing", "192.0.2.1") for _ in range(50)]
    assert outcomes.count("checked") == 3
    # The pair is locked; the address counted 3 failures, the client 3.
    assert [await guess(throttle, f"other{i}", "192.0.2.1") for i in range(4)][:3] == ["checked"] * 3
    assert isinstance(await guess(throttle, "other9", "192.0.2.1"), int), "the address allows 6"
    for n in range(2):
        assert [await guess(throttle, "billing", f"198.51.100.{n}") for _ in range(3)] == ["checked"] * 3
    assert isinstance(await guess(throttle, "billing", "198.51.100.9"), int), (
        "9 for billing: refused anywhere"
    )


async def test_a_success_gives_back_its_own_attempt_and_never_the_failures_before_it(
    state: FastState,
) -> None:
    throttle = throttle_on(state)
    assert [await guess(throttle, "billing", "192.0.2.1") for _ in range(2)] == ["checked"] * 2
    for _ in range(25):  # the client succeeding often, from the attacker's own address too
        await succeed(throttle, "billing", "192.0.2.1")
    assert await guess(throttle, "billing", "192.0.2.1") == "checked", "the third failure"
    assert isinstance(await guess(throttle, "billing", "192.0.2.1"), int), "still three failures"


async def test_an_ipv6_client_is_counted_by_its_64(state: FastState) -> None:
    throttle = throttle_on(state)
    for n in range(3):
        assert await guess(throttle, "billing", f"2001:db8:1:2::{n + 1:x}") == "checked"
    assert isinstance(await guess(throttle, "billing", "2001:db8:1:2:ffff::1"), int), "same /64"
    assert await guess(throttle, "billing", "2001:db8:1:3::1") == "checked", "another /64"
    assert await guess(throttle, "billing", "::ffff:192.0.2.1") == "checked"
    for _ in range(2):
        await guess(throttle, "billing", "192.0.2.1")
    assert isinstance(await guess(throttle, "billing", "::ffff:192.0.2.1"), int), "mapped IPv4 is IPv4"


async def test_concurrent_attempts_are_admitted_at_most_the_limit(state: FastState) -> None:
    throttle = throttle_on(state)
    outcomes = await asyncio.gather(*(guess(throttle, "billing", "192.0.2.1") for _ in range(200)))
    assert outcomes.count("checked") == 3
    assert all(isinstance(found, int) and found >= 59 for found in outcomes if found != "checked"), outcomes


async def test_a_gate_full_of_attempts_in_flight_makes_the_next_wait_then_admits_it(state: FastState) -> None:
    waits: list[float] = []
    in_flight = [await ClientAuthThrottle(state, POLICY).attempt("billing", "192.0.2.1") for _ in range(3)]
    throttle = ClientAuthThrottle(state, POLICY, sleep=no_wait)

    async def sleep(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 2:
            await throttle.give_back(in_flight.pop())  # one of them succeeds meanwhile

    throttle = ClientAuthThrottle(state, POLICY, sleep=sleep)
    admitted = await throttle.attempt("billing", "192.0.2.1")
    assert waits == [0.002, 0.004]
    assert len(admitted.gates) == 3
    assert await _attempt(throttle, "billing", "192.0.2.1") == 1, "busy, not locked: retry in a second"
    assert waits[:2] == [0.002, 0.004]
    assert waits[2:9] == [0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05]
    assert sum(waits[2:]) == pytest.approx(1.0, abs=0.05), "a second of patience in all"


async def test_client_ids_that_name_no_client_are_counted_under_a_digest(state: FastState) -> None:
    throttle = throttle_on(state)
    odd = "x" * 300 + "\n}"
    for _ in range(3):
        await guess(throttle, odd, "192.0.2.1")
    assert isinstance(await guess(throttle, odd, "192.0.2.1"), int)
    keys = [key for _, key, _ in throttle.gates(odd, "192.0.2.1")]
    assert all(len(key) < 80 and "\n" not in key for key in keys)
    assert await guess(throttle, "x" * 300, "192.0.2.1") == "checked", "another digest"


async def test_the_failure_that_locks_a_gate_is_audited_once(state: FastState, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    events: list[AuditEvent] = []
    audit.listeners.append(events.append)
    throttle = throttle_on(state, audit=audit)
    for _ in range(40):
        await guess(throttle, "billing", "192.0.2.1")
    await audit.close()
    assert [(e.type, e.outcome, e.details["gate"], e.subject, e.address, e.reason) for e in events] == [
        (
            "client.auth_throttled",
            "denied",
            "client_address",
            "billing",
            "192.0.2.1",
            "3_failures_per_client_address",
        )
    ]


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_counts_start_afresh_when_the_window_ends(kind: str, tmp_path: Path) -> None:
    now = [1000.0]
    state: FastState = (
        SQLiteState(tmp_path / "state.db", clock=lambda: now[0])
        if kind == "sqlite"
        else MemoryState(clock=lambda: now[0])
    )
    try:
        throttle = throttle_on(state)
        for _ in range(4):
            await guess(throttle, "billing", "192.0.2.1")
        now[0] += 30
        assert await guess(throttle, "billing", "192.0.2.1") == 30, "refused attempts do not extend it"
        now[0] += 30.5
        assert await guess(throttle, "billing", "192.0.2.1") == "checked"
    finally:
        await state.close()


def _client(client_id: str, *, public: bool = False) -> Client:
    return Client(
        client_id=client_id,
        name=client_id,
        public=public,
        grant_types=frozenset(),
        scopes=frozenset(),
        secret_hash=None if public else "0" * 64,
    )


async def test_the_request_rate_refuses_past_the_burst_and_says_when_to_retry() -> None:
    now = [100.0]
    limit = ClientRequestLimit(LocalLimiter(clock=lambda: now[0]).bind("t", [Rate(2, 10.0, 3)]))
    billing = _client("billing")
    for _ in range(3):
        await limit.admit(billing, "192.0.2.1")
    with pytest.raises(SlowDown) as refused:
        await limit.admit(billing, "198.51.100.1")
    assert refused.value.status_hint == 429
    assert refused.value.description == TOO_MANY_REQUESTS
    assert refused.value.retry_after == 5, "one request every 5 s"
    await limit.admit(_client("orders"), "192.0.2.1")
    now[0] += 5
    await limit.admit(billing, "192.0.2.1")


async def test_a_public_client_is_rated_per_address_so_strangers_spend_only_their_own() -> None:
    limit = ClientRequestLimit(LocalLimiter(clock=lambda: 100.0).bind("t", [Rate(1, 60.0, 2)]))
    shop = _client("shop", public=True)
    for _ in range(2):
        await limit.admit(shop, "203.0.113.66")
    with pytest.raises(SlowDown):
        await limit.admit(shop, "203.0.113.66")
    await limit.admit(shop, "192.0.2.1")

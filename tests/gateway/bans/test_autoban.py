"""Counting, banning and escalation (:mod:`bastion.gateway.autoban`, :mod:`bastion.gateway.bans`)
with an injected clock, on every fast-state backend; the durable record on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion.gateway.autoban import BanGuard
from bastion.gateway.autoban import kind_of
from bastion.gateway.bans import BANS_CHANNEL
from bastion.gateway.bans import BanBook
from bastion.gateway.bans import BanSet
from bastion.gateway.bans import apply_message
from bastion.gateway.bans import ban_network
from bastion.gateway.bans import count_key
from bastion.gateway.bans import parse_network
from bastion.gateway.settings import BanRuleSettings
from bastion.gateway.settings import BansSettings
from bastion.net import address_key
from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.storage.ban_protocols import Ban
from bastion.storage.fast.memory import MemoryState
from bastion.storage.open import Stores
from bastion.storage.open import open_state
from bastion.storage.protocols import FastState

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastState]:
    if request.param == "memory":
        store: FastState = open_state("memory://")
    elif request.param == "sqlite":
        store = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        from bastion.storage.fast.redis import RedisState

        store = RedisState(request.getfixturevalue("redis_url"), prefix=f"test:{secrets.token_hex(4)}:")
    yield store
    await store.close()


def guard_for(state: FastState, clock: Clock, **bans: Any) -> BanGuard:
    settings = BansSettings.model_validate(
        {"auth": {"threshold": 3, "window": 60, "duration": 100, "factor": 2, "max_duration": 350}, **bans}
    )
    return BanGuard(settings, (), bans=BanSet(clock), state=state, book=None, clock=clock)


def banned(guard: BanGuard, ip: str) -> bool:
    key = address_key(ip)
    assert key is not None
    return guard.bans.refuses(key)


async def fail(guard: BanGuard, ip: str, kind: str = "auth", times: int = 1) -> None:
    for _ in range(times):
        pending = guard.count(ip, kind)
        assert pending is not None
        await pending


async def test_the_threshold_bans_exactly_at_n(state: FastState) -> None:
    clock = Clock()
    guard = guard_for(state, clock)
    await fail(guard, "203.0.113.7", times=2)
    assert not banned(guard, "203.0.113.7")
    await fail(guard, "203.0.113.7")
    assert banned(guard, "203.0.113.7")
    assert not banned(guard, "203.0.113.8")
    ban = guard.bans.get("203.0.113.7")
    assert ban is not None
    assert (ban.source, ban.kind, ban.repeat, ban.until - ban.since) == ("auto", "auth", 1, 100)
    assert ban.reason == "3 authentication failures in 60 s"
    assert guard.metrics.issued == {"auth": 1}


async def test_a_ban_ends_by_itself(state: FastState) -> None:
    clock = Clock()
    guard = guard_for(state, clock)
    await fail(guard, "203.0.113.7", times=3)
    clock.now += 99.9
    assert banned(guard, "203.0.113.7")
    clock.now += 0.1
    assert not banned(guard, "203.0.113.7")
    assert guard.bans.active() == []


async def test_repeat_bans_escalate_up_to_the_cap() -> None:
    # The memory store on the same injected clock: the counts' windows pass with it.
    clock = Clock()
    state = MemoryState(clock)
    guard = guard_for(state, clock)
    durations = []
    for _ in range(5):
        await fail(guard, "203.0.113.7", times=3)
        ban = guard.bans.get("203.0.113.7")
        assert ban is not None
        durations.append((ban.repeat, ban.until - ban.since))
        clock.now = ban.until + 1
    assert durations == [(1, 100), (2, 200), (3, 350), (4, 350), (5, 350)]


async def test_escalation_forgets_after_the_repeat_window() -> None:
    clock = Clock()
    state = MemoryState(clock)
    guard = guard_for(state, clock, repeat_window=1000)
    await fail(guard, "203.0.113.7", times=3)
    clock.now += 1001
    await fail(guard, "203.0.113.7", times=3)
    ban = guard.bans.get("203.0.113.7")
    assert ban is not None
    assert ban.repeat == 1


async def test_failures_spread_beyond_the_window_do_not_ban() -> None:
    clock = Clock()
    state = MemoryState(clock)
    guard = guard_for(state, clock)
    await fail(guard, "203.0.113.7", times=2)
    clock.now += 61
    await fail(guard, "203.0.113.7", times=2)
    assert not banned(guard, "203.0.113.7")
    await fail(guard, "203.0.113.7")
    assert banned(guard, "203.0.113.7")


async def test_ipv6_clients_count_and_are_banned_by_64(state: FastState) -> None:
    guard = guard_for(state, Clock())
    for suffix in ("1", "2", "ffff:ffff:ffff:ffff"):
        await fail(guard, f"2001:db8:1:2::{suffix}" if ":" not in suffix else f"2001:db8:1:2:{suffix}")
    assert banned(guard, "2001:db8:1:2:abcd::9")
    assert not banned(guard, "2001:db8:1:3::1")
    assert guard.bans.get("2001:db8:1:2::/64") is not None


async def test_an_ipv4_mapped_client_is_its_ipv4_address(state: FastState) -> None:
    guard = guard_for(state, Clock())
    await fail(guard, "::ffff:203.0.113.7", times=2)
    await fail(guard, "203.0.113.7")
    assert banned(guard, "::ffff:203.0.113.7")
    assert guard.bans.get("203.0.113.7") is not None


async def test_kinds_count_apart(state: FastState) -> None:
    guard = guard_for(state, Clock(), refused={"threshold": 3})
    await fail(guard, "203.0.113.7", "auth", 2)
    await fail(guard, "203.0.113.7", "refused", 2)
    assert not banned(guard, "203.0.113.7")
    await fail(guard, "203.0.113.7", "refused")
    ban = guard.bans.get("203.0.113.7")
    assert ban is not None
    assert ban.kind == "refused"
    assert ban.reason == "3 refused requests in 60 s"


async def test_exempt_networks_trusted_proxies_and_disabled_kinds_are_never_counted(state: FastState) -> None:
    settings = BansSettings.model_validate(
        {"auth": {"threshold": 1}, "rate_limit": {"threshold": 0}, "exempt": ["198.51.100.0/24"]}
    )
    proxies = (address_network("10.0.0.1"),)
    guard = BanGuard(settings, proxies, bans=BanSet(Clock()), state=state, book=None, clock=Clock())
    assert guard.count("198.51.100.9", "auth") is None
    assert guard.count("10.0.0.1", "auth") is None
    assert guard.count("203.0.113.7", "rate_limit") is None
    assert guard.count("not-an-address", "auth") is None
    off = BanGuard(
        BansSettings(enabled=False), (), bans=BanSet(Clock()), state=state, book=None, clock=Clock()
    )
    assert off.count("203.0.113.7", "auth") is None


def address_network(ip: str) -> Any:
    import ipaddress

    return ipaddress.ip_network(ip)


async def test_concurrent_failures_ban_once_at_the_threshold(state: FastState) -> None:
    clock = Clock()
    guard = guard_for(state, clock, auth={"threshold": 10, "window": 60, "duration": 100})
    # Two processes' guards on one store: the counts are shared, one ban is issued.
    other = guard_for(state, clock, auth={"threshold": 10, "window": 60, "duration": 100})
    await asyncio.gather(*(fail(guard if n % 2 else other, "203.0.113.7") for n in range(9)))
    assert not banned(guard, "203.0.113.7")
    assert not banned(other, "203.0.113.7")
    await asyncio.gather(*(fail(guard if n % 2 else other, "203.0.113.7") for n in range(11)))
    issued = sum(g.metrics.issued.get("auth", 0) for g in (guard, other))
    assert issued == 1
    ban = guard.bans.get("203.0.113.7") or other.bans.get("203.0.113.7")
    assert ban is not None
    assert ban.repeat == 1


async def test_a_store_that_fails_leaves_the_reply_uncounted() -> None:
    state = MemoryState()
    await state.set(count_key("203.0.113.7", "auth"), b"not a number", 60)
    guard = guard_for(state, Clock())
    await fail(guard, "203.0.113.7", times=5)  # never raises
    assert guard.metrics.errors == {"count": 5}
    assert not banned(guard, "203.0.113.7")


@pytest.mark.parametrize(
    ("status", "failure", "refused", "kind"),
    [
        (429, None, False, "rate_limit"),
        (401, "invalid_signature", False, "auth"),
        (401, "token_in_query", False, "auth"),
        (400, "invalid_request", False, "auth"),
        (401, "missing", False, None),
        (403, "insufficient_scope", False, None),
        (503, "issuer_unavailable", False, None),
        (400, None, True, "refused"),
        (404, None, False, None),
        (403, None, False, None),
    ],
)
def test_which_replies_count(status: int, failure: str | None, refused: bool, kind: str | None) -> None:
    assert kind_of(status, failure, refused=refused) == kind


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7/32", "203.0.113.7"),
        ("203.0.113.7/24", "203.0.113.0/24"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("2001:db8:1:2::77", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::77/128", "2001:db8:1:2::/64"),
        ("2001:db8::/32", "2001:db8::/32"),
    ],
)
def test_networks_are_canonical(text: str, network: str) -> None:
    assert parse_network(text) == network


@pytest.mark.parametrize("text", ["", "evil", "300.1.1.1", "1.2.3.4/33", "fe80::1%eth0/64"])
def test_not_networks(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        parse_network(text)
    assert ban_network(text) is None or "/" not in text


def test_messages_apply_and_lift() -> None:
    clock = Clock()
    bans = BanSet(clock)
    ban = Ban("10.1.0.0/16", "scan", "manual", clock.now, clock.now + 60)
    from bastion.gateway.bans import ban_message
    from bastion.gateway.bans import unban_message

    apply_message(bans, ban_message(ban))
    assert bans.banned("10.1.200.3")
    apply_message(bans, unban_message("10.1.0.0/16"))
    assert not bans.banned("10.1.200.3")
    expired = Ban("10.2.0.0/16", "scan", "manual", clock.now - 60, clock.now - 1)
    apply_message(bans, ban_message(expired))
    assert not bans
    with pytest.raises(ValueError, match="not a ban event"):
        apply_message(bans, b'{"event": "other"}')


def test_a_catch_up_keeps_bans_issued_while_the_record_was_read() -> None:
    clock = Clock()
    bans = BanSet(clock)
    old = Ban("10.0.0.1", "old", "auto", clock.now - 10, clock.now + 60, 1, "auth")
    bans.apply(old)
    reading_since = clock.now
    fresh = Ban("10.0.0.2", "made meanwhile", "auto", clock.now, clock.now + 60, 1, "alert")
    bans.apply(fresh)
    durable = Ban("10.0.0.3", "from the record", "manual", clock.now - 5, clock.now + 60)
    bans.replace([durable], keep_since=reading_since)
    assert [ban.network for ban in bans.active()] == ["10.0.0.3", "10.0.0.2"]
    bans.replace([durable])
    assert [ban.network for ban in bans.active()] == ["10.0.0.3"]


async def test_the_book_writes_durably_then_fast_then_publishes_and_audits(
    stores: Stores, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    events: list[AuditEvent] = []
    audit.listeners.append(events.append)
    clock = Clock(1e10)
    book = BanBook(stores.bans, stores.state, audit, clock)
    received: list[bytes] = []
    subscription = stores.state.subscribe(BANS_CHANNEL).__aiter__()
    reader = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0.05)
    ban = Ban("203.0.113.7", "scan", "manual", clock.now, clock.now + 60)
    await book.ban(ban)
    received.append(await asyncio.wait_for(reader, 5))
    assert await stores.bans.active_bans(clock.now) == [ban]
    assert await book.active() == [ban]
    bans = BanSet(clock)
    apply_message(bans, received[0])
    assert bans.get("203.0.113.7") == ban
    await stores.state.set(count_key("203.0.113.7", "auth"), b"7", 60)
    reader = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)
    assert await book.lift("203.0.113.7", "false positive") == ban
    apply_message(bans, await asyncio.wait_for(reader, 5))
    assert not bans
    assert await stores.state.get(count_key("203.0.113.7", "auth")) is None
    assert await stores.bans.active_bans(clock.now) == []
    assert await book.lift("203.0.113.7", "again") is None
    assert [(e.type, e.outcome, e.actor, e.subject, e.reason) for e in events] == [
        ("ip.banned", "denied", "system", "203.0.113.7", "scan"),
        ("ip.unbanned", "success", "system", "203.0.113.7", "false positive"),
    ]
    assert events[0].details == {
        "source": "manual",
        "kind": None,
        "since": ban.since,
        "until": ban.until,
        "repeat": 0,
    }
    assert events[1].details == {"banned_for": "scan", "source": "manual", "until": ban.until}
    await audit.close()
    await subscription.aclose()  # type: ignore[attr-defined]


async def test_the_durable_record_keeps_the_latest_ban_and_purges_ended_ones(stores: Stores) -> None:
    first = Ban("203.0.113.7", "a", "auto", 100.0, 200.0, 1, "auth")
    second = Ban("203.0.113.7", "b", "auto", 300.0, 500.0, 2, "auth")
    other = Ban("2001:db8::/64", "c", "manual", 150.0, 250.0)
    for ban in (first, other, second):
        await stores.bans.put_ban(ban)
    assert await stores.bans.active_bans(160.0) == [other, second]
    assert await stores.bans.active_bans(260.0) == [second]
    assert await stores.bans.purge_expired_bans(260.0) == 1
    assert await stores.bans.remove_ban("203.0.113.7") == second
    assert await stores.bans.remove_ban("203.0.113.7") is None


def test_escalation_is_bounded_for_huge_repeats() -> None:
    rule = BanRuleSettings(duration=600, factor=2, max_duration=86400)
    assert rule.ban_seconds(1) == 600
    assert rule.ban_seconds(10_000) == 86400
    assert BanRuleSettings(factor=1).ban_seconds(50) == 600
    with pytest.raises(ValueError, match="max_duration must be at least duration"):
        BanRuleSettings(duration=100, max_duration=50)
    with pytest.raises(ValueError, match="duration must be at least window"):
        BanRuleSettings(window=120, duration=60)

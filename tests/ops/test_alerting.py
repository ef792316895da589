"""Alert rules at run time: signed webhooks to a real receiver (retried, then delivered), one
firing among processes sharing a fast-state store, address counts exact across processes,
and actions that cannot be done recorded as failures."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion.ops.alerting import AlertRunner
from bastion.ops.alerts import Alert
from bastion.ops.alerts import Readings
from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.ops.webhooks import Receiver
from bastion.ops.webhooks import WebhookSender
from bastion.ops.webhooks import backoff_delay
from bastion.ops.webhooks import signature
from bastion.settings import AlertsSettings
from bastion.settings import WebhookSettings
from bastion.storage.fast.sqlite import SQLiteState
from bastion.storage.protocols import FastState
from tests.people.support import fast_state

from .webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.anyio

SECRET = b"webhook-secret-for-tests"
#: The audit event types the tests of this module emit.
ALERT_TYPES = frozenset(
    {"alert.fired", "alert.resolved", "alert.action", "alert.webhook_delivered", "alert.webhook_failed"}
)


@pytest.fixture
def audit(tmp_path: Path) -> tuple[AuditLog, list[AuditEvent]]:
    log = AuditLog(tmp_path / "audit.log")
    seen: list[AuditEvent] = []
    log.listeners.append(seen.append)
    return log, seen


@pytest.fixture(params=["sqlite", "memory", "redis"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastState]:
    """Each fast-state backend: the embedded default (a SQLite file), memory, Redis."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    store = fast_state(request.param, tmp_path, redis_url)
    yield store
    await store.close()  # type: ignore[attr-defined]


def hook(url: str, **options: Any) -> Receiver:
    settings = WebhookSettings.model_validate(
        {"url": url, "secret_env": "UNUSED", "backoff": 0.01, **options}
    )
    return Receiver("ops", settings, SECRET)


def test_the_signature_is_the_hmac_of_timestamp_dot_body() -> None:
    # Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
    assert signature(b"key", "1700000000", b'{"a":1}') == (
        "sha256=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
    )


def test_backoff_doubles_is_capped_and_jittered() -> None:
    assert [backoff_delay(n, 1.0, 5.0, rand=lambda: 0.0) for n in (1, 2, 3, 4, 5)] == [
        0.5,
        1.0,
        2.0,
        2.5,
        2.5,
    ]
    assert [backoff_delay(n, 1.0, 5.0, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


async def test_a_failing_receiver_is_retried_until_it_accepts(
    audit: tuple[AuditLog, list[AuditEvent]],
) -> None:
    log, seen = audit
    receiver = WebhookReceiver(SECRET, fail_first=2)
    sender = WebhookSender({"ops": hook(receiver.url)}, log)
    try:
        sender.start()
        assert sender.send("ops", {"alert_id": "a1", "rule": "r", "status": "firing", "value": 0.5})
        await sender.drain()
    finally:
        await sender.close()
        receiver.close()
    assert receiver.rejected == []
    assert receiver.received == [{"alert_id": "a1", "rule": "r", "status": "firing", "value": 0.5}]
    attempts = [(e.type, e.details["attempt"], e.reason, e.details.get("final")) for e in seen]
    assert attempts == [
        ("alert.webhook_failed", 1, "http_503", False),
        ("alert.webhook_failed", 2, "http_503", False),
        ("alert.webhook_delivered", 3, None, None),
    ]
    assert seen[-1].details["http_status"] == 200
    assert {e.details["alert_id"] for e in seen} == {"a1"}


async def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(
    audit: tuple[AuditLog, list[AuditEvent]],
) -> None:
    log, seen = audit
    receiver = WebhookReceiver(b"the receiver's own secret")
    sender = WebhookSender({"ops": hook(receiver.url)}, log)
    try:
        sender.start()
        sender.send("ops", {"alert_id": "a1", "rule": "r", "status": "firing"})
        await sender.drain()
    finally:
        await sender.close()
        receiver.close()
    assert receiver.rejected == ["bad signature"]
    assert [(e.type, e.reason, e.details["final"]) for e in seen] == [
        ("alert.webhook_failed", "http_401", True)
    ]


async def test_attempts_run_out_and_a_full_queue_drops(audit: tuple[AuditLog, list[AuditEvent]]) -> None:
    log, seen = audit
    # Nothing listens on port 9 (discard) on loopback: every attempt is a connection error.
    sender = WebhookSender({"ops": hook("http://127.0.0.1:9/", attempts=2, queue=1)}, log)
    try:
        sender.start()
        assert sender.send("ops", {"alert_id": "a1", "rule": "r", "status": "firing"})
        assert not sender.send("ops", {"alert_id": "a2", "rule": "r", "status": "firing"})
        await sender.drain()
    finally:
        await sender.close()
    outcomes = [(e.details["alert_id"], e.details["attempt"], e.details["final"], e.reason) for e in seen]
    assert outcomes[0] == ("a2", 0, True, "queue_full")
    assert [o[:3] for o in outcomes[1:]] == [("a1", 1, False), ("a1", 2, True)]
    assert all(o[3].startswith("connection_error") for o in outcomes[1:])


def settings(**rule: Any) -> AlertsSettings:
    base = {"name": "spike", "kind": "http_5xx_ratio", "threshold": 0.5, "min_requests": 4, "cooldown": 60}
    return AlertsSettings.model_validate({"rules": [{**base, **rule}]})


async def test_processes_sharing_a_store_fire_one_alert_between_them(
    audit: tuple[AuditLog, list[AuditEvent]], state: FastState
) -> None:
    log, seen = audit
    counts: dict[tuple[str, int], int] = {}
    config = settings()
    runners = [
        AlertRunner(
            config,
            state=state,
            audit=log,
            read=lambda: Readings(requests={"route": counts}),
            clock=lambda: now,
        )
        for _ in range(3)
    ]
    now = 0.0
    for runner in runners:
        await runner.tick()
    counts[("/api", 500)] = 10
    now = 10.0
    for runner in runners:
        await runner.tick()
    fired = [e for e in seen if e.type == "alert.fired"]
    assert len(fired) == 1
    assert fired[0].details["labels"] == {"route": "/api"}
    assert fired[0].reason == "5xx ratio 1 >= 0.5"
    # Healthy again: only the process that fired reports the resolution.
    counts[("/api", 200)] = 1000
    now = 20.0
    for runner in runners:
        await runner.tick()
    resolved = [e for e in seen if e.type == "alert.resolved"]
    assert [e.details["alert_id"] for e in resolved] == [fired[0].details["alert_id"]]
    # Back within the cool-down: nobody fires, though each process's own state is fresh.
    counts[("/api", 500)] = 5000
    now = 30.0
    for runner in runners:
        await runner.tick()
    assert len([e for e in seen if e.type == "alert.fired"]) == 1


async def test_address_counts_are_shared_and_fire_once_at_the_threshold(
    audit: tuple[AuditLog, list[AuditEvent]], state: FastState
) -> None:
    log, seen = audit
    config = settings(name="burst", kind="auth_failures_per_address", threshold=5, window=30, actions=["ban"])
    a = AlertRunner(config, state=state, audit=log, read=Readings)
    b = AlertRunner(config, state=state, audit=log, read=Readings)
    assert a.watches("auth")
    assert not a.watches("signin")
    for n in range(8):  # alternating processes, 8 failures of one address
        await (a if n % 2 else b).failure("203.0.113.7", "auth")
    await a.failure("198.51.100.1", "auth")
    fired = [e for e in seen if e.type == "alert.fired"]
    assert [(e.address, e.details["value"], e.details["labels"]) for e in fired] == [
        ("203.0.113.7", 5, {"address": "203.0.113.7"})
    ]
    # No ban service in these processes: the action is recorded as failed, with the reason.
    (action,) = [e for e in seen if e.type == "alert.action"]
    assert (action.outcome, action.reason, action.details["target"]) == (
        "failure",
        "no bans in this process",
        "203.0.113.7",
    )
    # The count's window ends: the process that fired reports the resolution.
    await state.delete("alerts:burst:{203.0.113.7}")
    await a.tick()
    await b.tick()
    assert [e.address for e in seen if e.type == "alert.resolved"] == ["203.0.113.7"]


async def test_a_test_firing_sends_the_webhook_but_bans_nothing(
    audit: tuple[AuditLog, list[AuditEvent]], state: FastState
) -> None:
    log, seen = audit
    receiver = WebhookReceiver(SECRET)
    config = AlertsSettings.model_validate(
        {
            "rules": [
                {
                    "name": "burst",
                    "kind": "auth_failures_per_address",
                    "threshold": 5,
                    "actions": ["webhook", "ban"],
                    "webhook": "ops",
                }
            ],
            "webhooks": {"ops": {"url": receiver.url, "secret_env": "UNUSED"}},
        }
    )
    sender = WebhookSender({"ops": hook(receiver.url)}, log)
    runner = AlertRunner(config, state=state, audit=log, read=Readings, webhooks=sender)
    try:
        sender.start()
        await runner.fire(
            Alert("t1", "burst", "auth_failures_per_address", (), 5, 5, 1_700_000_000.0), test=True
        )
        await sender.drain()
    finally:
        await sender.close()
        receiver.close()
    (body,) = receiver.received
    assert body["test"] is True
    assert (body["status"], body["rule"], body["alert_id"], body["time"]) == (
        "firing",
        "burst",
        "t1",
        "2023-11-14T22:13:20.000Z",
    )
    assert [e.type for e in seen] == ["alert.fired", "alert.webhook_delivered"]
    assert json.loads(json.dumps(seen[0].details))["test"] is True


async def test_failed_sign_ins_from_one_address_feed_the_per_address_rule(
    audit: tuple[AuditLog, list[AuditEvent]], state: FastState
) -> None:
    from bastion.cli.alerting import RunningAlerts

    log, seen = audit
    config = settings(name="spray", kind="signin_failures", per="address", threshold=3, window=60)
    runner = AlertRunner(config, state=state, audit=log, read=Readings)
    running = RunningAlerts(runner, WebhookSender({}, log), None, log)
    running.start()
    try:
        for address in ("2001:db8::1", "2001:db8::2", "203.0.113.5", "2001:db8::3"):
            log.emit("login.failed", outcome="failure", address=address, reason="wrong_password")
        await runner.settle()
    finally:
        await running.close()
    (fired,) = [e for e in seen if e.type == "alert.fired"]
    # An IPv6 client counts by its /64: three addresses of one /64 reach the threshold.
    assert (fired.subject, fired.address, fired.details["value"]) == ("spray", "2001:db8::/64", 3)
    assert log.listeners == [seen.append]


async def test_concurrent_failures_over_two_processes_fire_exactly_once(
    audit: tuple[AuditLog, list[AuditEvent]], state: FastState
) -> None:
    log, seen = audit
    config = settings(name="burst", kind="auth_failures_per_address", threshold=5, window=30, actions=["ban"])
    runners = [AlertRunner(config, state=state, audit=log, read=Readings) for _ in range(2)]
    await asyncio.gather(*(runners[n % 2].failure("203.0.113.7", "auth") for n in range(40)))
    fired = [e for e in seen if e.type == "alert.fired"]
    assert [(e.address, e.details["value"]) for e in fired] == [("203.0.113.7", 5)]
    assert int(await state.get("alerts:burst:{203.0.113.7}") or b"0") == 40


async def test_a_store_failing_mid_run_neither_raises_nor_silences_an_alert(
    audit: tuple[AuditLog, list[AuditEvent]], tmp_path: Path
) -> None:
    """The state file loses its tables under a running runner: a failure that cannot be counted
    is logged and dropped (never an exception into the request that reported it); a periodic
    rule that cannot claim its firing in the store fires here rather than not at all."""
    log, seen = audit
    path = tmp_path / "broken.db"
    state = SQLiteState(path)
    try:
        counts: dict[tuple[str, int], int] = {}
        address = settings(name="burst", kind="auth_failures_per_address", threshold=2, window=30)
        spike = settings()
        now = 0.0
        by_address = AlertRunner(address, state=state, audit=log, read=Readings)
        by_ratio = AlertRunner(
            spike,
            state=state,
            audit=log,
            read=lambda: Readings(requests={"route": counts}),
            clock=lambda: now,
        )
        await by_ratio.tick()  # the baseline, while the store works
        await by_address.failure("203.0.113.7", "auth")
        wipe = sqlite3.connect(path)
        wipe.executescript("DROP TABLE kv;")
        wipe.close()
        await by_address.failure("203.0.113.7", "auth")  # uncountable: logged, not raised
        assert [e for e in seen if e.type == "alert.fired"] == []
        counts[("/api", 500)] = 10
        now = 10.0
        await by_ratio.tick()
        fired = [e for e in seen if e.type == "alert.fired"]
        assert [(e.subject, e.details["labels"]) for e in fired] == [("spike", {"route": "/api"})]
    finally:
        await state.close()

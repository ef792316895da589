"""The audit record and its writer: one schema, request scope, secrets refused, a file that
survives rotation, and batches to the durable store that survive a store outage."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import get_args

import pytest

from bastion.ops.audit import AuditLog
from bastion.ops.audit_events import EVENT_TYPES
from bastion.ops.audit_events import EventType
from bastion.ops.audit_events import RequestScope
from bastion.ops.audit_events import request_scope
from bastion.ops.audit_events import reset_scope
from bastion.storage.audit_protocols import AuditEvent
from bastion.storage.audit_protocols import AuditQuery
from bastion.storage.audit_protocols import parse_rfc3339
from bastion.storage.audit_protocols import rfc3339
from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).parents[2] / "docs" / "audit.md"
FIELDS = [
    "time",
    "ts",
    "type",
    "outcome",
    "actor",
    "subject",
    "client",
    "address",
    "reason",
    "request_id",
    "trace_id",
    "details",
]


class Clock:
    def __init__(self, now: float = 1_738_324_800.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_types_the_code_accepts_are_the_types_documented() -> None:
    documented = re.findall(r"^\| `([a-z_.]+)` \| (?:success|failure|denied)", DOCS.read_text(), re.M)
    assert documented == list(EVENT_TYPES)
    assert list(get_args(EventType)) == list(EVENT_TYPES)
    for field in FIELDS:
        assert f"| `{field}` |" in DOCS.read_text()


def test_a_record_is_every_field_with_rfc3339_time_and_reads_back() -> None:
    event = AuditEvent(1_738_324_800.5, "token.issued", "success", "svc", "svc", "svc", details={"jti": "j"})
    line = event.as_dict()
    assert list(line) == FIELDS
    assert line["time"] == "2025-01-31T12:00:00.500Z"
    assert line["ts"] == 1_738_324_800.5
    assert line["address"] is None
    assert AuditEvent.from_dict(json.loads(json.dumps(line))) == event
    with pytest.raises(ValueError, match="outcome"):
        AuditEvent.from_dict({**line, "outcome": "maybe"})
    with pytest.raises(ValueError, match="not an audit event"):
        AuditEvent.from_dict({"type": "token.issued"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-31T12:00:00Z", 1_738_324_800.0),
        ("2025-01-31T12:00:00.250z", 1_738_324_800.25),
        ("2025-01-31T14:00:00+02:00", 1_738_324_800.0),
        ("2025-01-31", 1_738_281_600.0),
    ],
)
def test_rfc3339_times_parse(text: str, expected: float) -> None:
    assert parse_rfc3339(text) == expected
    assert parse_rfc3339(rfc3339(expected)) == expected


@pytest.mark.parametrize("text", ["2025-01-31T12:00:00", "31/01/2025", "", "now"])
def test_times_without_a_zone_or_malformed_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_emit_fills_the_request_and_the_default_actor(tmp_path: Path) -> None:
    clock = Clock()
    audit = AuditLog(tmp_path / "a.log", default_actor="cli", clock=clock)
    heard: list[AuditEvent] = []
    audit.listeners.append(heard.append)
    audit.emit("user.created", subject="u1", details={"roles": ["reader"]})
    token = request_scope(RequestScope(request_id="r-1", address="203.0.113.9"))
    try:
        audit.emit("login.failed", outcome="failure", reason="wrong_password")
        scope = RequestScope(request_id="r-2", address="203.0.113.9", client="svc", actor="svc")
        inner = request_scope(scope)
        audit.emit("token.revoked", details={"jti": "j"})
        audit.emit("token.issued", actor="other", client="mine", address="192.0.2.1")
        reset_scope(inner)
    finally:
        reset_scope(token)
    assert [(e.actor, e.client, e.address, e.request_id) for e in heard] == [
        ("cli", None, None, None),
        ("anonymous", None, "203.0.113.9", "r-1"),
        ("svc", "svc", "203.0.113.9", "r-2"),
        ("other", "mine", "192.0.2.1", "r-2"),
    ]
    assert {e.time for e in heard} == {clock.now}


def test_unknown_types_and_secret_details_are_refused(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.log")
    with pytest.raises(ValueError, match="unknown audit event type"):
        audit.emit("token.stolen")  # type: ignore[arg-type]
    for key in ("refresh_token", "client_secret", "password", "code", "id_token"):
        with pytest.raises(ValueError, match="must not hold"):
            audit.emit("token.issued", details={key: "x"})
    audit.flush()
    assert not (tmp_path / "a.log").exists(), "nothing was recorded"


def test_the_file_is_reopened_after_logrotate_moves_it(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    audit = AuditLog(path, flush_every=2)
    audit.emit("role.created", subject="a")
    assert not path.exists(), "buffered"
    audit.emit("role.created", subject="b")
    assert len(path.read_text().splitlines()) == 2, "flushed at flush_every"
    path.rename(tmp_path / "logs" / "audit.log.1")
    audit.emit("role.deleted", subject="a")
    audit.flush()
    assert [json.loads(line)["type"] for line in path.read_text().splitlines()] == ["role.deleted"]
    assert len((tmp_path / "logs" / "audit.log.1").read_text().splitlines()) == 2
    path.unlink()
    audit.emit("role.deleted", subject="b")
    audit.flush()
    assert len(path.read_text().splitlines()) == 1


def test_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    audit = AuditLog("-")
    audit.emit("role.created", subject="a")
    audit.flush()
    assert json.loads(capsys.readouterr().out)["subject"] == "a"


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[Stores]:
    stores = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", "memory://")
    yield stores
    await stores.close()


async def test_a_store_outage_keeps_the_batch_for_the_next_round(
    sqlite_stores: Stores, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path / "a.log", store=sqlite_stores.audit)
    audit.emit("user.created", subject="u1")
    await audit.drain()  # not migrated: the table is missing, the insert fails
    assert len((tmp_path / "a.log").read_text().splitlines()) == 1, "the file has it"
    await migrate(sqlite_stores.db)
    audit.emit("user.deleted", subject="u1")
    await audit.drain()
    found = await sqlite_stores.audit.search(AuditQuery())
    assert [item.event.type for item in found] == ["user.created", "user.deleted"]
    await audit.drain()
    assert len(await sqlite_stores.audit.search(AuditQuery())) == 2, "written once"


async def test_the_queue_for_the_store_is_bounded(sqlite_stores: Stores, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.log", store=sqlite_stores.audit, max_pending=3)
    for index in range(5):
        audit.emit("role.created", subject=f"r{index}")
    await audit.drain()  # fails: not migrated
    await migrate(sqlite_stores.db)
    await audit.close()
    found = await sqlite_stores.audit.search(AuditQuery())
    assert [item.event.subject for item in found] == ["r2", "r3", "r4"], "the oldest went"
    assert len((tmp_path / "a.log").read_text().splitlines()) == 5


async def test_the_flusher_writes_both_sinks_without_being_asked_and_prunes(
    sqlite_stores: Stores, tmp_path: Path
) -> None:
    await migrate(sqlite_stores.db)
    clock = Clock()
    audit = AuditLog(
        tmp_path / "a.log", store=sqlite_stores.audit, retention=3600, flush_interval=0.02, clock=clock
    )
    await sqlite_stores.audit.append([AuditEvent(clock.now - 7200, "role.created", "success", "cli", "old")])
    audit.start()
    audit.emit("role.created", subject="new")
    for _ in range(200):
        found = await sqlite_stores.audit.search(AuditQuery())
        if [item.event.subject for item in found] == ["new"]:
            break
        await asyncio.sleep(0.01)
    assert [item.event.subject for item in found] == ["new"], "written, and the old row pruned"
    assert (tmp_path / "a.log").read_text().count('"subject":"new"') == 1
    await audit.close()
    assert await audit.prune() == 0

"""The durable audit store on SQLite and PostgreSQL: batch writes, every filter, paging, pruning,
and values a column cannot hold as given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bastion.ops.audit import BATCH
from bastion.ops.audit import AuditLog
from bastion.storage.audit_protocols import AuditEvent
from bastion.storage.audit_protocols import AuditQuery
from bastion.storage.open import Stores
from bastion.storage.sql.schema import metadata
from bastion.storage.sql.schema_audit import audit_events

pytestmark = pytest.mark.anyio

T0 = 1_738_324_800.0
EVENTS = [
    AuditEvent(T0, "login.failed", "failure", "anonymous", "u1", "web", "203.0.113.7", "wrong_password"),
    AuditEvent(T0 + 1, "login_sessions.ended", "success", "cli", "u1", details={"count": 2}),
    AuditEvent(T0 + 2, "token.issued", "success", "web", "u1", "web", request_id="r1", details={"jti": "j"}),
    AuditEvent(T0 + 3, "login.succeeded", "success", "u1", "u1", "shop"),
    AuditEvent(
        T0 + 4, "key.created", "success", "system", "kid1", reason="first_key", details={"alg": "ES256"}
    ),
]


async def test_the_migration_creates_the_table_the_code_uses(stores: Stores) -> None:
    def diff(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(sync_conn)
        return [d for d in compare_metadata(context, metadata) if "audit_events" in repr(d)]

    async with stores.db.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    assert "audit_events" in metadata.tables
    assert audit_events.c.details.nullable is False


async def test_events_read_back_as_written_with_every_filter(stores: Stores) -> None:
    audit = stores.audit
    await audit.append(EVENTS)
    await audit.append([])

    async def found(**query: Any) -> list[str]:
        return [item.event.type for item in await audit.search(AuditQuery(**query))]

    assert [item.event for item in await audit.search(AuditQuery())] == EVENTS
    assert await found(since=T0 + 1, until=T0 + 3) == ["login_sessions.ended", "token.issued"]
    assert await found(types=("login.*",)) == ["login.failed", "login.succeeded"], "not login_sessions"
    assert await found(types=("login_*",)) == ["login_sessions.ended"], "_ is no wildcard"
    assert await found(types=("token.issued", "key.created")) == ["token.issued", "key.created"]
    assert await found(subject="u1", client="web") == ["login.failed", "token.issued"]
    assert await found(limit=2, newest_first=True) == ["key.created", "login.succeeded"]
    page = await audit.search(AuditQuery(limit=2))
    after = (page[-1].event.time, page[-1].id)
    assert await found(limit=2, after=after) == ["token.issued", "login.succeeded"]


async def test_old_events_are_pruned(stores: Stores) -> None:
    await stores.audit.append(EVENTS)
    assert await stores.audit.prune(T0 + 2) == 2
    assert [item.event.time for item in await stores.audit.search(AuditQuery())] == [T0 + 2, T0 + 3, T0 + 4]
    assert await stores.audit.prune(T0) == 0


async def test_values_too_long_or_holding_nul_are_cut_not_refused(stores: Stores) -> None:
    odd = AuditEvent(
        T0,
        "client.auth_throttled",
        "denied",
        "anonymous",
        "x" * 400,
        "c\x00lient",
        "a" * 100,
        "why\x00not",
        details={"description": "nul \x00 inside"},
    )
    await stores.audit.append([odd])
    [item] = await stores.audit.search(AuditQuery())
    assert item.event.subject == "x" * 255
    assert item.event.client == "client"
    assert item.event.address == "a" * 64
    assert item.event.reason == "whynot"
    assert item.event.details == {"description": "nul \x00 inside"}


async def test_the_audit_log_batches_into_the_store(stores: Stores, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log", store=stores.audit, default_actor="cli")
    for index in range(BATCH + 5):  # two inserts
        audit.emit("token.issued", actor="svc", subject="svc", client="svc", details={"jti": f"j{index}"})
    assert await stores.audit.search(AuditQuery()) == [], "nothing before the flusher runs"
    await audit.close()
    found = await stores.audit.search(AuditQuery())
    assert [item.event.details["jti"] for item in found] == [f"j{index}" for index in range(BATCH + 5)]
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert [AuditEvent.from_dict(json.loads(line)) for line in lines] == [item.event for item in found]

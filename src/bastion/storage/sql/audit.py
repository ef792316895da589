"""Audit events in the durable store (:class:`~bastion.storage.audit_protocols.AuditStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import ColumnElement
from sqlalchemy import and_
from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import or_
from sqlalchemy import select

from bastion.storage.audit_protocols import AuditEvent
from bastion.storage.audit_protocols import AuditQuery
from bastion.storage.audit_protocols import Found
from bastion.storage.sql.engine import Database
from bastion.storage.sql.schema_audit import WIDTHS
from bastion.storage.sql.schema_audit import audit_events


def _fit(value: str | None, width: int | None = None) -> str | None:
    """``value`` as both engines store it: no NUL (PostgreSQL refuses it in text), at most
    ``width`` characters."""
    if value is None:
        return None
    value = value.replace("\x00", "")
    return value if width is None else value[:width]


def _row(event: AuditEvent) -> dict[str, Any]:
    return {
        "time": round(event.time, 3),  # as the JSON line has it (ts)
        "type": _fit(event.type, WIDTHS["type"]),
        "outcome": event.outcome,
        "actor": _fit(event.actor, WIDTHS["actor"]),
        "subject": _fit(event.subject, WIDTHS["subject"]),
        "client": _fit(event.client, WIDTHS["client"]),
        "address": _fit(event.address, WIDTHS["address"]),
        "reason": _fit(event.reason),
        "request_id": _fit(event.request_id, WIDTHS["request_id"]),
        "trace_id": _fit(event.trace_id, WIDTHS["trace_id"]),
        # \u0000 escaped by JSON is fine for both engines; a raw NUL cannot occur in JSON text.
        "details": orjson.dumps(event.details, default=str).decode(),
    }


def _event(row: Any) -> AuditEvent:
    return AuditEvent(
        time=row.time,
        type=row.type,
        outcome=row.outcome,
        actor=row.actor,
        subject=row.subject,
        client=row.client,
        address=row.address,
        reason=row.reason,
        request_id=row.request_id,
        trace_id=row.trace_id,
        details=orjson.loads(row.details),
    )


def _type_filter(types: Sequence[str]) -> ColumnElement[bool]:
    column = audit_events.c.type
    clauses: list[ColumnElement[bool]] = []
    for wanted in types:
        if wanted.endswith("*"):
            prefix = wanted[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(column.like(prefix + "%", escape="\\"))
        else:
            clauses.append(column == wanted)
    return or_(*clauses)


class SQLAuditStore:
    """:class:`~bastion.storage.audit_protocols.AuditStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        async with self._db.write() as conn:
            await conn.execute(insert(audit_events), [_row(event) for event in events])

    async def search(self, query: AuditQuery) -> Sequence[Found]:
        table = audit_events
        statement = select(table)
        if query.since is not None:
            statement = statement.where(table.c.time >= query.since)
        if query.until is not None:
            statement = statement.where(table.c.time < query.until)
        if query.types:
            statement = statement.where(_type_filter(query.types))
        if query.subject is not None:
            statement = statement.where(table.c.subject == query.subject)
        if query.client is not None:
            statement = statement.where(table.c.client == query.client)
        if query.after is not None:
            time, row_id = query.after
            statement = statement.where(
                or_(table.c.time > time, and_(table.c.time == time, table.c.id > row_id))
            )
        if query.newest_first:
            statement = statement.order_by(table.c.time.desc(), table.c.id.desc())
        else:
            statement = statement.order_by(table.c.time, table.c.id)
        if query.limit is not None:
            statement = statement.limit(query.limit)
        async with self._db.read() as conn:
            rows = (await conn.execute(statement)).all()
        return [Found(row.id, _event(row)) for row in rows]

    async def prune(self, before: float) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(delete(audit_events).where(audit_events.c.time < before))
        return int(result.rowcount or 0)

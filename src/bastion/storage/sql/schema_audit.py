"""The audit trail's durable record, on the shared ``metadata`` (migration ``0006``).

Importing this module adds the table to :data:`bastion.storage.sql.schema.metadata`.
"""

from __future__ import annotations

from sqlalchemy import BigInteger
from sqlalchemy import Column
from sqlalchemy import Float
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import Text

from bastion.storage.sql.schema import metadata

#: Column widths, which :class:`~bastion.storage.sql.audit.SQLAuditStore` cuts values to.
WIDTHS = {
    "type": 64,
    "outcome": 8,
    "actor": 255,
    "subject": 255,
    "client": 255,
    "address": 64,
    "request_id": 128,
    "trace_id": 32,
}

audit_events = Table(
    "audit_events",
    metadata,
    # BIGINT on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("type", String(WIDTHS["type"]), nullable=False),
    Column("outcome", String(WIDTHS["outcome"]), nullable=False),
    Column("actor", String(WIDTHS["actor"]), nullable=False),
    Column("subject", String(WIDTHS["subject"]), nullable=True),
    Column("client", String(WIDTHS["client"]), nullable=True),
    Column("address", String(WIDTHS["address"]), nullable=True),
    Column("reason", Text, nullable=True),
    Column("request_id", String(WIDTHS["request_id"]), nullable=True),
    #: Added by migration ``0008``.
    Column("trace_id", String(WIDTHS["trace_id"]), nullable=True),
    #: Compact JSON text.
    Column("details", Text, nullable=False),
    Index("ix_audit_events_time", "time"),
    Index("ix_audit_events_type_time", "type", "time"),
    Index("ix_audit_events_subject_time", "subject", "time"),
    Index("ix_audit_events_client_time", "client", "time"),
)

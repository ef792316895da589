"""The gateway's address bans, on the shared ``metadata`` (migration ``0005``).

Importing this module adds the table to :data:`bastion.storage.sql.schema.metadata`.
"""

from __future__ import annotations

from sqlalchemy import Column
from sqlalchemy import Float
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import Text

from bastion.storage.sql.schema import metadata

bans = Table(
    "bans",
    metadata,
    #: Canonical network text: an IPv4 address, an IPv6 /64, or an operator's CIDR.
    Column("network", String(64), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("source", String(8), nullable=False),
    Column("kind", String(16), nullable=True),
    Column("since", Float, nullable=False),
    Column("until", Float, nullable=False),
    Column("repeat", Integer, nullable=False),
    Index("ix_bans_until", "until"),
)

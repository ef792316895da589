"""Tables for people (users, roles, consents, refresh-token families, the login-session index),
on the shared ``metadata``.

Importing this module adds the tables to :data:`bastion.storage.sql.schema.metadata`; migration
``0002`` creates them (``0003`` the login-session index). Passwords are argon2id PHC strings; refresh tokens are stored by keyed
hash, and the sealed successor response kept for the grace window is AES-GCM encrypted.
"""

from __future__ import annotations

from sqlalchemy import Boolean
from sqlalchemy import Column
from sqlalchemy import Float
from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import LargeBinary
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import Text

from bastion.storage.sql.schema import metadata

users = Table(
    "users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("username", String(200), nullable=False),
    #: ``username.casefold()``: unique, so "Alice" and "alice" are one account.
    Column("username_key", String(200), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("email", String(320), nullable=True),
    Column("name", String(200), nullable=True),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

roles = Table(
    "roles",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("scopes", Text, nullable=False),
    Column("description", Text, nullable=False),
)

user_roles = Table(
    "user_roles",
    metadata,
    Column("user_id", String(64), ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True),
    Column("role_name", String(128), ForeignKey("roles.name", ondelete="CASCADE"), primary_key=True),
)

consents = Table(
    "consents",
    metadata,
    Column("user_id", String(64), ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True),
    Column("client_id", String(128), primary_key=True),
    Column("scopes", Text, nullable=False),
    Column("granted_at", Float, nullable=False),
)

refresh_families = Table(
    "refresh_families",
    metadata,
    Column("family_id", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("subject", String(64), nullable=False),
    Column("scope", Text, nullable=False),
    Column("sid", String(64), nullable=False),
    Column("auth_time", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("absolute_expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Index("ix_refresh_families_subject", "subject"),
    Index("ix_refresh_families_absolute_expires_at", "absolute_expires_at"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(128), primary_key=True),
    Column(
        "family_id",
        String(64),
        ForeignKey("refresh_families.family_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("rotated_at", Float, nullable=True),
    Column("successor_response", LargeBinary, nullable=True),
    Index("ix_refresh_tokens_family_id", "family_id"),
    Index("ix_refresh_tokens_expires_at", "expires_at"),
)

#: The login sessions alive, by user: the durable truth of which ``sid`` may still be used (the
#: fast-state ``sid:<sid>`` key is its cache), so a password reset, a disable or a delete can end
#: every session of a user, whichever process or fast-state store holds them.
login_sessions = Table(
    "login_sessions",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_login_sessions_user_id", "user_id"),
    Index("ix_login_sessions_expires_at", "expires_at"),
)

"""Tables of the durable store (SQLAlchemy Core), shared by SQLite and PostgreSQL.

JSON-ish columns hold compact JSON text so both engines read them the same way. Times are
POSIX seconds as floats. Secrets never appear: clients and tokens are stored by keyed hash,
private keys encrypted.
"""

from __future__ import annotations

from sqlalchemy import Boolean
from sqlalchemy import Column
from sqlalchemy import Float
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import LargeBinary
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import Text
from sqlalchemy import UniqueConstraint

metadata = MetaData()

clients = Table(
    "clients",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("public", Boolean, nullable=False),
    Column("secret_hash", String(128), nullable=True),
    Column("grant_types", Text, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("redirect_uris", Text, nullable=False),
    Column("post_logout_redirect_uris", Text, nullable=False),
    Column("audience", String(500), nullable=True),
    Column("token_format", String(16), nullable=False),
    Column("first_party", Boolean, nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The secret replaced by a rotation with an overlap, accepted until it expires (0009).
    Column("previous_secret_hash", String(128), nullable=True),
    Column("previous_secret_expires_at", Float, nullable=True),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(128), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("use", String(8), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("private_key", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("activates_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    UniqueConstraint("alg", "generation", name="uq_signing_keys_alg_generation"),
)

#: Secrets the KEK seals that are not signing keys, by name. ``secret-hash`` is the key of the
#: keyed hashes (client secrets, refresh tokens, codes), carried across KEK rotations.
sealed_secrets = Table(
    "sealed_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
)

access_tokens = Table(
    "access_tokens",
    metadata,
    Column("token_hash", String(128), primary_key=True),
    Column("jti", String(64), nullable=False),
    Column("client_id", String(128), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("scope", Text, nullable=False),
    Column("audience", Text, nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("family_id", String(64), nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("claims", Text, nullable=False),
    Index("ix_access_tokens_expires_at", "expires_at"),
    Index("ix_access_tokens_family_id", "family_id"),
)

revoked_jtis = Table(
    "revoked_jtis",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=False),
    Index("ix_revoked_jtis_expires_at", "expires_at"),
    # Incremental polls of the revocation list (POST /revocations) read by revocation time.
    Index("ix_revoked_jtis_revoked_at", "revoked_at"),
)

#: JWT access tokens issued from a refresh-token family, so revoking the family revokes them.
family_jtis = Table(
    "family_jtis",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("family_id", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_family_jtis_family_id", "family_id"),
)

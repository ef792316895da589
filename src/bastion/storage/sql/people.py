"""Users, roles, consents and refresh-token families in the durable store (SQLite, PostgreSQL).

The refresh rotation is the one place where concurrency matters: :meth:`SQLRefreshStore.rotate`
is a single conditional ``UPDATE`` whose row count decides, inside the write transaction that
also inserts the successor. On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (writers
queue); on PostgreSQL the ``UPDATE`` takes the row lock and a concurrent one re-checks
``rotated_at IS NULL`` after the winner commits (READ COMMITTED re-evaluation), so it matches no
row.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_
from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from bastion.protocol.models import Role
from bastion.protocol.models import User
from bastion.protocol.rfc6749.grants.refresh_token import RefreshFamily
from bastion.protocol.rfc6749.grants.refresh_token import RefreshToken
from bastion.storage.people_protocols import Consent
from bastion.storage.people_protocols import LoginSession
from bastion.storage.people_protocols import StoredRefresh
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import NotFound
from bastion.storage.sql.engine import Database
from bastion.storage.sql.schema_people import consents
from bastion.storage.sql.schema_people import login_sessions
from bastion.storage.sql.schema_people import refresh_families
from bastion.storage.sql.schema_people import refresh_tokens
from bastion.storage.sql.schema_people import roles
from bastion.storage.sql.schema_people import user_roles
from bastion.storage.sql.schema_people import users


def _json(values: Iterable[str]) -> str:
    return orjson.dumps(sorted(set(values))).decode()


def _user_row(user: User) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "username": user.username,
        "username_key": user.username.casefold(),
        "password_hash": user.password_hash,
        "email": user.email,
        "name": user.name,
        "disabled": user.disabled,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


class SQLUserStore:
    """:class:`~bastion.storage.people_protocols.UserStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _roles_of(self, conn: AsyncConnection, user_ids: list[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {user_id: set() for user_id in user_ids}
        if user_ids:
            rows = await conn.execute(select(user_roles).where(user_roles.c.user_id.in_(user_ids)))
            for row in rows:
                found[row.user_id].add(row.role_name)
        return found

    async def _load(self, conn: AsyncConnection, rows: Sequence[Any]) -> list[User]:
        role_map = await self._roles_of(conn, [row.user_id for row in rows])
        return [
            User(
                user_id=row.user_id,
                username=row.username,
                password_hash=row.password_hash,
                email=row.email,
                name=row.name,
                roles=frozenset(role_map[row.user_id]),
                disabled=row.disabled,
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
            for row in rows
        ]

    async def create_user(self, user: User) -> None:
        async with self._db.write() as conn:
            await conn.execute(insert(users).values(**_user_row(user)))
            if user.roles:
                await conn.execute(
                    insert(user_roles),
                    [{"user_id": user.user_id, "role_name": r} for r in sorted(user.roles)],
                )

    async def _one(self, where: Any) -> User | None:
        async with self._db.read() as conn:
            rows = (await conn.execute(select(users).where(where))).all()
            loaded = await self._load(conn, rows)
        return loaded[0] if loaded else None

    async def get_user(self, user_id: str) -> User | None:
        return await self._one(users.c.user_id == user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        return await self._one(users.c.username_key == username.casefold())

    async def list_users(self) -> Sequence[User]:
        async with self._db.read() as conn:
            rows = (await conn.execute(select(users).order_by(users.c.created_at, users.c.user_id))).all()
            return await self._load(conn, rows)

    async def update_user(self, user: User) -> None:
        async with self._db.write() as conn:
            values = _user_row(user)
            del values["user_id"], values["created_at"]
            result = await conn.execute(update(users).where(users.c.user_id == user.user_id).values(**values))
            if result.rowcount != 1:
                raise NotFound(f"no user {user.user_id!r}")
            await conn.execute(delete(user_roles).where(user_roles.c.user_id == user.user_id))
            if user.roles:
                await conn.execute(
                    insert(user_roles),
                    [{"user_id": user.user_id, "role_name": r} for r in sorted(user.roles)],
                )

    async def delete_user(self, user_id: str) -> bool:
        async with self._db.write() as conn:
            # Explicit deletes: foreign-key cascades are not relied on for correctness.
            await conn.execute(delete(user_roles).where(user_roles.c.user_id == user_id))
            await conn.execute(delete(consents).where(consents.c.user_id == user_id))
            result = await conn.execute(delete(users).where(users.c.user_id == user_id))
        return bool(result.rowcount)


def _role(row: Any) -> Role:
    return Role(name=row.name, scopes=frozenset(orjson.loads(row.scopes)), description=row.description)


class SQLRoleStore:
    """:class:`~bastion.storage.people_protocols.RoleStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_role(self, role: Role) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                insert(roles).values(name=role.name, scopes=_json(role.scopes), description=role.description)
            )

    async def get_roles(self, names: Iterable[str]) -> Sequence[Role]:
        wanted = sorted(set(names))
        if not wanted:
            return []
        async with self._db.read() as conn:
            rows = await conn.execute(select(roles).where(roles.c.name.in_(wanted)).order_by(roles.c.name))
            return [_role(row) for row in rows]

    async def list_roles(self) -> Sequence[Role]:
        async with self._db.read() as conn:
            return [_role(row) for row in await conn.execute(select(roles).order_by(roles.c.name))]

    async def delete_role(self, name: str) -> bool:
        async with self._db.write() as conn:
            await conn.execute(delete(user_roles).where(user_roles.c.role_name == name))
            result = await conn.execute(delete(roles).where(roles.c.name == name))
        return bool(result.rowcount)


class SQLConsentStore:
    """:class:`~bastion.storage.people_protocols.ConsentStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_consent(self, user_id: str, client_id: str) -> Consent | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(consents).where(consents.c.user_id == user_id, consents.c.client_id == client_id)
                )
            ).first()
        if row is None:
            return None
        return Consent(user_id, client_id, frozenset(orjson.loads(row.scopes)), row.granted_at)

    async def grant_consent(self, user_id: str, client_id: str, scopes: Iterable[str], now: float) -> Consent:
        wanted = frozenset(scopes)
        for attempt in range(2):
            try:
                return await self._merge(user_id, client_id, wanted, now)
            except Conflict:
                if attempt:  # a concurrent first grant won twice in a row: give up loudly
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _merge(self, user_id: str, client_id: str, wanted: frozenset[str], now: float) -> Consent:
        key = and_(consents.c.user_id == user_id, consents.c.client_id == client_id)
        async with self._db.write() as conn:
            # FOR UPDATE: on PostgreSQL two merges must not both read the old set (lost update);
            # SQLite's BEGIN IMMEDIATE already serialises writers and ignores the clause.
            row = (await conn.execute(select(consents.c.scopes).where(key).with_for_update())).first()
            if row is None:
                merged = wanted
                await conn.execute(
                    insert(consents).values(
                        user_id=user_id, client_id=client_id, scopes=_json(merged), granted_at=now
                    )
                )
            else:
                merged = wanted | frozenset(orjson.loads(row.scopes))
                await conn.execute(update(consents).where(key).values(scopes=_json(merged), granted_at=now))
        return Consent(user_id, client_id, merged, now)

    async def revoke_consent(self, user_id: str, client_id: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(consents).where(consents.c.user_id == user_id, consents.c.client_id == client_id)
            )
        return bool(result.rowcount)

    async def list_consents(self, user_id: str) -> Sequence[Consent]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(consents).where(consents.c.user_id == user_id).order_by(consents.c.client_id)
            )
            return [
                Consent(row.user_id, row.client_id, frozenset(orjson.loads(row.scopes)), row.granted_at)
                for row in rows
            ]


def _family(row: Any) -> RefreshFamily:
    return RefreshFamily(
        family_id=row.family_id,
        client_id=row.client_id,
        subject=row.subject,
        scope=tuple(orjson.loads(row.scope)),
        sid=row.sid,
        auth_time=row.auth_time,
        created_at=row.created_at,
        absolute_expires_at=row.absolute_expires_at,
        revoked_at=row.revoked_at,
    )


def _token_row(token: RefreshToken) -> dict[str, Any]:
    return {
        "token_hash": token.token_hash,
        "family_id": token.family_id,
        "issued_at": token.issued_at,
        "expires_at": token.expires_at,
        "rotated_at": token.rotated_at,
    }


class SQLRefreshStore:
    """:class:`~bastion.storage.people_protocols.RefreshStore` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_family(self, family: RefreshFamily, token: RefreshToken) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                insert(refresh_families).values(
                    family_id=family.family_id,
                    client_id=family.client_id,
                    subject=family.subject,
                    # Order matters for the token response's scope; keep the grant's order.
                    scope=orjson.dumps(list(family.scope)).decode(),
                    sid=family.sid,
                    auth_time=family.auth_time,
                    created_at=family.created_at,
                    absolute_expires_at=family.absolute_expires_at,
                    revoked_at=family.revoked_at,
                )
            )
            await conn.execute(insert(refresh_tokens).values(**_token_row(token)))

    async def find(self, token_hash: str) -> StoredRefresh | None:
        query = (
            select(refresh_tokens, refresh_families)
            .join(refresh_families, refresh_families.c.family_id == refresh_tokens.c.family_id)
            .where(refresh_tokens.c.token_hash == token_hash)
        )
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        token = RefreshToken(
            token_hash=row.token_hash,
            family_id=row.family_id,
            issued_at=row.issued_at,
            expires_at=row.expires_at,
            rotated_at=row.rotated_at,
        )
        return StoredRefresh(token=token, family=_family(row), successor_response=row.successor_response)

    async def rotate(
        self, token_hash: str, successor: RefreshToken, sealed_response: bytes, now: float
    ) -> bool:
        live_family = (
            select(refresh_families.c.family_id)
            .where(
                refresh_families.c.family_id == successor.family_id, refresh_families.c.revoked_at.is_(None)
            )
            .scalar_subquery()
        )
        async with self._db.write() as conn:
            # The one conditional UPDATE that decides (see the module docstring).
            result = await conn.execute(
                update(refresh_tokens)
                .where(
                    refresh_tokens.c.token_hash == token_hash,
                    refresh_tokens.c.rotated_at.is_(None),
                    refresh_tokens.c.family_id == live_family,
                )
                .values(rotated_at=now, successor_response=sealed_response)
            )
            if result.rowcount != 1:
                return False
            await conn.execute(insert(refresh_tokens).values(**_token_row(successor)))
        return True

    async def revoke_family(self, family_id: str, now: float) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                update(refresh_families)
                .where(refresh_families.c.family_id == family_id, refresh_families.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            # Sealed responses of a revoked family must never be replayed.
            await conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.family_id == family_id)
                .values(successor_response=None)
            )
        return bool(result.rowcount)

    async def revoke_subject(self, subject: str, now: float, client_id: str | None = None) -> Sequence[str]:
        live = select(refresh_families.c.family_id).where(
            refresh_families.c.subject == subject, refresh_families.c.revoked_at.is_(None)
        )
        if client_id is not None:
            live = live.where(refresh_families.c.client_id == client_id)
        async with self._db.write() as conn:
            ids = [row.family_id for row in await conn.execute(live)]
            if ids:
                await conn.execute(
                    update(refresh_families)
                    .where(refresh_families.c.family_id.in_(ids))
                    .values(revoked_at=now)
                )
                await conn.execute(
                    update(refresh_tokens)
                    .where(refresh_tokens.c.family_id.in_(ids))
                    .values(successor_response=None)
                )
        return ids

    async def purge_expired(self, now: float, *, keep_responses: float) -> int:
        async with self._db.write() as conn:
            dead = select(refresh_families.c.family_id).where(refresh_families.c.absolute_expires_at < now)
            changed = (
                await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.family_id.in_(dead)))
            ).rowcount
            changed += (
                await conn.execute(
                    delete(refresh_families).where(refresh_families.c.absolute_expires_at < now)
                )
            ).rowcount
            changed += (
                await conn.execute(
                    delete(refresh_tokens).where(
                        refresh_tokens.c.expires_at < now,
                        # A rotated token is kept (without its response) while its family
                        # lives, so presenting it later is still recognised as reuse.
                        refresh_tokens.c.rotated_at.is_(None),
                    )
                )
            ).rowcount
            changed += (
                await conn.execute(
                    update(refresh_tokens)
                    .where(
                        refresh_tokens.c.rotated_at < now - keep_responses,
                        refresh_tokens.c.successor_response.is_not(None),
                    )
                    .values(successor_response=None)
                )
            ).rowcount
        return int(changed)


class SQLLoginSessionIndex:
    """:class:`~bastion.storage.people_protocols.LoginSessionIndex` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_session(self, sid: str, user_id: str, now: float, expires_at: float) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                insert(login_sessions).values(sid=sid, user_id=user_id, created_at=now, expires_at=expires_at)
            )

    async def session_alive(self, sid: str, now: float) -> bool:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(login_sessions.c.sid).where(
                        login_sessions.c.sid == sid, login_sessions.c.expires_at > now
                    )
                )
            ).first()
        return row is not None

    async def end_session(self, sid: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(delete(login_sessions).where(login_sessions.c.sid == sid))
        return bool(result.rowcount)

    async def user_sessions(self, user_id: str, now: float) -> Sequence[LoginSession]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(login_sessions)
                .where(login_sessions.c.user_id == user_id, login_sessions.c.expires_at > now)
                .order_by(login_sessions.c.created_at, login_sessions.c.sid)
            )
            return [LoginSession(row.sid, row.user_id, row.created_at, row.expires_at) for row in rows]

    async def session_owner(self, sid: str) -> str | None:
        """The user id of a recorded session, or ``None``."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(login_sessions.c.user_id).where(login_sessions.c.sid == sid))
            ).first()
        return None if row is None else str(row.user_id)

    async def end_user_sessions(self, user_id: str) -> Sequence[str]:
        async with self._db.write() as conn:
            # FOR UPDATE: on PostgreSQL a concurrent sign-in's row is either seen here or
            # inserted after, never half-read; SQLite's BEGIN IMMEDIATE serialises writers.
            sids = [
                row.sid
                for row in await conn.execute(
                    select(login_sessions.c.sid).where(login_sessions.c.user_id == user_id).with_for_update()
                )
            ]
            if sids:
                await conn.execute(delete(login_sessions).where(login_sessions.c.sid.in_(sids)))
        return sids

    async def purge_expired(self, now: float) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(delete(login_sessions).where(login_sessions.c.expires_at <= now))
        return int(result.rowcount)


@dataclass(frozen=True)
class PeopleStores:
    """The people stores over one database."""

    users: SQLUserStore
    roles: SQLRoleStore
    consents: SQLConsentStore
    refresh: SQLRefreshStore
    sessions: SQLLoginSessionIndex

    @classmethod
    def open(cls, db: Database) -> PeopleStores:
        """Stores over ``db`` (no I/O; cheap, so callers may build one per request)."""
        return cls(
            SQLUserStore(db),
            SQLRoleStore(db),
            SQLConsentStore(db),
            SQLRefreshStore(db),
            SQLLoginSessionIndex(db),
        )

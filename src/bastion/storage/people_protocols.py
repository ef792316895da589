"""Storage contracts for people: users, roles, consents, refresh-token families and the index
of login sessions.

Same rules as :mod:`bastion.storage.protocols`: one small protocol per aggregate, a method
returns only after its write is committed, one conformance suite for every backend
(``tests/people/test_storage.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bastion.protocol.models import Role
from bastion.protocol.models import User
from bastion.protocol.rfc6749.grants.refresh_token import RefreshFamily
from bastion.protocol.rfc6749.grants.refresh_token import RefreshToken


@dataclass(frozen=True, slots=True)
class Consent:
    """Scopes a user allowed a client, remembered so the consent screen is not shown again."""

    user_id: str
    client_id: str
    scopes: frozenset[str]
    granted_at: float


@dataclass(frozen=True, slots=True)
class LoginSession:
    """One signed-in session of a user, as the durable index records it."""

    sid: str
    user_id: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class StoredRefresh:
    """A refresh token's record, its family, and (once rotated) the sealed successor response."""

    token: RefreshToken
    family: RefreshFamily
    successor_response: bytes | None = None


class UserStore(Protocol):
    """People who sign in. Usernames are unique without regard to case."""

    async def create_user(self, user: User) -> None:
        """Persist a user with its roles. Raises :class:`~bastion.storage.protocols.Conflict` if
        the id or username is taken (or a role does not exist)."""

    async def get_user(self, user_id: str) -> User | None:
        """The user, or ``None``."""

    async def get_user_by_username(self, username: str) -> User | None:
        """The user with this username (case-insensitive), or ``None``."""

    async def list_users(self) -> Sequence[User]:
        """Every user, ordered by creation."""

    async def update_user(self, user: User) -> None:
        """Replace a user's record and roles. Raises :class:`~bastion.storage.protocols.NotFound`."""

    async def delete_user(self, user_id: str) -> bool:
        """Delete a user with its roles and consents; ``False`` if there was none."""


class RoleStore(Protocol):
    """Named scope sets (RBAC)."""

    async def create_role(self, role: Role) -> None:
        """Persist a role. Raises :class:`~bastion.storage.protocols.Conflict` if it exists."""

    async def get_roles(self, names: Iterable[str]) -> Sequence[Role]:
        """The roles among ``names`` that exist, ordered by name."""

    async def list_roles(self) -> Sequence[Role]:
        """Every role, ordered by name."""

    async def delete_role(self, name: str) -> bool:
        """Delete a role (users lose it); ``False`` if there was none."""


class ConsentStore(Protocol):
    """Remembered consents, one per user and client."""

    async def get_consent(self, user_id: str, client_id: str) -> Consent | None:
        """The remembered consent, or ``None``."""

    async def grant_consent(self, user_id: str, client_id: str, scopes: Iterable[str], now: float) -> Consent:
        """Remember ``scopes`` (added to what was already allowed); returns the new record."""

    async def revoke_consent(self, user_id: str, client_id: str) -> bool:
        """Forget a consent; ``False`` if there was none."""

    async def list_consents(self, user_id: str) -> Sequence[Consent]:
        """Every consent of a user, by client id."""


class RefreshStore(Protocol):
    """Refresh-token families and their tokens, stored by keyed hash."""

    async def create_family(self, family: RefreshFamily, token: RefreshToken) -> None:
        """Persist a new family with its first token, in one transaction."""

    async def find(self, token_hash: str) -> StoredRefresh | None:
        """A token with its family, or ``None``."""

    async def rotate(
        self, token_hash: str, successor: RefreshToken, sealed_response: bytes, now: float
    ) -> bool:
        """Atomically mark ``token_hash`` rotated and insert ``successor``.

        One conditional ``UPDATE ... WHERE token_hash = :h AND rotated_at IS NULL`` decides,
        inside the write transaction that inserts the successor and keeps ``sealed_response``
        on the old row: of N concurrent callers exactly one gets ``True``; the others change
        nothing. ``False`` too if the family was revoked meanwhile.
        """

    async def revoke_family(self, family_id: str, now: float) -> bool:
        """Mark a family revoked; ``False`` if it was unknown or already revoked."""

    async def revoke_subject(self, subject: str, now: float, client_id: str | None = None) -> Sequence[str]:
        """Revoke every live family of a user (only those of ``client_id`` when given);
        returns their ids."""

    async def purge_expired(self, now: float, *, keep_responses: float) -> int:
        """Delete dead tokens and families, and drop sealed responses older than
        ``keep_responses`` seconds; returns how many rows changed."""


class LoginSessionIndex(Protocol):
    """The login sessions alive, indexed by user, so all of a user's sessions can be ended.

    The browser-facing session record lives in fast state; this index is the durable truth of
    which session ids (``sid``) may still be used.
    """

    async def add_session(self, sid: str, user_id: str, now: float, expires_at: float) -> None:
        """Record a session that signed in at ``now``."""

    async def session_alive(self, sid: str, now: float) -> bool:
        """Whether the session is recorded and not past ``expires_at``."""

    async def end_session(self, sid: str) -> bool:
        """Forget one session; ``False`` if it was unknown."""

    async def user_sessions(self, user_id: str, now: float) -> Sequence[LoginSession]:
        """The live sessions of a user, oldest first."""

    async def session_owner(self, sid: str) -> str | None:
        """The user id of a recorded session, or ``None``."""

    async def end_user_sessions(self, user_id: str) -> Sequence[str]:
        """Forget every session of a user, in one transaction; returns their ids."""

    async def purge_expired(self, now: float) -> int:
        """Delete sessions past their expiry; returns how many went."""

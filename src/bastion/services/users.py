"""Users and roles: creation, passwords (argon2id), RBAC scopes.

Passwords are hashed with argon2-cffi's :class:`~argon2.PasswordHasher` (argon2id, RFC 9106),
always in a worker thread so a 50-100 ms hash never blocks the event loop, and rehashed on the
next successful sign-in when the parameters change (``check_needs_rehash``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import re
import secrets
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError
from argon2.exceptions import VerificationError

from bastion.protocol.models import Role
from bastion.protocol.models import User
from bastion.protocol.rfc6749.scope import parse_scope
from bastion.services import sessions
from bastion.services.container import Services
from bastion.storage.protocols import Conflict
from bastion.storage.sql.people import PeopleStores

_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}")
_ROLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


class UserError(ValueError):
    """A user or role definition breaks a rule; the message says which."""


class Unset(enum.Enum):
    """The type of :data:`UNSET`: an argument not given (where ``None`` means "clear")."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET


class Passwords:
    """argon2id hashing and verification off the event loop."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """An argon2id PHC string for ``password``."""
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str, password: str) -> bool:
        """Whether ``password`` matches ``stored`` (never raises on a bad hash)."""
        return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than the current ones."""
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    async def dummy_verify(self, password: str) -> None:
        """Spend the time of a real verification (for unknown users), so timing tells nothing."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))
        await self.verify(self._dummy, password)


def is_username(value: str) -> bool:
    """Whether ``value`` could name a user (the rule :func:`create_user` enforces)."""
    return _USERNAME_RE.fullmatch(value) is not None


def check_password(password: str) -> str:
    """Raises :class:`UserError` unless ``password`` is acceptable (length only, per NIST
    SP 800-63B §5.1.1.2: no composition rules)."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise UserError(f"passwords must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long")
    return password


def check_email(email: str | None) -> None:
    """Raises :class:`UserError` unless ``email`` (when given) looks like one address."""
    if email is not None and (email.count("@") != 1 or len(email) > 320 or any(c.isspace() for c in email)):
        raise UserError(f"invalid e-mail address {email!r}")


def people(services: Services) -> PeopleStores:
    """The people stores over the services' database."""
    return PeopleStores.open(services.stores.db)


async def user_scopes(services: Services, user: User) -> frozenset[str]:
    """Every scope the user's roles grant (RBAC)."""
    found = await people(services).roles.get_roles(user.roles)
    return frozenset(scope for role in found for scope in role.scopes)


async def _require_roles(services: Services, names: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(names)
    found = {role.name for role in await people(services).roles.get_roles(wanted)}
    if missing := sorted(wanted - found):
        raise UserError(f"unknown role(s): {', '.join(missing)} (create them with `bastion roles create`)")
    return wanted


async def _require_user(services: Services, username: str) -> User:
    user = await people(services).users.get_user_by_username(username)
    if user is None:
        raise UserError(f"no user named {username!r}")
    return user


async def create_user(
    services: Services,
    username: str,
    password: str,
    *,
    roles: Iterable[str] = (),
    email: str | None = None,
    name: str | None = None,
    passwords: Passwords | None = None,
) -> User:
    """Create a user.

    Raises:
        UserError: a bad username, password, e-mail or role, or the username is taken.
    """
    if not _USERNAME_RE.fullmatch(username):
        raise UserError("usernames are 1-200 letters, digits and . _ @ + - (starting with a letter or digit)")
    check_email(email)
    check_password(password)
    role_names = await _require_roles(services, roles)
    now = services.clock()
    user = User(
        user_id=secrets.token_urlsafe(12),
        username=username,
        password_hash=await (passwords or Passwords()).hash(password),
        email=email,
        name=name,
        roles=role_names,
        created_at=now,
        updated_at=now,
    )
    try:
        await people(services).users.create_user(user)
    except Conflict as exc:
        raise UserError(f"the username {username!r} is taken") from exc
    services.audit.emit("user.created", subject=user.user_id, details={"roles": sorted(role_names)})
    return user


async def get_user(services: Services, username: str) -> User | None:
    """The user named ``username`` (without regard to case), or ``None``."""
    return await people(services).users.get_user_by_username(username)


async def update_user(
    services: Services,
    username: str,
    *,
    email: str | Unset | None = UNSET,
    name: str | Unset | None = UNSET,
    roles: Iterable[str] | Unset = UNSET,
) -> User:
    """Change a user's e-mail address, display name and roles (``None`` clears the first two;
    what is not given stays). Audited as ``user.updated`` and, for roles, ``user.roles_changed``.

    Raises:
        UserError: no such user, a bad e-mail address or an unknown role.
    """
    user = await _require_user(services, username)
    changes: dict[str, object] = {}
    if not isinstance(email, Unset):
        check_email(email)
        if email != user.email:
            changes["email"] = email
    if not isinstance(name, Unset):
        if name is not None and len(name) > 200:
            raise UserError("a display name is at most 200 characters")
        if name != user.name:
            changes["name"] = name
    if not isinstance(roles, Unset):
        wanted = await _require_roles(services, roles)
        if wanted != user.roles:
            changes["roles"] = wanted
    if not changes:
        return user
    changed = dataclasses.replace(user, **changes, updated_at=services.clock())  # type: ignore[arg-type]
    await people(services).users.update_user(changed)
    if "email" in changes or "name" in changes:
        fields = sorted(set(changes) - {"roles"})
        services.audit.emit("user.updated", subject=user.user_id, details={"changed": fields})
    if "roles" in changes:
        services.audit.emit(
            "user.roles_changed", subject=user.user_id, details={"roles": sorted(changed.roles)}
        )
    return changed


async def list_users(services: Services) -> Sequence[User]:
    """Every user, oldest first."""
    return await people(services).users.list_users()


async def revoke_user_grants(services: Services, user: User) -> int:
    """Revoke every refresh-token family of ``user`` and the access tokens issued from them."""
    now = services.clock()
    families = await people(services).refresh.revoke_subject(user.user_id, now)
    for family_id in families:
        await services.tokens.revoke_family_access_tokens(family_id, now)
    return len(families)


async def end_user_access(services: Services, user: User) -> None:
    """End every login session of ``user`` (each browser is asked to sign in again, and codes
    not yet redeemed die with their session), then revoke their grants.

    Sessions first: once they are ended no new code - and so no new refresh-token family - can
    come from them, and the revocation that follows catches every family issued before.
    """
    await sessions.end_for_user(services, user.user_id)
    await revoke_user_grants(services, user)


async def set_disabled(services: Services, username: str, disabled: bool = True) -> User:
    """Disable (or re-enable) a user; disabling ends the user's sessions and revokes their
    grants (re-enabling brings neither back)."""
    user = await _require_user(services, username)
    changed = dataclasses.replace(user, disabled=disabled, updated_at=services.clock())
    await people(services).users.update_user(changed)
    if disabled:
        await end_user_access(services, changed)
    services.audit.emit("user.disabled" if disabled else "user.enabled", subject=user.user_id)
    return changed


async def set_password(
    services: Services, username: str, password: str, *, passwords: Passwords | None = None
) -> User:
    """Replace a user's password; every login session of the user ends and their grants are
    revoked (OWASP Session Management Cheat Sheet: a password change invalidates sessions)."""
    user = await _require_user(services, username)
    check_password(password)
    hashed = await (passwords or Passwords()).hash(password)
    changed = dataclasses.replace(user, password_hash=hashed, updated_at=services.clock())
    await people(services).users.update_user(changed)
    await end_user_access(services, changed)
    services.audit.emit("user.password_changed", subject=user.user_id)
    return changed


async def set_roles(services: Services, username: str, roles: Iterable[str]) -> User:
    """Replace a user's roles."""
    user = await _require_user(services, username)
    changed = dataclasses.replace(
        user, roles=await _require_roles(services, roles), updated_at=services.clock()
    )
    await people(services).users.update_user(changed)
    services.audit.emit("user.roles_changed", subject=user.user_id, details={"roles": sorted(changed.roles)})
    return changed


async def delete_user(services: Services, username: str) -> bool:
    """Delete a user (ending their sessions, revoking their grants); ``False`` if there was none."""
    user = await people(services).users.get_user_by_username(username)
    if user is None:
        return False
    await end_user_access(services, user)
    deleted = await people(services).users.delete_user(user.user_id)
    services.audit.emit("user.deleted", subject=user.user_id)
    return deleted


async def create_role(services: Services, name: str, scopes: Iterable[str], description: str = "") -> Role:
    """Create a role granting ``scopes``.

    Raises:
        UserError: a bad name or scope, or the role exists.
    """
    if not _ROLE_RE.fullmatch(name):
        raise UserError("role names are 1-128 letters, digits and . _ : - (starting with a letter or digit)")
    tokens = [token for scope in scopes for token in parse_scope(scope)]
    role = Role(name=name, scopes=frozenset(tokens), description=description)
    try:
        await people(services).roles.create_role(role)
    except Conflict as exc:
        raise UserError(f"the role {name!r} exists") from exc
    services.audit.emit("role.created", subject=name, details={"scopes": sorted(role.scopes)})
    return role


async def list_roles(services: Services) -> Sequence[Role]:
    """Every role, by name."""
    return await people(services).roles.list_roles()


async def delete_role(services: Services, name: str) -> bool:
    """Delete a role (its users lose it); ``False`` if there was none."""
    deleted = await people(services).roles.delete_role(name)
    if deleted:
        services.audit.emit("role.deleted", subject=name)
    return deleted

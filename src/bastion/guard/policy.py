"""Object-level authorization: ``authorize(principal, "read", order, policies)`` in one line.

A policy is a small named predicate over (principal, action, object). :func:`authorize`
grants when one of the policies grants, and refuses otherwise, including when no policy is
given at all (deny by default, OWASP API1:2023 "Broken Object Level Authorization").

Each policy chooses how a refusal looks: ``hide=True`` answers 404, as if the object did not
exist, so ids cannot be probed (the default of :func:`owner`); ``hide=False`` answers 403 (the
default of :func:`role` and :func:`scope`). When several policies refuse, 404 wins if any of
them hides: one that wants the object's existence kept secret is never overruled. Every
refusal is logged with the subject, client, action, object type and id, never the token.

Pure: no I/O besides the log line, no framework.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from typing import Any
from typing import ClassVar

from bastion.tokens import Principal

logger = logging.getLogger("bastion.guard")

#: ``(principal, action, obj) -> bool``: whether this rule grants ``action`` on ``obj``.
Check = Callable[[Principal, str, Any], bool]


class Refused(Exception):
    """An object-level refusal: the token is valid but may not do this to this object."""

    status_code: ClassVar[int] = 403
    description: ClassVar[str] = "Not allowed"


class Forbidden(Refused):
    """403: the caller may know the object exists but may not do this to it."""

    status_code = 403
    description = "You are not allowed to do this"


class NotFound(Refused):
    """404: answered as if the object did not exist, so its id reveals nothing."""

    status_code = 404
    description = "Not found"


class Policy:
    """A named rule: ``policy(principal, action, obj)`` is ``True`` when it grants.

    Combine with ``|`` (either grants) and ``&`` (both grant), or :func:`any_of` /
    :func:`all_of`. Write your own::

        paid = Policy("paid", lambda principal, action, order: order.status == "paid")

    Args:
        name: Shown in logs.
        check: The predicate.
        hide: Refuse with 404 (``True``) or 403 (``False``).
        actions: The actions this policy may grant; ``None``: every action.

    .. versionadded:: 0.2
    """

    __slots__ = ("_actions", "_check", "hide", "name")

    def __init__(
        self, name: str, check: Check, *, hide: bool = False, actions: Collection[str] | None = None
    ) -> None:
        self.name = name
        self.hide = hide
        self._check = check
        self._actions = frozenset(actions) if actions is not None else None

    def __call__(self, principal: Principal, action: str, obj: Any) -> bool:
        if self._actions is not None and action not in self._actions:
            return False
        return bool(self._check(principal, action, obj))

    def __or__(self, other: Policy) -> Policy:
        return any_of(self, other)

    def __and__(self, other: Policy) -> Policy:
        return all_of(self, other)

    def __repr__(self) -> str:
        return f"<Policy {self.name}>"


def _attribute(obj: Any, attr: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(attr)
    return getattr(obj, attr, None)


def owner(attr: str = "owner_id", *, hide: bool = True, actions: Collection[str] | None = None) -> Policy:
    """Grants when ``obj.<attr>`` (or ``obj[attr]`` for a dict) equals the token's ``sub``.

    Refuses with 404 by default: someone else's object is not shown to exist.
    """

    def check(principal: Principal, action: str, obj: Any) -> bool:
        value = _attribute(obj, attr)
        return principal.subject is not None and value is not None and value == principal.subject

    return Policy(f"owner({attr})", check, hide=hide, actions=actions)


def role(
    name: str, *, claim: str = "roles", hide: bool = False, actions: Collection[str] | None = None
) -> Policy:
    """Grants when the token's ``roles`` claim (a list, or a space-separated string) holds ``name``."""

    def check(principal: Principal, action: str, obj: Any) -> bool:
        roles = principal.claims.get(claim)
        if isinstance(roles, str):
            return name in roles.split()
        return isinstance(roles, list | tuple) and name in roles

    return Policy(f"role({name})", check, hide=hide, actions=actions)


def scope(*scopes: str, hide: bool = False, actions: Collection[str] | None = None) -> Policy:
    """Grants when the token carries every one of ``scopes`` (e.g. ``"orders:write"``)."""
    if not scopes:
        raise ValueError("scope() needs at least one scope")
    return Policy(
        f"scope({' '.join(scopes)})",
        lambda principal, action, obj: principal.has_scopes(*scopes),
        hide=hide,
        actions=actions,
    )


def any_of(*policies: Policy) -> Policy:
    """Grants when one of ``policies`` does; refuses with 404 if any of them hides."""
    members = tuple(policies)
    return Policy(
        " | ".join(policy.name for policy in members) or "nothing",
        lambda principal, action, obj: any(policy(principal, action, obj) for policy in members),
        hide=not members or any(policy.hide for policy in members),
    )


def all_of(*policies: Policy) -> Policy:
    """Grants when every one of ``policies`` does (and at least one is given)."""
    members = tuple(policies)
    return Policy(
        " & ".join(policy.name for policy in members) or "nothing",
        lambda principal, action, obj: (
            bool(members) and all(policy(principal, action, obj) for policy in members)
        ),
        hide=not members or any(policy.hide for policy in members),
    )


def _object_id(obj: Any) -> str | None:
    for attr in ("id", "pk", "key"):
        value = _attribute(obj, attr)
        if value is not None:
            return str(value)[:64]
    return None


def authorize(
    principal: Principal,
    action: str,
    obj: Any,
    policies: Policy | Iterable[Policy] = (),
    *,
    object_type: str | None = None,
) -> None:
    """Allow ``action`` on ``obj`` if a policy grants it; raise otherwise.

    Args:
        principal: Who is asking (from the guard).
        action: What they want to do (``"read"``, ``"update"``…).
        obj: The object, already loaded. ``None`` (not found) is refused with 404, exactly
            like an object the caller may not see, so the two cannot be told apart.
        policies: One policy, or several of which any may grant. None given: refused.
        object_type: Name for the log; by default the object's class name.

    Raises:
        NotFound: refused by a policy that hides (404), or ``obj`` is ``None``.
        Forbidden: refused (403).

    .. versionadded:: 0.2
    """
    members = (policies,) if isinstance(policies, Policy) else tuple(policies)
    if obj is not None and any(policy(principal, action, obj) for policy in members):
        return
    hide = obj is None or not members or any(policy.hide for policy in members)
    error: Refused = NotFound() if hide else Forbidden()
    kind = object_type or (type(obj).__name__ if obj is not None else "None")
    logger.warning(
        "guard refused %s on %s %s to %s: %s",
        action,
        kind,
        _object_id(obj),
        principal.subject,
        error.status_code,
        extra={
            "event": "guard.refused",
            "subject": principal.subject,
            "client_id": principal.client_id,
            "action": action,
            "object_type": kind,
            "object_id": _object_id(obj),
            "policies": [policy.name for policy in members],
            "status": error.status_code,
        },
    )
    raise error

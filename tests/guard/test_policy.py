"""``authorize`` and its policies, called directly: deny by default, 404 or 403 by the policy's
choice, and a log line naming who, what and which object, never the token."""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any

import pytest

from bastion.guard import Forbidden
from bastion.guard import NotFound
from bastion.guard import Policy
from bastion.guard import all_of
from bastion.guard import any_of
from bastion.guard import authorize
from bastion.guard import owner
from bastion.guard import role
from bastion.guard import scope
from bastion.tokens import Principal


def principal(subject: str = "alice", scopes: str = "orders:read", **claims: Any) -> Principal:
    return Principal(
        subject=subject,
        client_id="shop",
        scopes=frozenset(scopes.split()),
        claims=MappingProxyType({"sub": subject, "scope": scopes, **claims}),
        token_id="t1",
        expires_at=2e9,
        issuer="https://auth.example",
        audience="https://api.example",
    )


class Order:
    def __init__(self, id: int, owner_id: str) -> None:
        self.id = id
        self.owner_id = owner_id


ALICES, CAROLS = Order(1, "alice"), Order(2, "carol")


def test_the_owner_is_allowed() -> None:
    authorize(principal(), "read", ALICES, owner())
    authorize(principal(), "read", {"id": 1, "owner_id": "alice"}, owner())


def test_someone_else_is_not_found() -> None:
    with pytest.raises(NotFound):
        authorize(principal(), "read", CAROLS, owner())


def test_no_policy_refuses() -> None:
    with pytest.raises(NotFound):
        authorize(principal(), "read", ALICES)
    with pytest.raises(NotFound):
        authorize(principal(), "read", ALICES, any_of())
    with pytest.raises(NotFound):
        authorize(principal(), "read", ALICES, all_of())


def test_a_missing_object_is_refused_like_a_hidden_one() -> None:
    with pytest.raises(NotFound):
        authorize(principal(), "read", None, owner() | role("admin"))


def test_role_and_scope_refuse_with_403() -> None:
    with pytest.raises(Forbidden):
        authorize(principal(), "cancel", ALICES, role("admin"))
    with pytest.raises(Forbidden):
        authorize(principal(), "update", ALICES, scope("orders:write"))
    authorize(principal(roles=["admin"]), "cancel", ALICES, role("admin"))
    authorize(principal(roles="support admin"), "cancel", ALICES, role("admin"))
    authorize(principal(scopes="orders:write"), "update", ALICES, scope("orders:write"))


def test_a_hiding_policy_is_never_overruled() -> None:
    # 404 when any refusing policy hides, whichever comes first.
    with pytest.raises(NotFound):
        authorize(principal(), "read", CAROLS, role("admin") | owner())
    with pytest.raises(NotFound):
        authorize(principal(), "read", CAROLS, [role("admin"), owner()])
    with pytest.raises(Forbidden):
        authorize(principal(), "read", CAROLS, role("admin") | owner(hide=False))


def test_combinators() -> None:
    both = owner() & scope("orders:write")
    with pytest.raises(NotFound):
        authorize(principal(scopes="orders:read"), "update", ALICES, both)
    authorize(principal(scopes="orders:write"), "update", ALICES, both)
    authorize(principal("bob", roles=["admin"]), "read", CAROLS, any_of(owner(), role("admin")))
    assert (owner() | role("admin")).name == "owner(owner_id) | role(admin)"


def test_actions_restrict_what_a_policy_grants() -> None:
    support = role("support", actions={"read"})
    authorize(principal("sam", roles=["support"]), "read", CAROLS, support)
    with pytest.raises(Forbidden):
        authorize(principal("sam", roles=["support"]), "delete", CAROLS, support)


def test_custom_policies() -> None:
    paid = Policy("paid", lambda who, action, order: order["status"] == "paid", hide=True)
    authorize(principal(), "ship", {"id": 3, "status": "paid"}, paid)
    with pytest.raises(NotFound):
        authorize(principal(), "ship", {"id": 3, "status": "new"}, paid)


def test_a_subjectless_token_owns_nothing() -> None:
    with pytest.raises(NotFound):
        authorize(principal(subject=None), "read", Order(5, None), owner())  # type: ignore[arg-type]


def test_a_refusal_is_logged_without_the_token(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bastion.guard"), pytest.raises(NotFound):
        authorize(principal(), "read", CAROLS, owner())
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    fields = {
        name: getattr(record, name)
        for name in ("subject", "client_id", "action", "object_type", "object_id", "status")
    }
    assert fields == {
        "subject": "alice",
        "client_id": "shop",
        "action": "read",
        "object_type": "Order",
        "object_id": "2",
        "status": 404,
    }
    assert record.policies == ["owner(owner_id)"]  # type: ignore[attr-defined]


def test_scope_needs_a_scope() -> None:
    with pytest.raises(ValueError, match="at least one"):
        scope()

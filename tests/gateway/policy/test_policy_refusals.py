"""The gateway's policy refusals in the audit trail: one event per address, route, status and
reason a minute, with the count of those folded into it, never the token."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from bastion.gateway.app import Gateway
from bastion.gateway.app import create_gateway
from bastion.gateway.contract import Decision
from bastion.gateway.contract import Headers
from bastion.gateway.contract import Reply
from bastion.gateway.contract import RequestHead
from bastion.gateway.observe import AccessLog
from bastion.gateway.refusals import RefusalReporter
from bastion.gateway.settings import IssuerSettings
from bastion.gateway.settings import UpstreamSettings
from bastion.ops.audit import AuditLog
from bastion.storage.audit_protocols import AuditEvent
from bastion.tokens import TokenValidator

from .helpers import Issuer
from .test_policy_handler import Group
from .test_policy_handler import Sink
from .test_policy_handler import settings

pytestmark = pytest.mark.anyio

#: The event types these tests must see emitted (the audit schema's coverage test reads it).
GATEWAY_TYPES = frozenset({"gateway.refused", "gateway.throttled"})


@dataclass
class Audited:
    issuer: Issuer
    gateway: Gateway
    events: list[AuditEvent]

    async def call(self, target: bytes, headers: Headers | None = None, ip: str = "203.0.113.9") -> Decision:
        head = RequestHead(method=b"GET", target=target, headers=headers or [], client=(ip, 50000), tls=False)
        decision = self.gateway.handler(head)
        if inspect.isawaitable(decision):
            decision = await decision
        return decision


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def audited() -> AsyncIterator[Audited]:
    issuer = Issuer("https://auth.example")
    await issuer.start()

    def upstream_factory(name: str, upstream: UpstreamSettings) -> Group:
        return Group(name)

    def verifier_factory(config: IssuerSettings) -> TokenValidator:
        return TokenValidator(config.issuer, audience=config.audience, jwks_uri=config.jwks_uri)

    audit = AuditLog(None)
    events: list[AuditEvent] = []
    audit.listeners.append(events.append)
    limited: dict[str, Any] = {"rate_limit": {"limits": [{"requests": 1, "per": 60, "key": "ip"}]}}
    config = settings([issuer])
    routes = [
        *config.model_dump()["routes"],
        {"prefix": "/slow", "upstream": "public", "auth": "none", **limited},
    ]
    gateway = create_gateway(
        settings([issuer], routes=routes),
        verifiers=verifier_factory,
        upstream_factory=upstream_factory,
        access_log=AccessLog(Sink()),
        audit=audit,
    )
    yield Audited(issuer, gateway, events)
    await gateway.close()
    await issuer.stop()


async def test_refusals_and_throttles_are_audited_without_the_token(audited: Audited) -> None:
    token = audited.issuer.token(scope="orders:read", subject="alice", client_id="shop")
    refused = await audited.call(b"/catalog/items", [(b"authorization", b"Bearer " + token.encode())])
    assert isinstance(refused, Reply)
    assert refused.status == 403  # catalog:read missing
    garbled = await audited.call(b"/orders/1", [(b"authorization", b"Bearer not.a.jwt")], ip="198.51.100.4")
    assert isinstance(garbled, Reply)
    assert garbled.status == 401
    assert not isinstance(await audited.call(b"/slow/a"), Reply)  # the first is admitted
    throttled = await audited.call(b"/slow/a")
    assert isinstance(throttled, Reply)
    assert throttled.status == 429

    scope, invalid, limited = audited.events
    assert (scope.type, scope.outcome, scope.reason) == ("gateway.refused", "denied", "insufficient_scope")
    assert (scope.subject, scope.client, scope.address) == ("alice", "shop", "203.0.113.9")
    assert scope.details == {"route": "/catalog", "status": 403, "suppressed": 0}
    assert (invalid.type, invalid.address, invalid.subject, invalid.details["status"]) == (
        "gateway.refused",
        "198.51.100.4",
        None,
        401,
    )
    assert invalid.reason is not None
    assert (limited.type, limited.details["route"], limited.details["status"]) == (
        "gateway.throttled",
        "/slow",
        429,
    )
    assert {e.type for e in audited.events} == GATEWAY_TYPES
    for event in audited.events:
        assert token not in repr(event)


def test_a_flood_costs_one_event_a_minute_per_kind_with_the_count_folded_in() -> None:
    events: list[AuditEvent] = []
    audit = AuditLog(None)
    audit.listeners.append(events.append)
    clock = Clock()
    reporter = RefusalReporter(audit, interval=60.0, clock=clock)
    for _ in range(500):
        reporter.report("203.0.113.9", "/api", 401, "invalid_token", None)
    reporter.report("203.0.113.9", "/api", 403, "insufficient_scope", None)  # another kind: its own event
    assert [(e.reason, e.details["suppressed"]) for e in events] == [
        ("invalid_token", 0),
        ("insufficient_scope", 0),
    ]
    clock.now += 61
    reporter.report("203.0.113.9", "/api", 401, "invalid_token", None)
    assert (events[-1].reason, events[-1].details["suppressed"]) == ("invalid_token", 499)


def test_the_memory_of_keys_is_bounded() -> None:
    events: list[AuditEvent] = []
    audit = AuditLog(None)
    audit.listeners.append(events.append)
    reporter = RefusalReporter(audit, max_keys=100, clock=Clock())
    for n in range(1000):  # a spoofed-address sweep
        reporter.report(f"10.0.{n // 256}.{n % 256}", "/api", 401, "missing", None)
    assert len(events) == 1000
    assert len(reporter._reports) <= 100

"""Compose the alert rules of one ``bastion serve`` worker: counters → runner → actions.

One :class:`~bastion.ops.alerting.AlertRunner` per worker reads the counters of what the worker
runs (the gateway's requests by route; the authorization server's requests by endpoint,
sign-ins, refresh-token reuse and key schedule), and is fed the failures of address rules as
they happen (the gateway's ban guard for refused tokens, the audit trail for failed sign-ins).
Bans go through the gateway's ban book (durable record, fast key, ``bans`` channel), so every
gateway enforces them; an opened circuit is announced on the ``alerts.circuits`` channel (and
kept as a fast-state key for processes that catch up), so every gateway process opens it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import orjson

from bastion.gateway.bans import BanBook
from bastion.gateway.bans import BanSet
from bastion.gateway.bans import ban_network
from bastion.ops.alerting import AlertRunner
from bastion.ops.alerts import Readings
from bastion.ops.audit import AuditEvent
from bastion.ops.audit import AuditLog
from bastion.ops.feeds import FeedMetrics
from bastion.ops.feeds import Follower
from bastion.ops.webhooks import Receiver
from bastion.ops.webhooks import WebhookSender
from bastion.services.keycheck import rotation_due_in
from bastion.settings import AlertsSettings
from bastion.settings import Settings
from bastion.settings import WebhookSettings
from bastion.storage.ban_protocols import Ban
from bastion.storage.open import Stores
from bastion.storage.protocols import FastState

if TYPE_CHECKING:
    from bastion.cli.gateway import RunningGateway
    from bastion.gateway.app import Gateway
    from bastion.services.container import Services

log = logging.getLogger("bastion.alerts")

#: The channel announcing circuits opened by alerts to every gateway process.
CIRCUITS_CHANNEL = "alerts.circuits"


def circuit_key(route: str) -> str:
    """The fast-state key holding the end of an alert's circuit opening for ``route``."""
    return f"alerts:circuit:{route}"


def webhook_secret(name: str, settings: WebhookSettings) -> bytes:
    """The signing secret of webhook ``name``, from its environment variable or file.

    Raises:
        ValueError: unset, unreadable or empty.
    """
    if settings.secret_env is not None:
        value = os.environ.get(settings.secret_env, "")
        if not value:
            raise ValueError(f"alerts.webhooks.{name}: environment variable {settings.secret_env} is not set")
    else:
        path = Path(str(settings.secret_file))
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"alerts.webhooks.{name}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"alerts.webhooks.{name}: {path} is empty")
    return value.encode()


def receivers(settings: AlertsSettings) -> dict[str, Receiver]:
    """Every configured webhook with its secret.

    Raises:
        ValueError: a secret is missing.
    """
    return {
        name: Receiver(name, hook, webhook_secret(name, hook)) for name, hook in settings.webhooks.items()
    }


class AlertBans:
    """The ``ban`` action: a ban recorded like the automatic ones (``kind = "alert"``), enforced
    here at once when this process is a gateway, and by every gateway through the ban book."""

    def __init__(self, book: BanBook, local: BanSet | None, clock: Callable[[], float] = time.time) -> None:
        self._book = book
        self._local = local
        self._clock = clock

    async def ban(self, network: str, seconds: float, reason: str) -> float:
        now = self._clock()
        ban = Ban(network, reason, "auto", now, now + seconds, 1, "alert")
        if self._local is not None:
            self._local.apply(ban)
        await self._book.ban(ban)
        return ban.until


class SharedCircuits:
    """The ``open_circuit`` action for every gateway process sharing the fast-state store."""

    def __init__(
        self, gateway: Gateway, state: FastState, metrics: FeedMetrics, clock: Callable[[], float] = time.time
    ) -> None:
        self._gateway = gateway
        self._state = state
        self._clock = clock
        self.follower = Follower(
            "circuits", state, CIRCUITS_CHANNEL, self._on_message, catch_up=self._catch_up, metrics=metrics
        )

    async def open(self, route: str, seconds: float) -> float | None:
        if route not in self._routes():
            return None
        until = self._clock() + seconds
        self._apply(route, until)
        await self._state.set(circuit_key(route), repr(until).encode("ascii"), seconds)
        await self._state.publish(CIRCUITS_CHANNEL, orjson.dumps({"route": route, "until": until}))
        return until

    def _routes(self) -> set[str]:
        return {route.name for route in self._gateway.handler.table.routes()}

    def _apply(self, route: str, until: float) -> None:
        seconds = until - self._clock()
        if seconds > 0 and self._gateway.open_circuit(route, seconds):
            log.warning("alerts: the circuit of route %s is open for %.0f s", route, seconds)

    def _on_message(self, data: bytes) -> None:
        body = orjson.loads(data)
        if not isinstance(body, dict) or not isinstance(body.get("route"), str):
            raise ValueError(f"not a circuit message: {data[:100]!r}")
        self._apply(body["route"], float(body["until"]))

    async def _catch_up(self) -> None:
        for route in self._routes():
            until = await self._state.get(circuit_key(route))
            if until is not None:
                self._apply(route, float(until))


def counter_reader(
    gateway: Gateway | None, services: Services | None, clock: Callable[[], float] = time.time
) -> Callable[[], Readings]:
    """What the evaluator reads each interval: the counters of the parts this process runs."""

    def read() -> Readings:
        readings = Readings()
        requests: dict[str, Mapping[tuple[str, Any], int]] = {}
        if gateway is not None:
            requests["route"] = gateway.metrics.requests
        if services is not None:
            metrics = services.metrics
            requests["endpoint"] = metrics.requests
            readings.signin_failures = metrics.signins.get(("failed",), 0)
            readings.refresh_reuse = metrics.refresh_reuse.get(("revoked",), 0)
            # The same judgement as `bastion keys check` (overdue when negative).
            readings.key_rotation = rotation_due_in(services.keys, clock())
        readings.requests = requests
        return readings

    return read


class RunningAlerts:
    """A worker's alert runner with its webhook sender and circuit follower, closed together."""

    def __init__(
        self, runner: AlertRunner, webhooks: WebhookSender, circuits: SharedCircuits | None, audit: AuditLog
    ) -> None:
        self.runner = runner
        self.webhooks = webhooks
        self.circuits = circuits
        self._audit = audit

    def start(self) -> None:
        self.webhooks.start()
        if self.circuits is not None:
            self.circuits.follower.start()
        self._audit.listeners.append(self._on_event)
        self.runner.start()

    def _on_event(self, event: AuditEvent) -> None:
        """Failed sign-ins feed the per-address sign-in rules."""
        if event.type != "login.failed" or event.address is None or not self.runner.watches("signin"):
            return
        network = ban_network(event.address)
        if network is not None:
            self.runner.spawn_failure(network, "signin")

    async def close(self) -> None:
        if self._on_event in self._audit.listeners:
            self._audit.listeners.remove(self._on_event)
        await self.runner.stop()
        if self.circuits is not None:
            await self.circuits.follower.stop()
        await self.webhooks.close()


def start_alerts(
    settings: Settings,
    stores: Stores,
    audit: AuditLog,
    *,
    gateway: RunningGateway | None = None,
    services: Services | None = None,
) -> RunningAlerts | None:
    """Start the ``[alerts]`` rules of a worker running ``gateway`` and/or ``services`` (the
    authorization server); ``None`` without rules.

    Raises:
        ValueError: a webhook's secret is missing.
    """
    alerts = settings.alerts
    if not alerts.rules:
        return None
    webhooks = WebhookSender(receivers(alerts), audit)
    circuits = None
    local_bans = None
    if gateway is not None:
        circuits = SharedCircuits(gateway.gateway, stores.state, gateway.feeds.metrics)
        if gateway.bans is not None:
            local_bans = gateway.bans.set
    runner = AlertRunner(
        alerts,
        state=stores.state,
        audit=audit,
        read=counter_reader(gateway.gateway if gateway is not None else None, services),
        webhooks=webhooks,
        bans=AlertBans(BanBook(stores.bans, stores.state, audit), local_bans),
        circuits=circuits,
    )
    if gateway is not None and gateway.bans is not None:
        gateway.bans.guard.watch = runner
    running = RunningAlerts(runner, webhooks, circuits, audit)
    running.start()
    return running

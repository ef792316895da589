"""Alert rules at run time: evaluate every ``interval`` seconds, elect one firing among the
processes, and act.

One :class:`AlertRunner` per process (gateway and authorization-server workers):

* every ``alerts.interval`` seconds it reads the process's counters, hands them to the pure
  :class:`~bastion.ops.alerts.Evaluator`, and acts on what fired or resolved;
* rules about one client address are counted as the failures happen (:meth:`AlertRunner.failure`,
  called by the gateway for refused tokens and by the authorization server for failed sign-ins):
  an atomic ``incr`` of ``alerts:{RULE}:{NETWORK}`` in the fast-state store with the rule's
  window as TTL, so the count is exact across every process sharing the store, and the process
  whose ``incr`` returns exactly the threshold fires. The alert resolves when the count's window
  ends.

With several processes (``--workers N``, several machines on one Redis) each sees the same
condition: before acting, a process claims ``alerts:fired:{RULE}|{LABELS}`` with a
set-if-absent ``add`` whose TTL is the rule's ``cooldown``. The one that stores it fires; the
others keep quiet (and leave the resolution to it). A store that cannot answer fires here: an
alert twice is better than none.

Actions (each an audit event, see ``docs/alerts.md``): the ``alert.fired`` and
``alert.resolved`` events themselves; a ``webhook`` message (queued, see
:mod:`bastion.ops.webhooks`); a ``ban`` of the address (:class:`Banner`); an ``open_circuit``
of the route's upstream (:class:`Circuits`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from collections.abc import Coroutine
from typing import Any
from typing import Protocol

from bastion.ops.alerts import Alert
from bastion.ops.alerts import Evaluator
from bastion.ops.alerts import Fired
from bastion.ops.alerts import Readings
from bastion.ops.audit import Auditor
from bastion.ops.background import Background
from bastion.ops.webhooks import WebhookSender
from bastion.settings import AlertRuleSettings
from bastion.settings import AlertsSettings
from bastion.storage.audit_protocols import rfc3339
from bastion.storage.protocols import FastState

__all__ = ["AlertRunner", "Banner", "Circuits", "count_key", "message"]

log = logging.getLogger("bastion.alerts")

#: Which failures feed which address rules: ``auth`` (the gateway's refused tokens) and
#: ``signin`` (the authorization server's failed sign-ins).
_FEEDS = {"auth": "auth_failures_per_address", "signin": "signin_failures"}


class Banner(Protocol):
    """Bans a network in every gateway (the gateway's bans)."""

    async def ban(self, network: str, seconds: float, reason: str) -> float:
        """Ban ``network`` for ``seconds``; returns when the ban ends.

        Raises:
            Exception: the ban could not be recorded.
        """


class Circuits(Protocol):
    """Opens a route's upstream circuit breakers in every gateway process."""

    async def open(self, route: str, seconds: float) -> float | None:
        """Open the breakers of ``route``'s upstream for ``seconds``; returns when they close
        again, or ``None`` when no such route exists."""


def count_key(rule: str, network: str) -> str:
    """The fast-state counter of ``rule``'s failures from ``network`` (hash-tagged by network)."""
    return f"alerts:{rule}:{{{network}}}"


def _fired_key(alert: Alert) -> str:
    return f"alerts:fired:{alert.key}"


def message(
    status: str, alert: Alert, *, value: float | None = None, at: float, test: bool = False
) -> dict[str, Any]:
    """The webhook message for ``alert`` (``status``: ``firing`` or ``resolved``)."""
    body = {"status": status, **alert.as_dict(), "time": rfc3339(at), "test": test}
    if status == "resolved":
        body["value"] = value
    return body


class AlertRunner:
    """The alert rules of one process (see the module docstring)."""

    def __init__(
        self,
        settings: AlertsSettings,
        *,
        state: FastState,
        audit: Auditor,
        read: Callable[[], Readings],
        webhooks: WebhookSender | None = None,
        bans: Banner | None = None,
        circuits: Circuits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Args:
        settings: ``[alerts]``.
        state: The fast-state store shared by the processes (elections, address counts).
        audit: Where alert events go.
        read: The process's counters now (called once per evaluation).
        webhooks: Delivers ``webhook`` actions (started by the caller).
        bans: Carries out ``ban`` actions (``None``: they fail, audited).
        circuits: Carries out ``open_circuit`` actions (``None``: they fail, audited).
        clock: POSIX seconds.
        """
        self.settings = settings
        self.evaluator = Evaluator(settings.rules)
        self._rules = {rule.name: rule for rule in settings.rules}
        self._state = state
        self._audit = audit
        self._read = read
        self.webhooks = webhooks
        self.bans = bans
        self.circuits = circuits
        self._clock = clock
        self._address_rules = {
            feed: tuple(r for r in settings.rules if r.by_address and r.kind == kind)
            for feed, kind in _FEEDS.items()
        }
        #: Address alerts this process fired, until their count's window ends.
        self._address_alerts: dict[str, Alert] = {}
        self._loop = Background(self.run)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the periodic rules -------------------------------------------------------------------------

    def start(self) -> None:
        """Start evaluating on the running loop (the first reading is the baseline)."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop evaluating and wait for failures being counted."""
        await self._loop.stop()
        await self.settle()

    async def run(self) -> None:
        """Evaluate every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("alerts: evaluation failed")
            await asyncio.sleep(self.settings.interval)

    async def tick(self) -> None:
        """One evaluation: read, decide, elect, act; and resolve address alerts whose window ended."""
        now = self._clock()
        for change in self.evaluator.evaluate(now, self._read()):
            if isinstance(change, Fired):
                if await self._elect(change.alert):
                    await self.fire(change.alert)
                else:
                    self.evaluator.lost(change.alert)
            else:
                self.resolve(change.alert, change.value, change.at)
        for key, alert in list(self._address_alerts.items()):
            network = alert.label("address") or ""
            try:
                counting = await self._state.get(count_key(alert.rule, network)) is not None
            except Exception as exc:
                log.warning("alerts: cannot read the count of %s: %s", key, exc)
                continue
            if not counting:
                del self._address_alerts[key]
                self.resolve(alert, None, now)

    # -- the address rules --------------------------------------------------------------------------

    def watches(self, feed: str) -> bool:
        """Whether a rule counts ``feed`` failures (``auth``, ``signin``)."""
        return bool(self._address_rules.get(feed))

    async def failure(self, network: str, feed: str) -> None:
        """Count one ``feed`` failure of ``network`` for every rule watching it, and fire a rule
        whose count reaches its threshold here. Never raises (a store failure is logged)."""
        for rule in self._address_rules.get(feed, ()):
            try:
                count = await self._state.incr(count_key(rule.name, network), rule.window)
            except Exception as exc:
                log.warning("alerts: cannot count a failure of %s for %s: %s", network, rule.name, exc)
                continue
            if count != int(rule.threshold):
                continue  # below, or above: fired when it was reached
            now = self._clock()
            alert = Alert(
                secrets.token_hex(8),
                rule.name,
                rule.kind,
                (("address", network),),
                count,
                rule.threshold,
                now,
            )
            if await self._elect(alert):
                self._address_alerts[alert.key] = alert
                await self.fire(alert)

    def spawn_failure(self, network: str, feed: str) -> None:
        """:meth:`failure` in the background (for callers that cannot wait)."""
        self._spawn(self.failure(network, feed))

    async def settle(self) -> None:
        """Wait for background work (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- acting -------------------------------------------------------------------------------------

    async def _elect(self, alert: Alert) -> bool:
        rule = self._rules[alert.rule]
        try:
            return await self._state.add(_fired_key(alert), alert.id.encode("ascii"), rule.cooldown)
        except Exception as exc:
            log.warning("alerts: cannot claim %s in the fast-state store, firing here: %s", alert.key, exc)
            return True

    async def fire(self, alert: Alert, *, test: bool = False) -> None:
        """Audit ``alert`` as fired and carry out its rule's actions (``test``: everything but
        bans and circuits, marked as a test)."""
        rule = self._rules[alert.rule]
        log.warning(
            "alerts: %s fired: %s (threshold %s) %s",
            alert.rule,
            alert.value,
            alert.threshold,
            dict(alert.labels),
        )
        self._audit.emit(
            "alert.fired",
            subject=alert.rule,
            address=alert.label("address"),
            reason=_reason(rule, alert.value),
            details={**alert.as_dict(), "actions": list(rule.actions), "test": test},
        )
        if "webhook" in rule.actions:
            self._webhook(rule, message("firing", alert, at=alert.since, test=test))
        if test:
            return
        if "ban" in rule.actions:
            await self._act(rule, alert, "ban", alert.label("address"))
        if "open_circuit" in rule.actions:
            await self._act(rule, alert, "open_circuit", alert.label("route"))

    def resolve(self, alert: Alert, value: float | None, at: float) -> None:
        """Audit ``alert`` as resolved (and tell its webhook)."""
        rule = self._rules[alert.rule]
        self._audit.emit(
            "alert.resolved",
            subject=alert.rule,
            address=alert.label("address"),
            details={
                "alert_id": alert.id,
                "rule": alert.rule,
                "kind": alert.kind,
                "labels": dict(alert.labels),
                "value": value,
                "since": alert.since,
                "lasted": round(at - alert.since, 3),
            },
        )
        if "webhook" in rule.actions:
            self._webhook(rule, message("resolved", alert, value=value, at=at))

    def _webhook(self, rule: AlertRuleSettings, body: dict[str, Any]) -> None:
        if self.webhooks is None or rule.webhook is None:
            return
        self.webhooks.send(rule.webhook, body)

    async def _act(self, rule: AlertRuleSettings, alert: Alert, action: str, target: str | None) -> None:
        details: dict[str, Any] = {
            "alert_id": alert.id,
            "rule": alert.rule,
            "action": action,
            "target": target,
        }
        reason = f"alert {rule.name}: {_reason(rule, alert.value)}"
        try:
            if target is None:
                raise _NotDone("the alert names no " + ("address" if action == "ban" else "gateway route"))
            if action == "ban":
                if self.bans is None:
                    raise _NotDone("no bans in this process")
                until: float | None = await self.bans.ban(target, rule.duration, reason)
            else:
                if self.circuits is None:
                    raise _NotDone("no gateway in this process")
                until = await self.circuits.open(target, rule.duration)
                if until is None:
                    raise _NotDone(f"no route {target!r}")
        except Exception as exc:
            log.error("alerts: %s of %s for %s failed: %s", action, target, rule.name, exc)
            self._audit.emit(
                "alert.action", outcome="failure", subject=rule.name, reason=str(exc), details=details
            )
            return
        self._audit.emit("alert.action", subject=rule.name, details={**details, "until": until})


class _NotDone(Exception):
    """An action that cannot be carried out here."""


def _reason(rule: AlertRuleSettings, value: float) -> str:
    if rule.kind == "key_expiry":
        return f"{value:g} s left < {rule.threshold:g} s"
    if rule.kind == "http_5xx_ratio":
        return f"5xx ratio {value:g} >= {rule.threshold:g}"
    return f"{value:g} in {rule.window:g} s >= {rule.threshold:g}"

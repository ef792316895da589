"""``bastion alerts``: what the alert rules fired and what was done, and a test firing.

``list`` reads the ``alert.*`` events of the audit trail in the database (every process writes
them there) and groups them by firing. ``test NAME`` fires a rule's event and webhook once from
this command, to check a receiver. Register the group on the root with ``cli.add_command(alerts)``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

import click

from bastion.cli.alerting import receivers
from bastion.cli.audit import parse_when
from bastion.cli.common import run
from bastion.cli.common import settings_from
from bastion.cli.common import when
from bastion.cli.context import BastionError
from bastion.cli.context import open_audit
from bastion.cli.context import ready_stores
from bastion.ops.alerting import AlertRunner
from bastion.ops.alerts import Alert
from bastion.ops.alerts import Readings
from bastion.ops.audit import AuditEvent
from bastion.ops.webhooks import WebhookSender
from bastion.storage.audit_protocols import AuditQuery
from bastion.storage.audit_protocols import rfc3339
from bastion.storage.sql.migrate import migrate


def firings(events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    """The ``alert.*`` events (oldest first) grouped by firing, oldest first: rule, labels,
    value, when it fired and resolved, and each action's outcome."""
    found: dict[str, dict[str, Any]] = {}
    for event in events:
        details = event.details
        alert_id = str(details.get("alert_id", ""))
        if event.type == "alert.fired":
            found[alert_id] = {
                "alert_id": alert_id,
                "rule": details.get("rule"),
                "kind": details.get("kind"),
                "labels": details.get("labels", {}),
                "value": details.get("value"),
                "threshold": details.get("threshold"),
                "fired_at": event.time,
                "resolved_at": None,
                "test": bool(details.get("test")),
                "actions": [],
            }
            continue
        firing = found.get(alert_id)
        if firing is None:
            continue  # its firing is older than --since
        if event.type == "alert.resolved":
            firing["resolved_at"] = event.time
            firing["resolved_value"] = details.get("value")
        elif event.type == "alert.action":
            firing["actions"].append(
                {
                    "action": details.get("action"),
                    "target": details.get("target"),
                    "outcome": "done" if event.outcome == "success" else "failed",
                    "until": details.get("until"),
                    "reason": event.reason,
                }
            )
        else:
            _webhook_attempt(firing, event)
    return list(found.values())


def _printed(firing: dict[str, Any]) -> dict[str, Any]:
    """A firing for ``--json``: its times in RFC 3339 UTC with milliseconds, as the audit trail
    it is read from records them."""

    def at(ts: Any) -> str | None:
        return rfc3339(ts) if isinstance(ts, int | float) else None

    actions = [{**action, "until": at(action.get("until"))} for action in firing["actions"]]
    return {
        **firing,
        "fired_at": at(firing["fired_at"]),
        "resolved_at": at(firing["resolved_at"]),
        "actions": actions,
    }


def _webhook_attempt(firing: dict[str, Any], event: AuditEvent) -> None:
    details = event.details
    target = f"{details.get('webhook')} ({details.get('status', 'firing')})"
    entry = next((a for a in firing["actions"] if a["action"] == "webhook" and a["target"] == target), None)
    if entry is None:
        entry = {"action": "webhook", "target": target, "outcome": "pending", "attempts": 0, "reason": None}
        firing["actions"].append(entry)
    entry["attempts"] = max(entry["attempts"], int(details.get("attempt") or 0))
    if event.type == "alert.webhook_delivered":
        entry["outcome"], entry["reason"] = "delivered", None
    else:
        entry["reason"] = event.reason
        entry["outcome"] = "failed" if details.get("final") else "retrying"


def _describe(action: dict[str, Any]) -> str:
    text = f"{action['action']} {action['target']}: {action['outcome']}"
    if action["action"] == "webhook":
        text += f" after {action['attempts']} attempt(s)"
    elif action.get("until") is not None:
        text += f" until {when(action['until'])}"
    if action.get("reason") and action["outcome"] != "delivered":
        text += f" ({action['reason']})"
    return text


@click.group(short_help="Show what alert rules fired, and test a rule.")
def alerts() -> None:
    """What the alert rules fired and did, and a test firing of one rule.

    Alert rules ([[alerts.rules]]) watch the counters of every gateway and authorization server
    process and act: audit events, signed webhooks, bans, opened circuits (see docs/alerts.md).
    Every firing and every action is an audit event; these commands read them.
    """


@alerts.command("list", short_help="List the alerts that fired and what was done.")
@click.option(
    "--since",
    default="24h",
    show_default=True,
    metavar="WHEN",
    help="From this time on: a duration ago (90s, 15m, 1h, 7d) or RFC 3339.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@click.pass_context
def alerts_list(ctx: click.Context, since: str, as_json: bool) -> None:
    """List the alerts fired since --since, oldest first.

    Each shows its rule, labels, value, when it fired and resolved, and each action's outcome
    (webhook deliveries with their attempts, bans, circuits).
    """
    settings = settings_from(ctx)
    query = AuditQuery(since=parse_when(since, time.time()), types=("alert.*",))

    async def go() -> list[AuditEvent]:
        stores = await ready_stores(settings)
        try:
            if settings.storage.auto_migrate:
                await migrate(stores.db)
            return [found.event for found in await stores.audit.search(query)]
        finally:
            await stores.close()

    found = firings(run(go()))
    if as_json:
        click.echo(json.dumps([_printed(firing) for firing in found], indent=2))
        return
    if not found:
        click.echo("no alerts fired")
        return
    for firing in found:
        labels = ",".join(f"{k}={v}" for k, v in firing["labels"].items()) or "-"
        test = " (test)" if firing["test"] else ""
        click.echo(
            f"{when(firing['fired_at'])}  {firing['rule']}{test}  {labels}  value {firing['value']:g}  "
            f"resolved {when(firing['resolved_at'])}"
        )
        for action in firing["actions"]:
            click.echo(f"    {_describe(action)}")


@alerts.command("test", short_help="Fire a rule's event and webhook once.")
@click.argument("name")
@click.pass_context
def alerts_test(ctx: click.Context, name: str) -> None:
    """Fire rule NAME once from here, marked as a test.

    It records its alert.fired event and sends its webhook message, waiting for the delivery
    and its retries. Bans and circuits are not carried out. Exits non-zero when the webhook was
    not delivered.
    """
    settings = settings_from(ctx)
    rule = settings.alerts.rule(name)
    if rule is None:
        known = ", ".join(r.name for r in settings.alerts.rules) or "none configured"
        raise BastionError(f"no alert rule {name!r} (rules: {known})")
    try:
        hooks = receivers(settings.alerts)
    except ValueError as exc:
        raise BastionError(str(exc)) from None

    async def go() -> list[AuditEvent]:
        stores = await ready_stores(settings)
        audit = open_audit(settings, stores, default_actor="cli")
        seen: list[AuditEvent] = []
        audit.listeners.append(seen.append)
        webhooks = WebhookSender(hooks, audit)
        try:
            if settings.storage.auto_migrate:
                await migrate(stores.db)
            webhooks.start()
            runner = AlertRunner(
                settings.alerts, state=stores.state, audit=audit, read=Readings, webhooks=webhooks
            )
            alert = Alert(
                secrets.token_hex(8), rule.name, rule.kind, (), rule.threshold, rule.threshold, time.time()
            )
            await runner.fire(alert, test=True)
            await webhooks.drain()
            return seen
        finally:
            await webhooks.close()
            await audit.close()
            await stores.close()

    events = run(go())
    click.echo(f"fired {name} (a test): alert.fired recorded")
    delivered = True
    if rule.webhook is not None:
        attempts = [e for e in events if e.type.startswith("alert.webhook_")]
        delivered = any(e.type == "alert.webhook_delivered" for e in attempts)
        outcome = (
            "delivered"
            if delivered
            else f"not delivered ({attempts[-1].reason if attempts else 'no attempt'})"
        )
        click.echo(f"webhook {rule.webhook}: {outcome} after {len(attempts)} attempt(s)")
    for action in ("ban", "open_circuit"):
        if action in rule.actions:
            click.echo(f"{action}: not carried out by a test")
    if not delivered:
        raise SystemExit(1)

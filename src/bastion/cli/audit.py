"""``bastion audit``: search the audit trail in the database, and export it for a SIEM.

Every process writes each security event to the audit log file and to the database (see
``docs/audit.md``); these commands read the database. Register the group on the root with
``cli.add_command(audit)``.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

import click
import orjson

from bastion.cli.common import run
from bastion.cli.common import settings_from
from bastion.cli.context import ready_stores
from bastion.ops.audit_events import EVENT_TYPES
from bastion.storage.audit_protocols import AuditEvent
from bastion.storage.audit_protocols import AuditQuery
from bastion.storage.audit_protocols import AuditStore
from bastion.storage.audit_protocols import parse_rfc3339
from bastion.storage.audit_protocols import rfc3339
from bastion.storage.sql.migrate import migrate

T = TypeVar("T")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
#: Events per page of an export.
PAGE = 1000
#: Widest a table column grows (longer values are cut with …).
_MAX_WIDTH = {"actor": 36, "subject": 36, "client": 36, "address": 39, "reason": 60}


def parse_when(text: str, now: float, option: str = "--since") -> float:
    """``1h``, ``30m``, ``7d`` (that long before ``now``) or an RFC 3339 time as POSIX seconds.

    Raises:
        click.BadParameter: neither.
    """
    match = _AGO.fullmatch(text.strip().lower())
    if match is not None:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration ago (90s, 15m, 1h, 7d, 2w) nor an RFC 3339 time "
            "(2025-01-31T12:00:00Z, 2025-01-31)",
            param_hint=option,
        ) from None


def check_types(types: Sequence[str]) -> tuple[str, ...]:
    """The ``--type`` values, each a known type or a prefix ending in ``*`` (``login.*``).

    Raises:
        click.BadParameter: a value that matches no event type.
    """
    for wanted in types:
        known = (
            any(name.startswith(wanted[:-1]) for name in EVENT_TYPES)
            if wanted.endswith("*")
            else wanted in EVENT_TYPES
        )
        if not known:
            raise click.BadParameter(
                f"{wanted!r} matches no event type (`bastion audit types` lists them)", param_hint="--type"
            )
    return tuple(types)


def _with_store(ctx: click.Context, action: Callable[[AuditStore], Awaitable[T]]) -> T:
    """Open the stores, run ``action`` on the audit store, close them."""
    settings = settings_from(ctx)

    async def go() -> T:
        stores = await ready_stores(settings)
        try:
            if settings.storage.auto_migrate:
                await migrate(stores.db)
            return await action(stores.audit)
        finally:
            await stores.close()

    return run(go())


def _when(ts: float) -> str:
    return rfc3339(ts)


def _cut(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def render_table(events: Sequence[AuditEvent]) -> list[str]:
    """Events as aligned columns under a header (``-`` for an empty field)."""
    header = ("TIME (UTC)", "TYPE", "OUTCOME", "ACTOR", "SUBJECT", "CLIENT", "ADDRESS", "REASON")
    names = ("time", "type", "outcome", "actor", "subject", "client", "address", "reason")
    rows = [
        tuple(
            _cut(value or "-", _MAX_WIDTH.get(name, 64))
            for name, value in zip(
                names,
                (_when(e.time), e.type, e.outcome, e.actor, e.subject, e.client, e.address, e.reason),
                strict=True,
            )
        )
        for e in events
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


_since_option = click.option(
    "--since", metavar="WHEN", help="From this time on: a duration ago (90s, 15m, 1h, 7d) or RFC 3339."
)
_until_option = click.option("--until", metavar="WHEN", help="Before this time (same forms as --since).")
_type_option = click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only this event type (login.failed), or a family (login.*); repeat for several.",
)
_subject_option = click.option(
    "--subject", metavar="ID", help="Only events about this user id, client id, key id or network."
)
_client_option = click.option(
    "--client", metavar="CLIENT_ID", help="Only events involving this OAuth client id."
)


def _query(
    since: str | None, until: str | None, types: tuple[str, ...], subject: str | None, client: str | None
) -> AuditQuery:
    now = time.time()
    return AuditQuery(
        since=None if since is None else parse_when(since, now),
        until=None if until is None else parse_when(until, now, "--until"),
        types=check_types(types),
        subject=subject,
        client=client,
    )


@click.group(short_help="Search and export the audit trail.")
def audit() -> None:
    """Search and export the audit trail stored in the database.

    It holds every sign-in, token, consent, key, client, user, role and ban event of every
    process (see docs/audit.md).

    Events are kept for logging.audit_retention_days (default 90). The same events are written
    as JSON lines to logging.audit_log as they happen.
    """


@audit.command("search", short_help="Show the latest events that match.")
@_since_option
@_until_option
@_type_option
@_subject_option
@_client_option
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="Show at most this many events (the latest ones).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one event per line (for a SIEM).")
@click.pass_context
def audit_search(
    ctx: click.Context,
    since: str | None,
    until: str | None,
    types: tuple[str, ...],
    subject: str | None,
    client: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the latest --limit events matching every filter given, oldest first.

    \b
    Examples:
      bastion audit search --since 1h --type login.failed
      bastion audit search --since 2025-01-31T00:00:00Z --type 'refresh_token.*' --client web
      bastion audit search --subject 4f1c… --json
    """
    query = replace(_query(since, until, types, subject, client), limit=limit, newest_first=True)
    found = _with_store(ctx, lambda store: store.search(query))
    events = [item.event for item in reversed(found)]
    if as_json:
        for event in events:
            click.echo(orjson.dumps(event.as_dict()).decode())
        return
    if not events:
        click.echo("no audit events match")
        return
    for line in render_table(events):
        click.echo(line)


async def _pages(store: AuditStore, query: AuditQuery) -> AsyncIterator[list[AuditEvent]]:
    while True:
        found = await store.search(query)
        if not found:
            return
        yield [item.event for item in found]
        last = found[-1]
        query = replace(query, after=(last.event.time, last.id))


@audit.command("export", short_help="Write matching events as JSON lines (for a SIEM).")
@_since_option
@_until_option
@_type_option
@_subject_option
@_client_option
@click.pass_context
def audit_export(
    ctx: click.Context,
    since: str | None,
    until: str | None,
    types: tuple[str, ...],
    subject: str | None,
    client: str | None,
) -> None:
    """Write every event matching the filters as JSON lines, oldest first.

    The lines go to standard output (the same lines as the audit log), the count to
    standard error.

    \b
    Example:
      bastion audit export --since 2025-01-01 --until 2025-02-01 > january.jsonl
    """
    query = replace(_query(since, until, types, subject, client), limit=PAGE)
    out = sys.stdout.buffer

    async def write(store: AuditStore) -> int:
        count = 0
        async for page in _pages(store, query):
            out.write(b"".join(orjson.dumps(event.as_dict()) + b"\n" for event in page))
            count += len(page)
        out.flush()
        return count

    count = _with_store(ctx, write)
    click.echo(f"exported {count} event(s)", err=True)


@audit.command("types", short_help="List the event types.")
def audit_types() -> None:
    """List every event type with what it records."""
    width = max(len(name) for name in EVENT_TYPES)
    for name, meaning in EVENT_TYPES.items():
        click.echo(f"{name:{width}}  {meaning}")

"""``bastion bans``: list, add and remove banned client addresses; and the gateway's ban wiring.

Bans are enforced by every gateway process sharing the stores (see :mod:`bastion.gateway.bans`):
a ban added or removed here reaches them through the fast-state store's ``bans`` channel at
once, and a gateway that was disconnected catches up from the durable record. Register the group
on the root with ``cli.add_command(bans)``.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import TypeVar

import click
from prometheus_client import CollectorRegistry

from bastion.cli.common import duration_seconds
from bastion.cli.common import run
from bastion.cli.common import settings_from
from bastion.cli.common import table
from bastion.cli.common import when
from bastion.cli.context import BastionError
from bastion.cli.context import open_audit
from bastion.cli.context import ready_stores
from bastion.gateway.autoban import BanGuard
from bastion.gateway.autoban import BanMetrics
from bastion.gateway.bans import Audit
from bastion.gateway.bans import BanBook
from bastion.gateway.bans import BanFeed
from bastion.gateway.bans import BanSet
from bastion.gateway.bans import parse_network
from bastion.gateway.settings import GatewaySettings
from bastion.ops.feeds import FeedMetrics
from bastion.settings import Settings
from bastion.storage.ban_protocols import Ban
from bastion.storage.open import Stores
from bastion.storage.sql.migrate import migrate

T = TypeVar("T")

#: The longest manual ban (a year): a ban is a temporary measure; ``ip_deny`` is for good.
MAX_BAN_SECONDS = 365 * 86400


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d``, ``1w`` as seconds.

    Raises:
        click.BadParameter: anything else, zero, or more than a year.
    """
    try:
        seconds = duration_seconds(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not 0 < seconds <= MAX_BAN_SECONDS:
        raise click.BadParameter(
            "a ban lasts more than 0 seconds and at most a year (use gateway.ip_deny for good)"
        )
    return seconds


def ban_json(ban: Ban) -> dict[str, object]:
    """A ban as printed by ``--json`` (times in RFC 3339 UTC, as every list prints them)."""
    return {**ban.as_dict(), "since": when(ban.since), "until": when(ban.until)}


def _gateway(settings: Settings) -> GatewaySettings | None:
    return settings.gateway


def never_banned(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Networks no ban may cover: ``gateway.trusted_proxies`` and ``gateway.bans.exempt``."""
    gateway = _gateway(settings)
    if gateway is None:
        return []
    return [*gateway.trusted_proxies, *gateway.bans.exempt]


def bannable(settings: Settings) -> Callable[[str], str]:
    """The check of a network an operator asks to ban (``bastion bans add``, the admin API):
    it returns the network's canonical form, or raises ``ValueError`` when it is not an address
    or CIDR, or when it overlaps a trusted proxy or exempt network (a ban there would shut out
    every client behind the proxy)."""
    protected = never_banned(settings)

    def check(target: str) -> str:
        network = parse_network(target)
        banned = ipaddress.ip_network(network, strict=False)
        for net in protected:
            if net.version == banned.version and banned.overlaps(net):  # type: ignore[arg-type]
                raise ValueError(
                    f"{network} overlaps {net}, a trusted proxy or exempt network "
                    "(gateway.trusted_proxies, gateway.bans.exempt); it cannot be banned"
                )
        return network

    return check


def _with_book(ctx: click.Context, action: Callable[[BanBook], Awaitable[T]]) -> T:
    """Open the stores and the audit log, run ``action`` on a :class:`BanBook`, close them."""
    settings = settings_from(ctx)

    async def go() -> T:
        stores = await ready_stores(settings)
        audit = open_audit(settings, stores, default_actor="cli")
        try:
            if settings.storage.auto_migrate:
                await migrate(stores.db)
            return await action(BanBook(stores.bans, stores.state, audit))
        finally:
            await audit.close()
            await stores.close()

    return run(go())


@click.group(short_help="List, add and remove banned client addresses.")
def bans() -> None:
    """Banned client addresses: the gateway refuses their requests with 403 until the ban ends.

    Bans are earned automatically (too many authentication failures, rate-limit refusals or
    refused requests within a window, see [gateway.bans]) or added here. Every gateway process
    sharing the stores enforces a ban or lifts it at once. Each ban and unban is an audit event.
    An IPv6 address is banned with its whole /64.
    """


@bans.command("list", short_help="List the bans in force.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@click.pass_context
def bans_list(ctx: click.Context, as_json: bool) -> None:
    """List the bans in force: network, source (auto or manual), since, until, repeat, reason."""
    found = _with_book(ctx, lambda book: book.active())
    if as_json:
        click.echo(json.dumps([ban_json(ban) for ban in found], indent=2))
        return
    if not found:
        click.echo("no bans in force")
        return
    header = ("NETWORK", "SOURCE", "SINCE (UTC)", "UNTIL (UTC)", "REPEAT", "REASON")
    rows = [
        (ban.network, ban.source, when(ban.since), when(ban.until), str(ban.repeat), ban.reason)
        for ban in found
    ]
    for line in table(header, rows):
        click.echo(line)


@bans.command("add", short_help="Ban an address or network for a while.")
@click.argument("target", metavar="ADDRESS|CIDR")
@click.option(
    "--for",
    "duration",
    required=True,
    metavar="DURATION",
    help="How long: 90s, 15m, 1h, 2d, 1w (at most a year).",
)
@click.option("--reason", required=True, help="Why (shown by `bastion bans list` and audited).")
@click.option("--json", "as_json", is_flag=True, help="Print the ban as JSON.")
@click.pass_context
def bans_add(ctx: click.Context, target: str, duration: str, reason: str, as_json: bool) -> None:
    """Ban ADDRESS (an IPv6 address as its /64) or CIDR for --for, with --reason.

    A ban of the same network replaces the one in force. Networks that hold a trusted proxy or
    an exempt network (gateway.trusted_proxies, gateway.bans.exempt) cannot be banned: a ban
    there would shut out every client behind the proxy.
    """
    seconds = parse_duration(duration)
    try:
        parse_network(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS|CIDR") from None
    if not reason.strip():
        raise click.BadParameter("give a reason", param_hint="--reason")
    try:
        network = bannable(settings_from(ctx))(target)
    except ValueError as exc:
        raise BastionError(str(exc)) from None
    now = time.time()
    ban = Ban(network, reason.strip(), "manual", now, now + seconds)

    async def go(book: BanBook) -> None:
        await book.ban(ban)

    _with_book(ctx, go)
    if as_json:
        click.echo(json.dumps(ban_json(ban), indent=2))
    else:
        click.echo(f"banned {network} until {when(ban.until)}: {ban.reason}")


@bans.command("remove", short_help="Lift the ban of an address or network.")
@click.argument("target", metavar="ADDRESS|CIDR")
@click.option("--reason", default="lifted by an operator", show_default=True, help="Why (audited).")
@click.pass_context
def bans_remove(ctx: click.Context, target: str, reason: str) -> None:
    """Lift the ban of ADDRESS or CIDR, as `bastion bans list` shows it, in every gateway at once.

    Its failure counts are forgotten too, so the address starts afresh. An IPv6 address names
    the ban of its /64.
    """
    try:
        network = parse_network(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS|CIDR") from None
    lifted = _with_book(ctx, lambda book: book.lift(network, reason))
    if lifted is None:
        raise BastionError(f"no ban of {network} is in force (`bastion bans list` shows them)")
    click.echo(f"lifted the ban of {network}")


# -- the gateway's side ----------------------------------------------------------------------------


class GatewayBans:
    """One gateway process's bans: the local set, its feed, and the guard the gateway calls."""

    def __init__(
        self,
        settings: GatewaySettings,
        stores: Stores,
        *,
        registry: CollectorRegistry,
        feed_metrics: FeedMetrics,
        audit: Audit | None,
    ) -> None:
        self.set = BanSet()
        self.feed = BanFeed(self.set, stores.state, stores.bans, metrics=feed_metrics)
        self.guard = BanGuard(
            settings.bans,
            settings.trusted_proxies,
            bans=self.set,
            state=stores.state,
            book=BanBook(stores.bans, stores.state, audit),
            metrics=BanMetrics(self.set, registry),
        )

    def start(self) -> None:
        self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()
        await self.guard.close()

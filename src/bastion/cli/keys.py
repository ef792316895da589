"""``bastion keys``: list, rotate, revoke, import, export and check the signing keys.

Thin wrappers over :class:`bastion.services.keys.KeyService`; register the group on the root
with ``cli.add_command(keys)``. Every command but ``check`` first applies the automatic schedule
(the first keys are created, due rotations happen), as a starting server would.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import IO
from typing import Any

import aiohttp
import click

from bastion.cli.common import settings_from
from bastion.cli.common import table
from bastion.cli.common import when
from bastion.cli.common import with_services
from bastion.protocol import jose
from bastion.protocol.models import SigningKey
from bastion.services.container import Services
from bastion.services.keycheck import DAY
from bastion.services.keycheck import Finding
from bastion.services.keycheck import check_gateway
from bastion.services.keycheck import check_jwks
from bastion.services.keycheck import check_rotation
from bastion.services.keycheck import served_kids
from bastion.services.keyfiles import FORMATS
from bastion.services.keyfiles import KeyFileError
from bastion.services.keyfiles import read_private_key
from bastion.services.keys import Activation
from bastion.services.keys import KeyState
from bastion.services.keys import Revocation

_ALGORITHMS = click.Choice(list(jose.SUPPORTED_ALGORITHMS))


@click.group(short_help="List, rotate, revoke, import and export signing keys.")
def keys() -> None:
    """Manage the keys that sign tokens: list, rotate, revoke, import, export.

    Keys are stored encrypted under the key-encryption key (BASTION_KEK). The public halves
    are published at /jwks.json for gateways and services to verify tokens with.
    """


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List signing keys with their states and dates."""

    async def go(services: Services) -> list[dict[str, Any]]:
        await services.keys.ensure()
        return [
            {**dataclasses.asdict(k), "state": services.keys.state(k).value} for k in services.keys.all_keys()
        ]

    rows = with_services(ctx, go)
    if as_json:
        printed = [
            {
                k: (when(v) if k.endswith("_at") and v is not None else v)
                for k, v in row.items()
                if k != "public_jwk"
            }
            for row in rows
        ]
        click.echo(json.dumps(printed, indent=2))
        return
    header = ("KID", "ALG", "GEN", "STATE", "CREATED (UTC)", "SIGNS FROM (UTC)")
    lines = [
        # Generation 0 and below: imported to verify only (see bastion.services.keys).
        (
            row["kid"],
            row["alg"],
            str(row["generation"]),
            row["state"],
            when(row["created_at"]),
            when(row["activates_at"]) if row["generation"] >= 1 else "never",
        )
        for row in rows
    ]
    for line in table(header, lines):
        click.echo(line)


@keys.command("rotate", short_help="Create the next signing key.")
@click.option(
    "--alg",
    "algs",
    multiple=True,
    type=_ALGORITHMS,
    help="Algorithm to rotate; repeat for several (default: every configured one).",
)
@click.option(
    "--publish-delay",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Seconds the new key is published before it signs (default: [authorization_server] key_publish_delay).",
)
@click.pass_context
def keys_rotate(ctx: click.Context, algs: tuple[str, ...], publish_delay: float | None) -> None:
    """Create the next signing key; it is published at once and signs after the publish delay."""

    async def go(services: Services) -> list[SigningKey]:
        await services.keys.ensure()
        targets = algs or services.keys.policy.algorithms
        return [await services.keys.rotate(alg, publish_delay=publish_delay) for alg in targets]

    for key in with_services(ctx, go):
        click.echo(f"new {key.alg} key {key.kid}: published now, signs from {when(key.activates_at)}")


@keys.command("revoke", short_help="Withdraw a compromised signing key at once.")
@click.argument("kid")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def keys_revoke(ctx: click.Context, kid: str, yes: bool) -> None:
    """Withdraw a signing key at once, e.g. because its private key leaked.

    The key leaves the JWKS, no process signs with it any more, and every token it signed is
    refused from now on: by introspection, UserInfo and every gateway sharing the fast-state
    store. If it was the active key of its algorithm, a new key replaces it and signs at once.
    A revocation cannot be undone. KID is as shown by `bastion keys list`; one that starts with
    `-` follows `--` (`bastion keys revoke --yes -- -Xf3…`).
    """

    async def find(services: Services) -> tuple[SigningKey, KeyState]:
        await services.keys.ensure()
        for key in services.keys.all_keys():
            if key.kid == kid:
                return key, services.keys.state(key)
        raise click.ClickException(f"no signing key has kid {kid!r} (`bastion keys list` shows them)")

    key, state = with_services(ctx, find)
    if not yes and state is not KeyState.REVOKED:
        click.confirm(
            f"Revoke the {state.value} {key.alg} key {kid}? Every token it signed stops working; "
            "this cannot be undone.",
            abort=True,
        )

    async def revoke(services: Services) -> Revocation:
        return await services.keys.revoke(kid)

    done = with_services(ctx, revoke)
    if done.already and done.key.revoked_at is not None:
        click.echo(f"{done.key.alg} key {kid} was already revoked at {when(done.key.revoked_at)}")
        return
    click.echo(f"revoked {done.key.alg} key {kid}: out of the JWKS; tokens it signed are now refused")
    if done.replacement is not None:
        click.echo(f"new {done.replacement.alg} key {done.replacement.kid}: published and signing now")


@keys.command("import", short_help="Import a private signing key (PEM or JWK).")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--kid", metavar="KID", help="Key id the key's tokens carry in their header (required for PEM)."
)
@click.option("--alg", type=_ALGORITHMS, help="Algorithm it signs (default: the JWK's alg or the key type).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Format of FILE (default: detected from its content).",
)
@click.option(
    "--activate",
    type=click.Choice([a.value for a in Activation]),
    default=Activation.NEVER.value,
    show_default=True,
    help="When it starts signing: never (verify only), now, or after-delay.",
)
@click.option(
    "--publish-delay",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="With --activate after-delay: seconds before it signs (default: key_publish_delay).",
)
@click.pass_context
def keys_import(
    ctx: click.Context,
    file: IO[bytes],
    kid: str | None,
    alg: str | None,
    fmt: str | None,
    activate: str,
    publish_delay: float | None,
) -> None:
    """Import another provider's private signing key, so the tokens it signed keep working.

    FILE (`-` for standard input) holds an unencrypted private key: PEM (PKCS#8 or
    traditional) or a private JWK, which carries its own kid and alg. The key is stored
    encrypted like a generated one and published in the JWKS at once. With --activate never
    (the default) it only verifies: it stays published for the longest token lifetime, then
    retires. With now or after-delay it becomes the signing key of its algorithm.
    """
    if publish_delay is not None and activate != Activation.AFTER_DELAY.value:
        raise click.UsageError("--publish-delay applies only to --activate after-delay")
    name = str(getattr(file, "name", "-"))
    source = "standard input" if name in ("-", "<stdin>") else name
    try:
        found = read_private_key(file.read(), kid=kid, alg=alg, fmt=fmt, source=source)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None

    async def go(services: Services) -> tuple[SigningKey, float]:
        await services.keys.ensure()
        try:
            key = await services.keys.import_key(
                found.private_key,
                kid=found.kid,
                alg=found.alg,
                activate=Activation(activate),
                publish_delay=publish_delay,
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        return key, key.activates_at + services.keys.policy.retention

    key, published_until = with_services(ctx, go)
    if activate == Activation.NEVER.value:
        click.echo(
            f"imported {key.alg} key {key.kid}: published now to verify the tokens it signed "
            f"(until {when(published_until)}); it never signs"
        )
    elif activate == Activation.NOW.value:
        click.echo(f"imported {key.alg} key {key.kid}: published and signing now")
    else:
        click.echo(f"imported {key.alg} key {key.kid}: published now, signs from {when(key.activates_at)}")


@keys.command("export", short_help="Print the public keys (the JWKS).")
@click.option("--public", is_flag=True, help="Export the public keys, as a JWK Set (required).")
@click.pass_context
def keys_export(ctx: click.Context, public: bool) -> None:
    """Print the JWK Set served at /jwks.json: public members only.

    Useful to pin the keys in a gateway or service that cannot reach the authorization
    server. Private keys are never exported; they stay encrypted in the database.
    """
    if not public:
        raise click.UsageError(
            "private keys are never exported; `bastion keys export --public` prints the public JWKS"
        )

    async def go(services: Services) -> dict[str, list[dict[str, Any]]]:
        await services.keys.ensure()
        return services.keys.jwks()

    click.echo(json.dumps(with_services(ctx, go), indent=2))


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return await response.json(content_type=None)


async def _fetch_all(jwks_url: str, gateways: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """The served JWKS and each gateway's ``/keys`` answer (an exception where a fetch failed)."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def get(url: str) -> Any:
            try:
                return await _get_json(session, url)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                return exc

        jwks = await get(jwks_url)
        held = {gateway: await get(gateway.rstrip("/") + "/keys") for gateway in gateways}
    return jwks, held


@keys.command("check", short_help="Report stale, unpublished or lagging keys (exit 1 if any).")
@click.option("--jwks-url", metavar="URL", help="The JWKS to check (default: <issuer>/jwks.json).")
@click.option(
    "--gateway",
    "gateways",
    multiple=True,
    metavar="URL",
    help="A gateway's admin listener (http://127.0.0.1:9100) whose cached keys to check; repeatable.",
)
@click.option(
    "--grace-days",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Days past key_rotation_days before a signing key counts as overdue.",
)
@click.option(
    "--warn-days",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Report a signing key due for rotation within this many days with no successor published.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@click.pass_context
def keys_check(
    ctx: click.Context,
    jwks_url: str | None,
    gateways: tuple[str, ...],
    grace_days: float,
    warn_days: float,
    as_json: bool,
) -> None:
    """Check the signing keys before they go stale.

    Exits 0 when all is well, else 1 with one line per finding, naming the key.

    Findings: a signing key older than key_rotation_days plus the grace (overdue), one due
    soon with no successor published (expiring), a published key missing from the JWKS the
    running server serves or a revoked one still in it, and a key a gateway has not picked up
    although it was published longer than the publish delay ago (gateway_lag; the gateway
    lists the keys it holds at /keys on its admin listener). Nothing is changed: unlike the
    other key commands, this one does not apply the rotation schedule.
    """
    settings = settings_from(ctx)
    issuer = settings.authorization_server.issuer
    url = jwks_url or issuer.rstrip("/") + "/jwks.json"

    async def go(services: Services) -> list[Finding]:
        now = time.time()
        findings = check_rotation(services.keys, now, grace=grace_days * DAY, warn_within=warn_days * DAY)
        jwks, held = await _fetch_all(url, gateways)
        try:
            if isinstance(jwks, Exception):
                raise jwks
            findings += check_jwks(services.keys, served_kids(jwks), now, where=url)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            findings.append(
                Finding(
                    "unreachable", None, None, f"cannot read the JWKS at {url}: {exc or type(exc).__name__}"
                )
            )
        for gateway, answer in held.items():
            if isinstance(answer, Exception) or not isinstance(answer.get("issuers"), dict):
                reason = answer if isinstance(answer, Exception) else "not a /keys answer"
                findings.append(
                    Finding(
                        "unreachable",
                        None,
                        None,
                        f"cannot read the keys of the gateway at {gateway}: {reason}",
                    )
                )
                continue
            kids = {name: entry.get("kids", []) for name, entry in answer["issuers"].items()}
            findings += check_gateway(services.keys, issuer, kids, now, where=gateway)
        return findings

    findings = with_services(ctx, go)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(f) for f in findings], indent=2))
    else:
        for finding in findings:
            click.echo(finding.line())
    if findings:
        ctx.exit(1)

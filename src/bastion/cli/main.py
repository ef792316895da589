"""``bastion``: the command line, and the composition root of every process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from collections.abc import Coroutine
from datetime import UTC
from datetime import datetime
from functools import wraps
from typing import Any
from typing import TypeVar

import click

from bastion import __version__
from bastion.cli.config import ConfigError
from bastion.cli.config import load_settings
from bastion.cli.context import open_services
from bastion.cli.context import stores_for
from bastion.protocol.models import Client
from bastion.protocol.models import TokenFormat
from bastion.services.clients import ClientError
from bastion.services.crypto import SealError
from bastion.settings import Settings
from bastion.settings import describe
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import NotFound
from bastion.storage.protocols import StorageError

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning storage failures into a clear message."""
    try:
        return asyncio.run(coro)
    except (Conflict, NotFound) as exc:
        raise click.ClickException(str(exc)) from None
    except StorageError as exc:
        raise click.ClickException(
            f"{exc}. Is the database reachable? Check [storage] in the config."
        ) from None
    except SealError as exc:
        raise click.ClickException(str(exc)) from None


def settings_from(ctx: click.Context) -> Settings:
    """Settings for this invocation (loaded once)."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"], obj["config_path"] = load_settings(obj.get("config"))
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    settings: Settings = obj["settings"]
    return settings


def with_settings(func: Callable[..., T]) -> Callable[..., T]:
    """Pass the loaded settings as the first argument."""

    @click.pass_context
    @wraps(func)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> T:
        return func(settings_from(ctx), *args, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "-c",
    metavar="FILE",
    help="Config file (TOML). Default: $BASTION_CONFIG, else ./bastion.toml if present, else built-in defaults.",
)
@click.version_option(__version__, prog_name="bastion")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Bastion: OAuth 2.1 / OpenID Connect authorization server, API gateway and token validation.

    Every setting can come from the config file or from BASTION_SECTION__KEY environment
    variables; secrets (BASTION_KEK) only from the environment or files.
    """
    ctx.ensure_object(dict)["config"] = config


# -- config ---------------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Inspect and validate configuration."""


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, key) for v in value]
    if isinstance(value, str) and ("secret" in key or "password" in key or ("://" in value and "@" in value)):
        if "://" in value and "@" in value:
            scheme, rest = value.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in creds else value
        return "***"
    return value


@config.command("check", short_help="Validate the configuration and print it.")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the configuration and print the effective settings (secrets masked)."""
    settings = settings_from(ctx)
    source = ctx.obj.get("config_path")
    click.echo(f"# configuration is valid (source: {source or 'built-in defaults'})", err=True)
    click.echo(json.dumps(_masked(settings.model_dump(mode="json")), indent=2))


@config.command("keys")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (docs/configuration.md is made this way).")
def config_keys(markdown: bool) -> None:
    """List every setting with its default and meaning."""
    rows = describe()
    if markdown:
        click.echo(render_markdown(rows))
        return
    for key, default, description in rows:
        shown = "" if default is None else json.dumps(default, default=str)
        click.echo(f"{key} = {shown}\n    {description.replace(chr(10), ' ')}\n")


def render_markdown(rows: list[tuple[str, Any, str]]) -> str:
    """The settings reference as Markdown."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `bastion config keys --markdown` from the settings models; every key can be set",
        "in `bastion.toml` or overridden with `BASTION_SECTION__KEY` environment variables.",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    for key, default, description in rows:
        shown = "(required)" if default is None else json.dumps(default, default=str)
        text = " ".join(description.split()).replace("|", "\\|")
        lines.append(f"| `{key}` | {shown if default is None else f'`{shown}`'} | {text} |")
    return "\n".join(lines)


# -- migrate --------------------------------------------------------------------------------


@cli.command()
@with_settings
def migrate(settings: Settings) -> None:
    """Apply pending database migrations."""
    from bastion.storage.sql.migrate import migrate as apply
    from bastion.storage.sql.migrate import pending

    async def go() -> tuple[list[str], str | None]:
        stores = stores_for(settings)
        try:
            todo = await pending(stores.db)
            _, after = await apply(stores.db)
            return todo, after
        finally:
            await stores.close()

    todo, after = run(go())
    if todo:
        click.echo(f"applied {len(todo)} migration(s): {', '.join(todo)}; schema at {after}")
    else:
        click.echo(f"schema is up to date ({after})")


# -- clients --------------------------------------------------------------------------------


def client_json(client: Client, secret: str | None = None) -> dict[str, Any]:
    """The scripted shape of a client (stable: other tools parse it)."""
    data: dict[str, Any] = {
        "client_id": client.client_id,
        "name": client.name,
        "public": client.public,
        "grant_types": sorted(client.grant_types),
        "scopes": sorted(client.scopes),
        "redirect_uris": list(client.redirect_uris),
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "audience": client.audience,
        "token_format": client.token_format.value,
        "first_party": client.first_party,
        "disabled": client.disabled,
        "created_at": datetime.fromtimestamp(client.created_at, UTC).isoformat(timespec="seconds"),
    }
    if secret is not None:
        data["client_secret"] = secret
    return data


def _print_client(client: Client, secret: str | None, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(client_json(client, secret), indent=2))
        return
    for key, value in client_json(client).items():
        shown = " ".join(value) if isinstance(value, list) else value
        click.echo(f"{key:26} {shown}")
    if secret is not None:
        click.echo(f"{'client_secret':26} {secret}")
        click.secho("Store the secret now: it is shown only once.", fg="yellow", err=True)


@cli.group()
def clients() -> None:
    """Register and manage OAuth clients."""


@clients.command("create")
@click.option("--name", required=True, help="Human-readable name (shown on consent pages).")
@click.option("--public", is_flag=True, help="A public client (SPA, mobile): no secret, PKCE only.")
@click.option(
    "--grant-type",
    "grant_types",
    multiple=True,
    type=click.Choice(["client_credentials", "authorization_code", "refresh_token"]),
    help="Allowed grant type; repeat for several. Default: client_credentials.",
)
@click.option(
    "--scope", "scopes", multiple=True, help="Allowed scope; repeat, or give several separated by spaces."
)
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Registered redirect URI (exact match).")
@click.option(
    "--post-logout-redirect-uri", "logout_uris", multiple=True, help="Allowed post-logout redirect URI."
)
@click.option("--audience", help="Default audience of this client's access tokens.")
@click.option(
    "--token-format",
    type=click.Choice(["jwt", "opaque"]),
    default="jwt",
    show_default=True,
    help="JWT (RFC 9068) or opaque access tokens (checked by introspection).",
)
@click.option("--first-party", is_flag=True, help="Trusted first-party app: users are not asked for consent.")
@click.option("--client-id", help="Choose the client id (default: random).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@with_settings
def clients_create(
    settings: Settings,
    name: str,
    public: bool,
    grant_types: tuple[str, ...],
    scopes: tuple[str, ...],
    redirect_uris: tuple[str, ...],
    logout_uris: tuple[str, ...],
    audience: str | None,
    token_format: str,
    first_party: bool,
    client_id: str | None,
    as_json: bool,
) -> None:
    """Register a client and print its id and, once, its secret."""

    async def go() -> tuple[Client, str | None]:
        async with open_services(settings) as services:
            return await services.clients.create(
                name=name,
                public=public,
                grant_types=grant_types or ("client_credentials",),
                scopes=[s for value in scopes for s in value.split()],
                redirect_uris=redirect_uris,
                post_logout_redirect_uris=logout_uris,
                audience=audience,
                token_format=TokenFormat(token_format),
                first_party=first_party,
                client_id=client_id,
            )

    try:
        client, secret = run(go())
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    _print_client(client, secret, as_json)


@clients.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@with_settings
def clients_list(settings: Settings, as_json: bool) -> None:
    """List registered clients."""

    async def go() -> list[Client]:
        async with open_services(settings) as services:
            return await services.clients.list()

    found = run(go())
    if as_json:
        click.echo(json.dumps([client_json(c) for c in found], indent=2))
        return
    if not found:
        click.echo("no clients yet: bastion clients create --name NAME --scope SCOPE")
        return
    click.echo(f"{'CLIENT ID':24} {'NAME':20} {'TYPE':12} {'GRANTS':45} STATUS")
    for c in found:
        kind = "public" if c.public else "confidential"
        status = "disabled" if c.disabled else "enabled"
        click.echo(
            f"{c.client_id:24} {c.name[:20]:20} {kind:12} {','.join(sorted(c.grant_types)):45} {status}"
        )


def _client_command(action: str) -> Callable[[Settings, str, bool], None]:
    def command(settings: Settings, client_id: str, as_json: bool) -> None:
        async def go() -> tuple[Client | None, str | None]:
            async with open_services(settings) as services:
                if action == "show":
                    return await services.clients.get(client_id), None
                if action == "rotate-secret":
                    return await services.clients.rotate_secret(client_id)
                if action == "disable":
                    return await services.clients.set_disabled(client_id, True), None
                if action == "enable":
                    return await services.clients.set_disabled(client_id, False), None
                deleted = await services.clients.delete(client_id)
                return (None, "deleted") if deleted else (None, None)

        try:
            client, extra = run(go())
        except (ClientError, StorageError) as exc:
            raise click.ClickException(str(exc)) from None
        if action == "delete":
            if extra is None:
                raise click.ClickException(f"no client {client_id!r}")
            click.echo(
                json.dumps({"client_id": client_id, "deleted": True}) if as_json else f"deleted {client_id}"
            )
            return
        if client is None:
            raise click.ClickException(f"no client {client_id!r} (see `bastion clients list`)")
        _print_client(client, extra, as_json)

    return command


for _action, _help in (
    ("show", "Show one client."),
    ("rotate-secret", "Replace a client's secret and print the new one (once)."),
    ("disable", "Disable a client: its tokens can no longer be obtained."),
    ("enable", "Re-enable a disabled client."),
    ("delete", "Delete a client."),
):
    clients.command(_action, help=_help)(
        click.argument("client_id")(
            click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")(
                with_settings(_client_command(_action))
            )
        )
    )


# -- keys -----------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Inspect and rotate signing keys."""


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@with_settings
def keys_list(settings: Settings, as_json: bool) -> None:
    """List signing keys with their states and dates."""

    async def go() -> list[dict[str, Any]]:
        async with open_services(settings) as services:
            await services.keys.ensure()
            return [
                {**dataclasses.asdict(k), "state": services.keys.state(k).value}
                for k in services.keys.all_keys()
            ]

    rows = run(go())
    if as_json:
        click.echo(
            json.dumps([{k: v for k, v in row.items() if k != "public_jwk"} for row in rows], indent=2)
        )
        return
    click.echo(f"{'KID':18} {'ALG':6} {'GEN':>3}  {'STATE':8} {'CREATED (UTC)':20} {'SIGNS FROM (UTC)':20}")
    for row in rows:
        click.echo(
            f"{row['kid']:18} {row['alg']:6} {row['generation']:>3}  {row['state']:8} "
            f"{_when(row['created_at']):20} {_when(row['activates_at']):20}"
        )


@keys.command("rotate", short_help="Create the next signing key.")
@click.option(
    "--alg",
    "algs",
    multiple=True,
    type=click.Choice(["ES256", "ES384", "RS256", "PS256", "EdDSA"]),
    help="Algorithm to rotate; repeat for several (default: every configured one).",
)
@click.option(
    "--publish-delay",
    type=float,
    help="Seconds the new key is published before it signs (default: [authorization_server] key_publish_delay).",
)
@with_settings
def keys_rotate(settings: Settings, algs: tuple[str, ...], publish_delay: float | None) -> None:
    """Create the next signing key; it is published at once and signs after the publish delay."""

    async def go() -> list[Any]:
        async with open_services(settings) as services:
            await services.keys.ensure()
            targets = algs or services.keys.policy.algorithms
            return [await services.keys.rotate(alg, publish_delay=publish_delay) for alg in targets]

    for key in run(go()):
        click.echo(f"new {key.alg} key {key.kid}: published now, signs from {_when(key.activates_at)} UTC")


# -- serve, reload, demo --------------------------------------------------------------------


@cli.command(short_help="Run the authorization server and the gateway.")
@click.option(
    "--workers", type=click.IntRange(1, 256), default=1, show_default=True, help="Processes to run."
)
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations at start-up.")
@click.pass_context
def serve(ctx: click.Context, workers: int, no_migrate: bool) -> None:
    """Run the authorization server (and the gateway, when [gateway] is configured).

    SIGHUP (or `bastion reload`) re-reads the config and swaps the gateway's routes without
    dropping a request; SIGTERM or Ctrl-C stops gracefully.
    """
    from bastion.cli.serve import serve as run_serve

    settings = settings_from(ctx)
    run_serve(
        settings,
        workers=workers,
        migrate=settings.storage.auto_migrate and not no_migrate,
        config_path=ctx.obj.get("config_path"),
    )


@cli.command(short_help="Reload the gateway routes of a running server.")
@with_settings
def reload(settings: Settings) -> None:
    """Reload the gateway's routes in a running `bastion serve` (same as SIGHUP)."""
    from bastion.cli.serve import send_reload

    pid = send_reload(settings)
    click.echo(f"sent SIGHUP to bastion serve (pid {pid})")


@cli.command(short_help="Run a ready-to-try demo on embedded defaults.")
@with_settings
def demo(settings: Settings) -> None:
    """Migrate, create demo clients, start the server and print commands to try."""
    from bastion.cli.demo import run_demo

    run_demo(settings)


def main() -> None:
    """Console-script entry point."""
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)

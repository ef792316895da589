"""``bastion users`` and ``bastion roles``: people who sign in, and the scopes their roles grant.

Thin wrappers over :mod:`bastion.services.users`; register them on the root group with
``cli.add_command(users)`` and ``cli.add_command(roles)``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC
from datetime import datetime
from typing import Any
from typing import TypeVar

import click

from bastion.cli.common import with_services
from bastion.cli.context import BastionError
from bastion.protocol.models import Role
from bastion.protocol.models import User
from bastion.services import users as service

T = TypeVar("T")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.ClickException("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        # getpass would warn that the input may be echoed, then read the terminal or give up.
        raise BastionError("stdin is not a terminal; pipe the password with --password-stdin")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def user_json(user: User) -> dict[str, Any]:
    """A user as printed by ``--json`` (never the password hash)."""
    return {
        "user_id": user.user_id,
        "username": user.username,
        "email": user.email,
        "name": user.name,
        "roles": sorted(user.roles),
        "disabled": user.disabled,
        "created_at": user.created_at,
    }


def role_json(role: Role) -> dict[str, Any]:
    """A role as printed by ``--json``."""
    return {"name": role.name, "scopes": sorted(role.scopes), "description": role.description}


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
_password_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of standard input."
)


@click.group()
def users() -> None:
    """Manage the people who sign in."""


@users.command("create")
@click.argument("username")
@_password_option
@click.option("--role", "roles", multiple=True, help="Role to grant; repeat for several.")
@click.option("--email", help="E-mail address (released with the email scope).")
@click.option("--name", "full_name", help="Display name (released with the profile scope).")
@_json_option
@click.pass_context
def users_create(
    ctx: click.Context,
    username: str,
    password_stdin: bool,
    roles: tuple[str, ...],
    email: str | None,
    full_name: str | None,
    as_json: bool,
) -> None:
    """Create a user (the password is hashed with argon2id)."""
    password = _read_password(password_stdin)
    user = with_services(
        ctx,
        lambda s: service.create_user(s, username, password, roles=roles, email=email, name=full_name),
    )
    if as_json:
        click.echo(json.dumps(user_json(user), indent=2))
    else:
        click.echo(f"created user {user.username} (id {user.user_id})")


@users.command("list")
@_json_option
@click.pass_context
def users_list(ctx: click.Context, as_json: bool) -> None:
    """List users."""
    found = with_services(ctx, service.list_users)
    if as_json:
        click.echo(json.dumps([user_json(u) for u in found], indent=2))
        return
    if not found:
        click.echo("no users yet: bastion users create NAME --password-stdin")
        return
    for user in found:
        state = "disabled" if user.disabled else "active"
        roles = ",".join(sorted(user.roles)) or "-"
        click.echo(
            f"{user.username:<24} {state:<9} roles={roles:<20} {user.email or '-':<30} {_when(user.created_at)}"
        )


@users.command("disable", short_help="Disable a user, end their login sessions, revoke their tokens.")
@click.argument("username")
@click.pass_context
def users_disable(ctx: click.Context, username: str) -> None:
    """Disable a user: sign-in is refused from now on.

    Every login session of the user ends (each browser must sign in again, and authorization
    codes not yet redeemed die with their session), and every refresh token of the user is
    revoked with the access tokens issued from it. Re-enabling brings none of them back.
    """
    with_services(ctx, lambda s: service.set_disabled(s, username, True))
    click.echo(f"disabled {username}")


@users.command("enable")
@click.argument("username")
@click.pass_context
def users_enable(ctx: click.Context, username: str) -> None:
    """Re-enable a disabled user."""
    with_services(ctx, lambda s: service.set_disabled(s, username, False))
    click.echo(f"enabled {username}")


@users.command("set-password", short_help="Replace a user's password and sign them out everywhere.")
@click.argument("username")
@_password_option
@click.pass_context
def users_set_password(ctx: click.Context, username: str, password_stdin: bool) -> None:
    """Replace a user's password and sign them out everywhere.

    Every login session of the user ends (each browser must sign in again, with the new
    password, and authorization codes not yet redeemed die with their session), and every
    refresh token of the user is revoked with the access tokens issued from it.
    """
    password = _read_password(password_stdin)
    with_services(ctx, lambda s: service.set_password(s, username, password))
    click.echo(f"password of {username} changed")


@users.command("set-roles")
@click.argument("username")
@click.option("--role", "roles", multiple=True, help="Role to hold; repeat for several (none: no roles).")
@click.pass_context
def users_set_roles(ctx: click.Context, username: str, roles: tuple[str, ...]) -> None:
    """Replace a user's roles."""
    user = with_services(ctx, lambda s: service.set_roles(s, username, roles))
    click.echo(f"{username}: roles={','.join(sorted(user.roles)) or '-'}")


@users.command("delete", short_help="Delete a user, end their login sessions, revoke their tokens.")
@click.argument("username")
@click.pass_context
def users_delete(ctx: click.Context, username: str) -> None:
    """Delete a user, their consents and grants.

    Every login session of the user ends first (each browser is signed out, and authorization
    codes not yet redeemed die with their session), then every refresh token of the user is
    revoked with the access tokens issued from it, and the user's record is removed.
    """
    if not with_services(ctx, lambda s: service.delete_user(s, username)):
        raise click.ClickException(f"no user named {username!r}")
    click.echo(f"deleted {username}")


@click.group()
def roles() -> None:
    """Manage roles: named sets of scopes granted to users (RBAC)."""


@roles.command("create")
@click.argument("name")
@click.option(
    "--scope", "scopes", multiple=True, required=True, help="Scope the role grants; repeat or space-separate."
)
@click.option("--description", default="", help="What the role is for.")
@_json_option
@click.pass_context
def roles_create(
    ctx: click.Context, name: str, scopes: tuple[str, ...], description: str, as_json: bool
) -> None:
    """Create a role granting scopes."""
    role = with_services(ctx, lambda s: service.create_role(s, name, scopes, description))
    if as_json:
        click.echo(json.dumps(role_json(role), indent=2))
    else:
        click.echo(f"created role {role.name}: {' '.join(sorted(role.scopes))}")


@roles.command("list")
@_json_option
@click.pass_context
def roles_list(ctx: click.Context, as_json: bool) -> None:
    """List roles."""
    found = with_services(ctx, service.list_roles)
    if as_json:
        click.echo(json.dumps([role_json(r) for r in found], indent=2))
        return
    if not found:
        click.echo("no roles yet: bastion roles create NAME --scope SCOPE")
        return
    for role in found:
        click.echo(f"{role.name:<20} {' '.join(sorted(role.scopes)):<40} {role.description}")


@roles.command("delete")
@click.argument("name")
@click.pass_context
def roles_delete(ctx: click.Context, name: str) -> None:
    """Delete a role (users holding it lose its scopes)."""
    if not with_services(ctx, lambda s: service.delete_role(s, name)):
        raise click.ClickException(f"no role named {name!r}")
    click.echo(f"deleted role {name}")

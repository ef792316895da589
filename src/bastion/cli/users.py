"""``bastion users`` and ``bastion roles``: people who sign in, and the scopes their roles grant.

Thin wrappers over :mod:`bastion.services.users`; register them on the root group with
``cli.add_command(users)`` and ``cli.add_command(roles)``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any
from typing import TypeVar

import click

from bastion.cli.common import table
from bastion.cli.common import when
from bastion.cli.common import with_services
from bastion.cli.context import BastionError
from bastion.protocol.models import Role
from bastion.protocol.models import User
from bastion.services import consent
from bastion.services import sessions as login_sessions
from bastion.services import users as service
from bastion.services.container import Services
from bastion.storage.people_protocols import Consent
from bastion.storage.people_protocols import LoginSession

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


def user_json(user: User) -> dict[str, Any]:
    """A user as printed by ``--json`` (never the password hash)."""
    return {
        "user_id": user.user_id,
        "username": user.username,
        "email": user.email,
        "name": user.name,
        "roles": sorted(user.roles),
        "disabled": user.disabled,
        "created_at": when(user.created_at),
        "updated_at": when(user.updated_at),
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
    rows = [
        (
            user.username,
            "disabled" if user.disabled else "active",
            ",".join(sorted(user.roles)) or "-",
            user.email or "-",
            when(user.created_at),
        )
        for user in found
    ]
    for line in table(("USERNAME", "STATE", "ROLES", "E-MAIL", "CREATED (UTC)"), rows):
        click.echo(line)


@users.command("show")
@click.argument("username")
@_json_option
@click.pass_context
def users_show(ctx: click.Context, username: str, as_json: bool) -> None:
    """Show one user (never the password hash)."""
    user = with_services(ctx, lambda s: service.get_user(s, username))
    if user is None:
        raise click.ClickException(f"no user named {username!r} (see `bastion users list`)")
    data = user_json(user)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        shown = " ".join(value) if isinstance(value, list) else ("-" if value is None else value)
        click.echo(f"{key:12} {shown}")


@users.command("update", short_help="Change a user's e-mail address or display name.")
@click.argument("username")
@click.option("--email", help="New e-mail address (empty: none).")
@click.option("--name", "full_name", help="New display name (empty: none).")
@_json_option
@click.pass_context
def users_update(
    ctx: click.Context, username: str, email: str | None, full_name: str | None, as_json: bool
) -> None:
    """Change a user's e-mail address or display name (roles: `bastion users set-roles`)."""
    changes: dict[str, Any] = {}
    if email is not None:
        changes["email"] = email or None
    if full_name is not None:
        changes["name"] = full_name or None
    if not changes:
        raise click.UsageError("nothing to change: give --email or --name")
    user = with_services(ctx, lambda s: service.update_user(s, username, **changes))
    if as_json:
        click.echo(json.dumps(user_json(user), indent=2))
    else:
        click.echo(f"updated {user.username}")


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
    rows = [(role.name, " ".join(sorted(role.scopes)), role.description or "-") for role in found]
    for line in table(("ROLE", "SCOPES", "DESCRIPTION"), rows):
        click.echo(line)


@roles.command("delete")
@click.argument("name")
@click.pass_context
def roles_delete(ctx: click.Context, name: str) -> None:
    """Delete a role (users holding it lose its scopes)."""
    if not with_services(ctx, lambda s: service.delete_role(s, name)):
        raise click.ClickException(f"no role named {name!r}")
    click.echo(f"deleted role {name}")


async def _user(services: Services, username: str) -> User:
    user = await service.get_user(services, username)
    if user is None:
        raise BastionError(f"no user named {username!r} (see `bastion users list`)")
    return user


@click.group()
def sessions() -> None:
    """List and end the sign-in sessions of users."""


@sessions.command("list")
@click.argument("username")
@_json_option
@click.pass_context
def sessions_list(ctx: click.Context, username: str, as_json: bool) -> None:
    """List a user's live sign-in sessions, oldest first."""

    async def go(services: Services) -> Sequence[LoginSession]:
        return await login_sessions.for_user(services, (await _user(services, username)).user_id)

    found = with_services(ctx, go)
    if as_json:
        rows = [
            {"sid": s.sid, "created_at": when(s.created_at), "expires_at": when(s.expires_at)} for s in found
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not found:
        click.echo(f"{username} has no live sessions")
        return
    for line in table(
        ("SID", "SIGNED IN (UTC)", "EXPIRES (UTC)"),
        [(s.sid, when(s.created_at), when(s.expires_at)) for s in found],
    ):
        click.echo(line)


@sessions.command("revoke", short_help="End one sign-in session of a user, or all of them.")
@click.argument("username")
@click.argument("sid", required=False)
@click.option("--all", "every", is_flag=True, help="End every session of the user.")
@click.pass_context
def sessions_revoke(ctx: click.Context, username: str, sid: str | None, every: bool) -> None:
    """End session SID of USERNAME (`bastion sessions list` shows them), or --all of them.

    The browser holding it must sign in again; codes not yet redeemed die with it.
    """
    if (sid is None) == (not every):
        raise click.UsageError("give a SID or --all (not both)")

    async def go(services: Services) -> int:
        user = await _user(services, username)
        if sid is None:
            return await login_sessions.end_for_user(services, user.user_id)
        if not await login_sessions.revoke(services, user.user_id, sid):
            raise BastionError(f"{username} has no session {sid!r} (see `bastion sessions list {username}`)")
        return 1

    ended = with_services(ctx, go)
    click.echo(f"ended {ended} session(s) of {username}")


@click.group()
def consents() -> None:
    """List and revoke what users allowed clients."""


@consents.command("list")
@click.argument("username")
@_json_option
@click.pass_context
def consents_list(ctx: click.Context, username: str, as_json: bool) -> None:
    """List the consents a user gave, by client."""

    async def go(services: Services) -> Sequence[Consent]:
        return await consent.list_for_user(services, await _user(services, username))

    found = with_services(ctx, go)
    if as_json:
        rows = [
            {"client_id": c.client_id, "scopes": sorted(c.scopes), "granted_at": when(c.granted_at)}
            for c in found
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not found:
        click.echo(f"{username} gave no consents")
        return
    rows2 = [(c.client_id, " ".join(sorted(c.scopes)), when(c.granted_at)) for c in found]
    for line in table(("CLIENT ID", "SCOPES", "GRANTED (UTC)"), rows2):
        click.echo(line)


@consents.command("revoke", short_help="Revoke a user's consent to a client, and its refresh tokens.")
@click.argument("username")
@click.argument("client_id")
@click.pass_context
def consents_revoke(ctx: click.Context, username: str, client_id: str) -> None:
    """Revoke USERNAME's consent to CLIENT_ID.

    The client's refresh tokens for the user are revoked with the access tokens issued from
    them, and the next sign-in through the client asks for consent again.
    """

    async def go(services: Services) -> bool:
        return await consent.revoke(services, await _user(services, username), client_id)

    if not with_services(ctx, go):
        raise BastionError(f"{username} gave {client_id!r} no consent")
    click.echo(f"revoked the consent of {username} to {client_id}")

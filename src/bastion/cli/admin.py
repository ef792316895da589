"""``bastion admin``: about the admin API (``docs/admin-api.md``). Register the group on the
root with ``cli.add_command(admin)``."""

from __future__ import annotations

import json

import click


@click.group(short_help="The admin API's description.")
def admin() -> None:
    """The admin API, served by `bastion serve` on authorization_server.admin_listen.

    Its calls need an access token with the bastion:admin scope, from a client allowed it:
    bastion clients create --name ops --scope bastion:admin
    """


@admin.command("openapi", short_help="Print the admin API's OpenAPI 3.1 document.")
def admin_openapi() -> None:
    """Print the admin API's OpenAPI document.

    docs/admin-openapi.json is made this way; the running server serves the same document at
    /openapi.json on its admin listener.
    """
    from bastion.server.admin.app import openapi_document

    click.echo(json.dumps(openapi_document(), indent=2))

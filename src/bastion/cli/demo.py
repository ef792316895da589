"""``bastion demo``: a working authorization server in one command, with commands to try."""

from __future__ import annotations

import json
import shlex

import click

from bastion.cli.common import run
from bastion.cli.context import open_services
from bastion.cli.users import prepare_demo_people
from bastion.protocol.models import Client
from bastion.settings import Settings

DEMO_CLIENT_ID = "demo-service"
DEMO_SCOPES = ("catalog:read", "orders:read", "orders:write")


async def _prepare(settings: Settings) -> tuple[Client, str, str]:
    """The demo service client (with a fresh secret) and the sign-in walkthrough text."""
    async with open_services(settings) as services:
        await services.keys.ensure()
        if await services.clients.get(DEMO_CLIENT_ID) is None:
            await services.clients.create(
                name="Demo service",
                grant_types=("client_credentials",),
                scopes=DEMO_SCOPES,
                audience="https://api.demo.local",
                client_id=DEMO_CLIENT_ID,
            )
        client, secret = await services.clients.rotate_secret(DEMO_CLIENT_ID)
        people = await prepare_demo_people(services)
        return client, secret, people


def run_demo(settings: Settings) -> None:
    """Prepare demo data, print what to try, then serve until Ctrl-C."""
    from bastion.cli.serve import serve

    click.echo("Preparing the demo (database, signing keys, a demo client)…", err=True)
    client, secret, people = run(_prepare(settings))
    base = settings.authorization_server.issuer
    auth = shlex.quote(f"{client.client_id}:{secret}")
    click.echo(
        f"""
Bastion demo — authorization server at {base}

Get an access token (client credentials, RFC 6749 §4.4):

  TOKEN=$(curl -s -u {auth} -d grant_type=client_credentials -d 'scope=catalog:read orders:read' \\
          {base}/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

Introspect it (RFC 7662):

  curl -s -u {auth} -d "token=$TOKEN" {base}/introspect

Revoke it (RFC 7009), then introspect again to see "active": false:

  curl -s -u {auth} -d "token=$TOKEN" {base}/revoke

Keys and metadata:

  curl -s {base}/jwks.json
  curl -s {base}/.well-known/oauth-authorization-server

{people}
Demo client: {json.dumps({"client_id": client.client_id, "scopes": sorted(client.scopes)})}
"""
    )
    serve(settings, workers=1, migrate=True)

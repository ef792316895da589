"""``/clients``: register, read, change, disable, delete clients and rotate their secrets."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from bastion.protocol.models import Client
from bastion.protocol.models import TokenFormat
from bastion.server.admin.http import json_response
from bastion.server.admin.http import no_content
from bastion.server.admin.http import paginate
from bastion.server.admin.http import read_json
from bastion.server.admin.http import when
from bastion.server.admin.models import ClientCreate
from bastion.server.admin.models import ClientOut
from bastion.server.admin.models import ClientPage
from bastion.server.admin.models import ClientSecretOut
from bastion.server.admin.models import ClientUpdate
from bastion.server.admin.models import SecretRotation
from bastion.server.admin.problems import Problem
from bastion.server.admin.problems import refused
from bastion.server.admin.routing import PAGING
from bastion.server.admin.routing import AdminContext
from bastion.server.admin.routing import Operation
from bastion.services.clients import ClientError
from bastion.services.clients import is_client_id
from bastion.storage.protocols import Conflict
from bastion.storage.protocols import NotFound


def client_out(client: Client) -> ClientOut:
    """The API's view of a client."""
    return ClientOut(
        client_id=client.client_id,
        name=client.name,
        public=client.public,
        grant_types=sorted(client.grant_types),
        scopes=sorted(client.scopes),
        redirect_uris=list(client.redirect_uris),
        post_logout_redirect_uris=list(client.post_logout_redirect_uris),
        audience=client.audience,
        token_format=client.token_format.value,
        first_party=client.first_party,
        disabled=client.disabled,
        created_at=when(client.created_at) or "",
        updated_at=when(client.updated_at) or "",
        previous_secret_valid_until=when(client.previous_secret_expires_at),
    )


def _client_id(request: Request) -> str:
    client_id = str(request.path_params["client_id"])
    if not is_client_id(client_id):
        raise Problem(404, "no such client")
    return client_id


def client_operations(ctx: AdminContext) -> list[Operation]:
    """The client endpoints over ``ctx``."""

    async def list_clients(request: Request) -> Response:
        found = sorted(await ctx.services.clients.list(), key=lambda c: (c.created_at, c.client_id))
        page, cursor = paginate(request, found, lambda c: [c.created_at, c.client_id])
        return json_response(ClientPage(items=[client_out(c) for c in page], next_cursor=cursor))

    async def create_client(request: Request) -> Response:
        body = await read_json(request, ClientCreate, ctx.max_body)
        try:
            client, secret = await ctx.services.clients.create(
                name=body.name,
                public=body.public,
                grant_types=body.grant_types,
                scopes=body.scopes,
                redirect_uris=body.redirect_uris,
                post_logout_redirect_uris=body.post_logout_redirect_uris,
                audience=body.audience,
                token_format=TokenFormat(body.token_format),
                first_party=body.first_party,
                client_id=body.client_id,
            )
        except ClientError as exc:
            raise refused(str(exc)) from None
        except Conflict:
            raise refused(f"a client {body.client_id!r} exists", 409) from None
        return json_response(ClientSecretOut(client=client_out(client), client_secret=secret), 201)

    async def get_client(request: Request) -> Response:
        client = await ctx.services.clients.get(_client_id(request))
        if client is None:
            raise Problem(404, "no such client")
        return json_response(client_out(client))

    async def update_client(request: Request) -> Response:
        client_id = _client_id(request)
        body = await read_json(request, ClientUpdate, ctx.max_body)
        try:
            client = await ctx.services.clients.update(client_id, **body.model_dump(exclude_unset=True))
        except NotFound:
            raise Problem(404, "no such client") from None
        except ClientError as exc:
            raise refused(str(exc)) from None
        return json_response(client_out(client))

    async def delete_client(request: Request) -> Response:
        if not await ctx.services.clients.delete(_client_id(request)):
            raise Problem(404, "no such client")
        return no_content()

    async def _set_disabled(request: Request, disabled: bool) -> Response:
        try:
            client = await ctx.services.clients.set_disabled(_client_id(request), disabled)
        except NotFound:
            raise Problem(404, "no such client") from None
        return json_response(client_out(client))

    async def disable_client(request: Request) -> Response:
        return await _set_disabled(request, True)

    async def enable_client(request: Request) -> Response:
        return await _set_disabled(request, False)

    async def rotate_client_secret(request: Request) -> Response:
        client_id = _client_id(request)
        body = await read_json(request, SecretRotation, ctx.max_body, optional=True)
        try:
            client, secret = await ctx.services.clients.rotate_secret(client_id, overlap=body.overlap)
        except NotFound:
            raise Problem(404, "no such client") from None
        except ClientError as exc:
            raise refused(str(exc)) from None
        return json_response(ClientSecretOut(client=client_out(client), client_secret=secret))

    one = "/clients/{client_id}"
    tag = "clients"
    return [
        Operation("GET", "/clients", list_clients, "List clients, oldest first.", tag, {200: ClientPage}, query=PAGING),
        Operation(
            "POST", "/clients", create_client, "Register a client; its secret is in the answer, once.", tag,
            {201: ClientSecretOut, 409: None}, body=ClientCreate,
        ),
        Operation("GET", one, get_client, "Read a client.", tag, {200: ClientOut}),
        Operation(
            "PATCH", one, update_client, "Change a client's registration (audited as client.updated).", tag,
            {200: ClientOut}, body=ClientUpdate,
        ),
        Operation("DELETE", one, delete_client, "Delete a client.", tag, {204: None}),
        Operation(
            "POST", one + "/disable", disable_client, "Disable a client; its tokens are refused.", tag, {200: ClientOut}
        ),
        Operation("POST", one + "/enable", enable_client, "Enable a disabled client.", tag, {200: ClientOut}),
        Operation(
            "POST", one + "/secret", rotate_client_secret,
            "Replace the client's secret; the old one keeps working for `overlap` seconds.", tag,
            {200: ClientSecretOut}, body=SecretRotation, body_optional=True,
        ),
    ]  # fmt: skip

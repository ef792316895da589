"""The admin API app: a Starlette app of its own, on its own listener (as ory/hydra keeps its
admin routes apart from the public ones), never mounted beside the public endpoints."""

from __future__ import annotations

import logging
from typing import Any
from typing import cast

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.net import TrustedProxies
from bastion.net import parse_networks
from bastion.server.admin.auth import AdminAuthMiddleware
from bastion.server.admin.clients import client_operations
from bastion.server.admin.openapi import document
from bastion.server.admin.operations import operations as ops_operations
from bastion.server.admin.people import people_operations
from bastion.server.admin.problems import Problem
from bastion.server.admin.routing import AdminContext
from bastion.server.admin.routing import Operation
from bastion.server.admin.routing import routes
from bastion.server.audit_scope import AuditScopeMiddleware
from bastion.storage.protocols import StorageError
from bastion.types import ASGIApp

log = logging.getLogger("bastion.server.admin")


def all_operations(ctx: AdminContext) -> list[Operation]:
    """Every operation of the admin API."""
    return [*client_operations(ctx), *people_operations(ctx), *ops_operations(ctx)]


async def _problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response()


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    detail = {404: "no such resource", 405: "this method is not allowed here"}.get(exc.status_code)
    return Problem(exc.status_code, detail, headers=headers).response()


async def _storage(request: Request, exc: Exception) -> Response:
    log.error("admin API %s %s: storage failure: %s", request.method, request.url.path, exc)
    return Problem(503, "storage is unavailable; retry later", headers={"retry-after": "5"}).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("admin API %s %s failed", request.method, request.url.path, exc_info=exc)
    return Problem(500, "the request failed; the server log has the details").response()


def create_admin_app(ctx: AdminContext, trusted_proxies: tuple[str, ...] = ()) -> ASGIApp:
    """The admin API over ``ctx``: authentication and auditing (:mod:`.auth`) in front of the
    routes of every operation and ``GET /openapi.json``."""
    operations = all_operations(ctx)
    spec = orjson.dumps(document(operations))

    async def openapi(_: Request) -> Response:
        return Response(spec, media_type="application/json", headers={"cache-control": "no-cache"})

    app = Starlette(
        routes=[Route("/openapi.json", openapi, methods=["GET"]), *routes(operations)],
        exception_handlers={
            Problem: _problem,
            HTTPException: _http_error,
            StorageError: _storage,
            Exception: _unexpected,
        },
    )
    proxies = TrustedProxies(parse_networks(trusted_proxies))
    return AuditScopeMiddleware(AdminAuthMiddleware(app, ctx.services), proxies)


def openapi_document() -> dict[str, Any]:
    """The admin API's OpenAPI document, as ``/openapi.json`` serves it (``bastion admin
    openapi`` prints it; ``docs/admin-openapi.json`` is a copy)."""
    # Building the operation table touches nothing of its context (handlers read it when
    # called), so a context of nothing describes the API of every context.
    return document(all_operations(cast(AdminContext, None)))

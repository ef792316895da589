"""One small orders service written three times with the guard: Starlette, FastAPI and Flask.

Orders 1 and 2 belong to alice and carol. Reading needs ``orders:read`` and passes the owner
policy (404 otherwise) or the admin role; cancelling needs the admin role (403 otherwise).
"""

from __future__ import annotations

from dataclasses import asdict
from dataclasses import dataclass
from typing import Any

import flask
from fastapi import Depends
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion.guard import Principal
from bastion.guard import authorize
from bastion.guard import owner
from bastion.guard import role
from bastion.guard.flask import Guard
from bastion.guard.flask import current_principal
from bastion.guard.starlette import GuardMiddleware
from bastion.guard.starlette import require_scopes
from bastion.guard.starlette import require_scopes as starlette_require_scopes
from bastion.tokens import TokenValidator

REALM = "orders"
PUBLIC = {"/health", "/catalog/"}


@dataclass(frozen=True)
class Order:
    id: int
    owner_id: str
    total: int


ORDERS = {1: Order(1, "alice", 30), 2: Order(2, "carol", 70)}
READ = owner() | role("admin")
CANCEL = role("admin")


def starlette_app(validator: TokenValidator) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def catalog(request: Request) -> JSONResponse:
        return JSONResponse({"items": ["tea"]})

    async def me(request: Request) -> JSONResponse:
        principal = request.state.principal
        return JSONResponse({"subject": principal.subject, "scopes": sorted(principal.scopes)})

    async def read(request: Request) -> JSONResponse:
        principal = starlette_require_scopes("orders:read")(request)
        order = ORDERS.get(int(request.path_params["order_id"]))
        authorize(principal, "read", order, READ)
        return JSONResponse(asdict(order))  # type: ignore[arg-type]

    async def cancel(request: Request) -> JSONResponse:
        principal = starlette_require_scopes("orders:write")(request)
        order = ORDERS.get(int(request.path_params["order_id"]))
        authorize(principal, "cancel", order, CANCEL)
        return JSONResponse({"cancelled": order.id})  # type: ignore[union-attr]

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/catalog/items", catalog),
            Route("/me", me),
            Route("/orders/{order_id:int}", read),
            Route("/orders/{order_id:int}/cancel", cancel, methods=["POST"]),
        ]
    )
    app.add_middleware(GuardMiddleware, validator=validator, public_paths=PUBLIC, realm=REALM)
    return app


def fastapi_app(validator: TokenValidator) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, validator=validator, public_paths=PUBLIC, realm=REALM)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/catalog/items")
    async def catalog() -> dict[str, Any]:
        return {"items": ["tea"]}

    @app.get("/me")
    async def me(principal: Principal = Depends(require_scopes())) -> dict[str, Any]:
        return {"subject": principal.subject, "scopes": sorted(principal.scopes)}

    @app.get("/orders/{order_id}")
    async def read(order_id: int, principal: Principal = Depends(require_scopes("orders:read"))) -> Any:
        order = ORDERS.get(order_id)
        authorize(principal, "read", order, READ)
        return asdict(order)  # type: ignore[arg-type]

    @app.post("/orders/{order_id}/cancel")
    async def cancel(order_id: int, principal: Principal = Depends(require_scopes("orders:write"))) -> Any:
        order = ORDERS.get(order_id)
        authorize(principal, "cancel", order, CANCEL)
        return {"cancelled": order_id}

    return app


def flask_app(guard_kwargs: dict[str, Any]) -> tuple[flask.Flask, Guard]:
    app = flask.Flask(__name__)
    guard = Guard(app, public_paths=PUBLIC, realm=REALM, **guard_kwargs)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/catalog/items")
    def catalog() -> dict[str, Any]:
        return {"items": ["tea"]}

    @app.get("/me")
    def me() -> dict[str, Any]:
        principal = current_principal()
        return {"subject": principal.subject, "scopes": sorted(principal.scopes)}

    @app.get("/orders/<int:order_id>")
    @guard.require_scopes("orders:read")
    def read(order_id: int) -> Any:
        order = ORDERS.get(order_id)
        authorize(current_principal(), "read", order, READ)
        return asdict(order)  # type: ignore[arg-type]

    @app.post("/orders/<int:order_id>/cancel")
    @guard.require_scopes("orders:write")
    def cancel(order_id: int) -> Any:
        order = ORDERS.get(order_id)
        authorize(current_principal(), "cancel", order, CANCEL)
        return {"cancelled": order_id}

    return app, guard

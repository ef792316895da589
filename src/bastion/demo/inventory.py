"""The inventory service: stock levels and reservations.

- ``GET /stock``: ``inventory:read`` (the partner integration, with an opaque token the gateway
  and this service both introspect).
- ``PUT /stock/{sku}`` ``{"quantity": n}``: ``inventory:write`` (the inventory-sync job).
- ``POST /reservations`` ``{"order": id, "items": [{"sku", "quantity"}]}``: ``inventory:reserve``
  (the orders service's own token); all items or none, 409 when stock is short.
- ``DELETE /reservations/{id}``: ``inventory:reserve``; puts the items back.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion.demo.catalog import PRODUCTS
from bastion.demo.common import BadInput
from bastion.demo.common import JsonFile
from bastion.demo.common import ServiceHeaderMiddleware
from bastion.demo.common import bad_input
from bastion.demo.common import decided
from bastion.demo.common import json_body
from bastion.demo.common import positive_int
from bastion.demo.common import problem
from bastion.guard.starlette import GuardMiddleware
from bastion.guard.starlette import require_scopes
from bastion.tokens import IssuerVerifier

MAX_QUANTITY = 1_000_000


def order_items(body: dict[str, Any], known: set[str]) -> list[dict[str, Any]]:
    """``body["items"]`` checked: 1 to 20 lines of a known ``sku`` and a ``quantity``.

    Raises:
        BadInput: anything else.
    """
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= 20:
        raise BadInput("items must be a list of 1 to 20 {sku, quantity} lines")
    lines: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict) or item.get("sku") not in known:
            raise BadInput("every item needs the sku of a product in the catalog")
        quantity = positive_int(item.get("quantity"), "quantity", maximum=100)
        lines[item["sku"]] = lines.get(item["sku"], 0) + quantity
    return [{"sku": sku, "quantity": quantity} for sku, quantity in lines.items()]


def create_app(data: Path, checker: IssuerVerifier) -> Starlette:
    """The inventory app, its stock and reservations in ``data/inventory.json``."""
    store = JsonFile(
        data / "inventory.json",
        lambda: {"stock": {p["sku"]: 25 for p in PRODUCTS}, "reservations": {}},
    )

    async def stock(request: Request) -> JSONResponse:
        require_scopes("inventory:read")(request)
        return decided({"stock": store.data["stock"]}, "scope inventory:read")

    async def set_stock(request: Request) -> JSONResponse:
        require_scopes("inventory:write")(request)
        sku = request.path_params["sku"]
        if sku not in store.data["stock"]:
            return problem(404, "Not Found", "no such product")
        body = await json_body(request)
        quantity = body.get("quantity")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 <= quantity <= MAX_QUANTITY:
            raise BadInput(f"quantity must be a whole number from 0 to {MAX_QUANTITY}")
        async with store.update() as state:
            state["stock"][sku] = quantity
        return decided({"sku": sku, "quantity": quantity}, "scope inventory:write")

    async def reserve(request: Request) -> JSONResponse:
        principal = require_scopes("inventory:reserve")(request)
        body = await json_body(request)
        items = order_items(body, set(store.data["stock"]))
        async with store.update() as state:
            short = [i["sku"] for i in items if state["stock"][i["sku"]] < i["quantity"]]
            if short:
                return problem(409, "Conflict", f"not enough stock of {', '.join(short)}")
            for item in items:
                state["stock"][item["sku"]] -= item["quantity"]
            reservation = {
                "id": secrets.token_hex(8),
                "order": body.get("order"),
                "items": items,
                "by": principal.client_id,
            }
            state["reservations"][reservation["id"]] = reservation
        return decided({"reservation": reservation}, "scope inventory:reserve (a service token)", 201)

    async def release(request: Request) -> JSONResponse:
        require_scopes("inventory:reserve")(request)
        async with store.update() as state:
            reservation = state["reservations"].pop(request.path_params["reservation"], None)
            if reservation is None:
                return problem(404, "Not Found", "no such reservation")
            for item in reservation["items"]:
                state["stock"][item["sku"]] += item["quantity"]
        return decided({"released": reservation["id"]}, "scope inventory:reserve (a service token)")

    app = Starlette(
        routes=[
            Route("/stock", stock, methods=["GET"]),
            Route("/stock/{sku}", set_stock, methods=["PUT"]),
            Route("/reservations", reserve, methods=["POST"]),
            Route("/reservations/{reservation}", release, methods=["DELETE"]),
        ],
        exception_handlers={BadInput: bad_input},
    )
    # Inside Starlette's error handling, so the guard renders refusals raised by endpoints.
    app.add_middleware(GuardMiddleware, validator=checker, realm="shop")
    app.add_middleware(ServiceHeaderMiddleware, name="inventory")
    return app

"""The catalog service: products, public to read; an admin edits them.

``GET /products`` and ``GET /products/{sku}`` need no token (the gateway's route is public too).
``PUT /admin/products/{sku}`` needs ``catalog:write`` and the ``admin`` role: the scope is the
gateway's and this service's first check, the role the object-level one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion.demo.common import BadInput
from bastion.demo.common import JsonFile
from bastion.demo.common import ServiceHeaderMiddleware
from bastion.demo.common import bad_input
from bastion.demo.common import decided
from bastion.demo.common import json_body
from bastion.demo.common import positive_int
from bastion.demo.common import problem
from bastion.guard import authorize
from bastion.guard import role
from bastion.guard.starlette import GuardMiddleware
from bastion.guard.starlette import require_scopes
from bastion.tokens import IssuerVerifier

#: What the shop sells on its first run (prices in cents).
PRODUCTS: tuple[dict[str, Any], ...] = (
    {"sku": "mug", "name": "Bastion mug", "price": 1200, "description": "Holds 350 ml of anything."},
    {"sku": "tee", "name": "Gateway T-shirt", "price": 2500, "description": "Cotton, one size."},
    {"sku": "stickers", "name": "Sticker pack", "price": 400, "description": "Ten scopes to stick."},
    {"sku": "hoodie", "name": "Refresh hoodie", "price": 4900, "description": "Rotates on every wash."},
)

EDIT = role("admin")


def create_app(data: Path, checker: IssuerVerifier) -> Starlette:
    """The catalog app, its products in ``data/catalog.json``."""
    products = JsonFile(data / "catalog.json", lambda: {p["sku"]: dict(p) for p in PRODUCTS})

    async def list_products(request: Request) -> JSONResponse:
        return decided({"products": list(products.data.values())}, "public: anyone may browse")

    async def read_product(request: Request) -> JSONResponse:
        product = products.data.get(request.path_params["sku"])
        if product is None:
            return problem(404, "Not Found", "no such product")
        return decided({"product": product}, "public: anyone may browse")

    async def edit_product(request: Request) -> JSONResponse:
        principal = require_scopes("catalog:write")(request)
        sku = request.path_params["sku"]
        authorize(principal, "edit", products.data.get(sku), EDIT)
        body = await json_body(request)
        changes: dict[str, Any] = {}
        if "price" in body:
            changes["price"] = positive_int(body["price"], "price", maximum=10_000_000)
        if "name" in body:
            name = body["name"]
            if not isinstance(name, str) or not 1 <= len(name.strip()) <= 80:
                raise BadInput("name must be 1 to 80 characters")
            changes["name"] = name.strip()
        if not changes:
            raise BadInput("nothing to change: send price and/or name")
        async with products.update() as items:
            items[sku].update(changes)
            product = dict(items[sku])
        return decided({"product": product}, "scope catalog:write and role admin")

    app = Starlette(
        routes=[
            Route("/products", list_products, methods=["GET"]),
            Route("/products/{sku}", read_product, methods=["GET"]),
            Route("/admin/products/{sku}", edit_product, methods=["PUT"]),
        ],
        exception_handlers={BadInput: bad_input},
    )
    # Inside Starlette's error handling, so the guard renders refusals raised by endpoints.
    app.add_middleware(
        GuardMiddleware, validator=checker, public_paths={"/products", "/products/"}, realm="shop"
    )
    app.add_middleware(ServiceHeaderMiddleware, name="catalog")
    return app

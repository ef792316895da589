"""The payments service: charges, for tokens carrying ``payments:write`` only.

No customer's token carries that scope (no role grants it), so a browser cannot pay for an
order without placing it: the gateway refuses the call before it gets here, and this service
would refuse it again. The orders service charges with its own service token.

- ``POST /charges`` ``{"order": id, "amount": cents, "customer": sub}``: captures a charge.
- ``POST /charges/{id}/refund``: refunds one (the orders service, when an order fails after
  payment).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

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
from bastion.guard.starlette import GuardMiddleware
from bastion.guard.starlette import require_scopes
from bastion.tokens import IssuerVerifier


def create_app(data: Path, checker: IssuerVerifier) -> Starlette:
    """The payments app, its charges in ``data/payments.json``."""
    charges = JsonFile(data / "payments.json", dict)

    async def charge(request: Request) -> JSONResponse:
        principal = require_scopes("payments:write")(request)
        body = await json_body(request)
        amount = positive_int(body.get("amount"), "amount", maximum=100_000_000)
        customer = body.get("customer")
        if not isinstance(customer, str) or not customer:
            raise BadInput("customer must name who pays")
        record = {
            "id": "ch_" + secrets.token_hex(8),
            "order": body.get("order"),
            "amount": amount,
            "customer": customer,
            "status": "captured",
            "by": principal.client_id,
            "time": int(time.time()),
        }
        async with charges.update() as items:
            items[record["id"]] = record
        return decided({"charge": record}, "scope payments:write (a service token)", 201)

    async def refund(request: Request) -> JSONResponse:
        require_scopes("payments:write")(request)
        async with charges.update() as items:
            record = items.get(request.path_params["charge"])
            if record is None:
                return problem(404, "Not Found", "no such charge")
            record["status"] = "refunded"
        return decided({"charge": record}, "scope payments:write (a service token)")

    app = Starlette(
        routes=[
            Route("/charges", charge, methods=["POST"]),
            Route("/charges/{charge}/refund", refund, methods=["POST"]),
        ],
        exception_handlers={BadInput: bad_input},
    )
    # Inside Starlette's error handling, so the guard renders refusals raised by endpoints.
    app.add_middleware(GuardMiddleware, validator=checker, realm="shop")
    app.add_middleware(ServiceHeaderMiddleware, name="payments")
    return app

"""The orders service: each customer's orders, object by object.

- ``GET /orders``: ``orders:read``; her own orders, or every order for the ``admin`` role.
- ``GET /orders/{id}``: ``orders:read`` and ``owner() | role("admin")``: someone else's order is
  a 404, exactly like one that does not exist, so guessing ids reveals nothing (BOLA).
- ``POST /orders`` ``{"items": [{"sku", "quantity"}]}``: ``orders:write``. Prices come from the
  catalog (never from the page); the stock is reserved at the inventory service and the total
  charged at the payments service, both through the gateway with this service's **own** token
  (client credentials: ``inventory:reserve payments:write``), never the customer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
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
from bastion.demo.common import problem
from bastion.demo.inventory import order_items
from bastion.guard import authorize
from bastion.guard import owner
from bastion.guard import role
from bastion.guard.starlette import GuardMiddleware
from bastion.guard.starlette import require_scopes
from bastion.tokens import IssuerVerifier
from bastion.tokens import Principal

log = logging.getLogger("bastion.demo.orders")

ADMIN = role("admin")
READ = owner() | ADMIN
TIMEOUT = aiohttp.ClientTimeout(total=10.0, connect=2.0)


class DownstreamError(Exception):
    """A call to another part failed; ``detail`` says which and how."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Downstream:
    """The orders service's calls to the other parts: one aiohttp session, and its own access
    token (client credentials, RFC 6749 §4.4), fetched once and reused until shortly before it
    expires."""

    def __init__(
        self, *, gateway_url: str, token_url: str, userinfo_url: str, client_id: str, client_secret: str
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.token_url = token_url
        self.userinfo_url = userinfo_url
        self._credentials = aiohttp.BasicAuth(client_id, client_secret)
        self._token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=TIMEOUT, cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def service_token(self) -> str:
        """This service's access token (one request at a time asks for a new one)."""
        async with self._lock:
            if self._token is not None and self._token[1] > time.time() + 30:
                return self._token[0]
            data = {"grant_type": "client_credentials", "scope": "inventory:reserve payments:write"}
            try:
                async with self.http.post(self.token_url, data=data, auth=self._credentials) as response:
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise DownstreamError(
                    503, f"authorization server unavailable ({type(exc).__name__})"
                ) from None
            if response.status != 200 or not isinstance(body, dict) or "access_token" not in body:
                error = body.get("error") if isinstance(body, dict) else None
                raise DownstreamError(502, f"the authorization server refused this service a token ({error})")
            self._token = (body["access_token"], time.time() + float(body.get("expires_in", 60)))
            return self._token[0]

    async def call(self, method: str, path: str, body: Any = None, *, token: bool = True) -> dict[str, Any]:
        """``method path`` through the gateway; the JSON answer, or :class:`DownstreamError`."""
        headers = {"authorization": f"Bearer {await self.service_token()}"} if token else {}
        part = path.split("/")[1]
        try:
            async with self.http.request(
                method, self.gateway_url + path, json=body, headers=headers
            ) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise DownstreamError(503, f"{part} unavailable ({type(exc).__name__})") from None
        if response.status >= 400:
            detail = answer.get("detail") or answer.get("title") if isinstance(answer, dict) else None
            who = part if response.headers.get("x-shop-service") else "the gateway"
            status = 409 if response.status == 409 else 502
            raise DownstreamError(status, f"{who} refused: {response.status} {detail or ''}".strip())
        return answer if isinstance(answer, dict) else {}

    async def customer_name(self, authorization: str) -> str | None:
        """The caller's ``preferred_username`` from UserInfo (OIDC Core §5.3), with the
        caller's own token; ``None`` when it cannot tell."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with self.http.get(self.userinfo_url, headers={"authorization": authorization}) as response:
                if response.status == 200:
                    claims = await response.json(content_type=None)
                    name = claims.get("preferred_username") if isinstance(claims, dict) else None
                    return name if isinstance(name, str) else None
        return None


def _visible(principal: Principal, orders: dict[str, Any]) -> list[dict[str, Any]]:
    return [order for order in orders.values() if READ(principal, "read", order)]


def create_app(data: Path, checker: IssuerVerifier, downstream: Downstream) -> Starlette:
    """The orders app, its orders in ``data/orders.json``."""
    store = JsonFile(data / "orders.json", lambda: {"next_id": 1, "orders": {}})

    async def list_orders(request: Request) -> JSONResponse:
        principal = require_scopes("orders:read")(request)
        orders = _visible(principal, store.data["orders"])
        admin = ADMIN(principal, "read", None)
        why = "role admin: every order" if admin else "owner(): your own orders only"
        return decided({"orders": orders}, f"scope orders:read; {why}")

    async def read_order(request: Request) -> JSONResponse:
        principal = require_scopes("orders:read")(request)
        order = store.data["orders"].get(request.path_params["order_id"])
        authorize(principal, "read", order, READ)
        return decided({"order": order}, "scope orders:read; owner() | role(admin)")

    async def place_order(request: Request) -> JSONResponse:
        principal = require_scopes("orders:write")(request)
        body = await json_body(request)
        try:
            catalog = await downstream.call("GET", "/catalog/products", token=False)
            prices = {p["sku"]: p["price"] for p in catalog.get("products", [])}
            items = order_items(body, set(prices))
            async with store.update() as state:
                order_id = str(state["next_id"])
                state["next_id"] += 1
            total = sum(prices[i["sku"]] * i["quantity"] for i in items)
            trail = [{"part": "orders", "allowed_by": "scope orders:write; the order is yours"}]
            reserved = await downstream.call(
                "POST", "/inventory/reservations", {"order": order_id, "items": items}
            )
            trail.append({"part": "inventory", "allowed_by": reserved.get("allowed_by", "")})
            try:
                charged = await downstream.call(
                    "POST",
                    "/payments/charges",
                    {"order": order_id, "amount": total, "customer": principal.subject},
                )
            except DownstreamError:
                with contextlib.suppress(DownstreamError):
                    await downstream.call(
                        "DELETE", f"/inventory/reservations/{reserved['reservation']['id']}"
                    )
                raise
            trail.append({"part": "payments", "allowed_by": charged.get("allowed_by", "")})
        except DownstreamError as exc:
            log.warning("order refused: %s", exc.detail)
            return problem(exc.status, "Order not placed", exc.detail)
        name = await downstream.customer_name(request.headers.get("authorization", ""))
        order = {
            "id": order_id,
            "owner_id": principal.subject,
            "customer": name or principal.subject,
            "items": [{**i, "price": prices[i["sku"]]} for i in items],
            "total": total,
            "status": "paid",
            "charge": charged["charge"]["id"],
            "time": int(time.time()),
        }
        async with store.update() as state:
            state["orders"][order_id] = order
        return JSONResponse(
            {"order": order, "trail": trail, "allowed_by": trail[0]["allowed_by"]},
            201,
            headers={"cache-control": "no-store"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await downstream.close()

    app = Starlette(
        routes=[
            Route("/orders", list_orders, methods=["GET"]),
            Route("/orders", place_order, methods=["POST"]),
            Route("/orders/{order_id}", read_order, methods=["GET"]),
        ],
        exception_handlers={BadInput: bad_input},
        lifespan=lifespan,
    )
    # Inside Starlette's error handling, so the guard renders refusals raised by endpoints.
    app.add_middleware(GuardMiddleware, validator=checker, realm="shop")
    app.add_middleware(ServiceHeaderMiddleware, name="orders")
    return app

"""The ASGI guard beyond the orders service: opaque tokens by introspection, WebSockets, an
issuer that cannot be reached, and the dependency without the middleware."""

from __future__ import annotations

import socket
import time

import httpx2 as httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket
from starlette.websockets import WebSocketDisconnect

from bastion.guard.starlette import GuardMiddleware
from bastion.guard.starlette import require_scopes
from bastion.tokens import Introspector
from bastion.tokens import StaticKeys
from bastion.tokens import TokenValidator
from tests.tokens.tokens_helpers import AUDIENCE
from tests.tokens.tokens_helpers import Clock
from tests.tokens.tokens_helpers import Issuer


async def whoami(request: Request) -> JSONResponse:
    principal = require_scopes("orders:read")(request)
    return JSONResponse({"subject": principal.subject})


def app_with(validator: object) -> Starlette:
    app = Starlette(routes=[Route("/me", whoami)])
    app.add_middleware(GuardMiddleware, validator=validator)
    return app


@pytest.mark.anyio
async def test_opaque_tokens_are_introspected(issuer: Issuer) -> None:
    now = int(time.time())
    issuer.introspection["opaque-1"] = {
        "active": True,
        "sub": "alice",
        "scope": "orders:read",
        "aud": AUDIENCE,
        "iss": issuer.url,
        "exp": now + 600,
    }
    async with Introspector(
        issuer.url, client_id="gateway", client_secret="s3cret", audience=AUDIENCE
    ) as inspector:
        transport = httpx.ASGITransport(app=app_with(inspector))
        async with httpx.AsyncClient(transport=transport, base_url="http://orders.test") as http:
            good = await http.get("/me", headers={"Authorization": "Bearer opaque-1"})
            bad = await http.get("/me", headers={"Authorization": "Bearer opaque-2"})
    assert (good.status_code, good.json()) == (200, {"subject": "alice"})
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]


@pytest.mark.anyio
async def test_an_unreachable_issuer_is_503_not_a_500(issuer: Issuer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    validator = TokenValidator(issuer.url, audience=AUDIENCE, jwks_uri=dead + "/jwks.json")
    transport = httpx.ASGITransport(app=app_with(validator))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://orders.test") as http:
            answer = await http.get("/me", headers={"Authorization": f"Bearer {issuer.mint()}"})
    finally:
        await validator.close()
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert (
        answer.headers["www-authenticate"]
        == 'Bearer error_description="The authorization server is unavailable"'
    )
    assert answer.json()["status"] == 503


def ws_app(validator: TokenValidator) -> Starlette:
    async def socket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"subject": websocket.state.principal.subject})
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", socket_endpoint)])
    app.add_middleware(GuardMiddleware, validator=validator)
    return app


def test_a_websocket_handshake_without_a_token_is_closed(issuer_keys: tuple[StaticKeys, Issuer]) -> None:
    keys, issuer = issuer_keys
    validator = TokenValidator(issuer.url, audience=AUDIENCE, key_source=keys)
    with TestClient(ws_app(validator)) as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws"):
            pass
        assert refused.value.code == 1008
        headers = {"Authorization": f"Bearer {issuer.mint(sub='alice')}"}
        with client.websocket_connect("/ws", headers=headers) as connection:
            assert connection.receive_json() == {"subject": "alice"}


def test_the_dependency_needs_the_middleware() -> None:
    app = Starlette(routes=[Route("/me", whoami)])
    with TestClient(app) as client, pytest.raises(RuntimeError, match="GuardMiddleware is not installed"):
        client.get("/me")


@pytest.fixture
def issuer_keys() -> tuple[StaticKeys, Issuer]:
    # Keys given directly: the TestClient runs the app on a loop of its own.
    issuer = Issuer(Clock())
    issuer.url = "https://auth.example"
    issuer.add_key("k1")
    return StaticKeys(issuer.jwks()), issuer

"""CORS per route through the whole gateway: preflights answered at the edge, response headers.

Every case goes over a real socket to the engine and the policy layer in front of the recording
upstream; what counts is the status and the ``Access-Control-*`` headers the client gets, and
whether the upstream saw the request at all (a preflight never reaches it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.gateway.settings import GatewaySettings
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import request
from tests.conformance.gw_attack import running_stack
from tests.gateway.engine.servers import Reply

APP = b"https://app.example"
DEV = b"http://localhost:5173"
EVIL = b"https://evil.example"

ROUTES: list[dict[str, Any]] = [
    {
        "prefix": "/api",
        "upstream": "app",
        "scopes": {"GET": ["api:read"], "POST": ["api:write"]},
        "read_timeout": 1.0,
        "cors": {
            "origins": ["https://app.example", "HTTP://LOCALHOST:5173"],
            "headers": ["Content-Type", "X-Trace"],
            "expose_headers": ["ETag"],
            "credentials": True,
            "max_age": 300,
        },
    },
    {
        "prefix": "/filtered",
        "upstream": "app",
        "auth": "none",
        "methods": ["GET", "POST"],
        "read_timeout": 1.0,
        "cors": {"origins": ["https://app.example"]},
    },
    {
        "prefix": "/public",
        "upstream": "app",
        "auth": "none",
        "read_timeout": 1.0,
        "cors": {"origins": ["https://app.example:443"]},
    },
    {"prefix": "/open", "upstream": "app", "auth": "none", "read_timeout": 1.0, "cors": {"origins": ["*"]}},
    {"prefix": "/plain", "upstream": "app", "auth": "none", "read_timeout": 1.0},
]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(routes=ROUTES) as running:
        yield running


def preflight(target: bytes, origin: bytes, method: bytes, headers: bytes | None = None) -> bytes:
    lines = [b"Origin: " + origin, b"Access-Control-Request-Method: " + method]
    if headers is not None:
        lines.append(b"Access-Control-Request-Headers: " + headers)
    return request(b"OPTIONS", target, *lines)


def cors_headers(reply: Reply) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in reply.headers:
        if name.startswith(b"access-control-"):
            out.setdefault(name, []).append(value)
    return out


def vary(reply: Reply) -> list[bytes]:
    return [token.strip() for name, value in reply.headers if name == b"vary" for token in value.split(b",")]


# -- preflight -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_allowed_preflight_is_answered_at_the_gateway_without_a_token(stack: Stack) -> None:
    reply = await stack.send(
        preflight(b"/api/orders", APP, b"POST", b"authorization,content-type,x-trace"), method=b"OPTIONS"
    )
    assert reply.status == 204
    assert cors_headers(reply) == {
        b"access-control-allow-origin": [APP],
        b"access-control-allow-credentials": [b"true"],
        b"access-control-allow-methods": [b"GET, HEAD, POST"],
        b"access-control-allow-headers": [b"authorization, content-type, x-trace"],
        b"access-control-max-age": [b"300"],
    }
    assert {b"origin", b"access-control-request-method", b"access-control-request-headers"} <= set(
        vary(reply)
    )
    assert reply.body == b""
    assert stack.upstream.requests == []  # never forwarded


@pytest.mark.anyio
async def test_a_configured_origin_matches_as_browsers_spell_it(stack: Stack) -> None:
    # "HTTP://LOCALHOST:5173" and "https://app.example:443" in the settings are the serialised
    # origins "http://localhost:5173" and "https://app.example".
    dev = await stack.send(preflight(b"/api/orders", DEV, b"GET", b"authorization"), method=b"OPTIONS")
    public = await stack.send(preflight(b"/public/x", APP, b"GET"), method=b"OPTIONS")
    assert (dev.status, public.status) == (204, 204)
    assert dev.header(b"access-control-allow-origin") == DEV
    assert public.header(b"access-control-allow-origin") == APP


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "origin", "method", "headers"),
    [
        pytest.param(b"/api/orders", EVIL, b"GET", None, id="origin-not-listed"),
        pytest.param(b"/api/orders", b"https://app.example.evil.example", b"GET", None, id="origin-suffix"),
        pytest.param(b"/api/orders", b"http://app.example", b"GET", None, id="origin-other-scheme"),
        pytest.param(b"/api/orders", b"https://app.example:8443", b"GET", None, id="origin-other-port"),
        pytest.param(b"/api/orders", b"null", b"GET", None, id="null-origin"),
        pytest.param(b"/open/x", b"null", b"GET", None, id="null-origin-under-star"),
        pytest.param(b"/api/orders", APP, b"DELETE", None, id="method-outside-scope-table"),
        pytest.param(b"/api/orders", APP, b"post", None, id="method-is-case-sensitive"),
        pytest.param(b"/filtered/x", APP, b"PUT", None, id="method-outside-methods"),
        pytest.param(b"/api/orders", APP, b"POST", b"authorization, x-other", id="header-not-allowed"),
        pytest.param(b"/api/orders", APP, b"POST", b"cookie", id="header-cookie"),
        pytest.param(b"/filtered/x", APP, b"GET", b"authorization", id="authorization-on-open-route"),
    ],
)
async def test_a_disallowed_preflight_is_refused_without_cors_headers(
    stack: Stack, target: bytes, origin: bytes, method: bytes, headers: bytes | None
) -> None:
    reply = await stack.send(preflight(target, origin, method, headers), method=b"OPTIONS")
    assert reply.status == 403
    assert reply.header(b"content-type") == b"application/problem+json"
    assert cors_headers(reply) == {}
    assert b"origin" in vary(reply)
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_a_plain_options_is_no_preflight(stack: Stack) -> None:
    # Without Access-Control-Request-Method, OPTIONS is an ordinary request: the token is needed
    # and the scope table (no OPTIONS entry) refuses it after that.
    anonymous = await stack.send(request(b"OPTIONS", b"/api/orders", b"Origin: " + APP), method=b"OPTIONS")
    token = stack.token(scope="api:read api:write")
    signed = await stack.send(
        request(b"OPTIONS", b"/api/orders", b"Origin: " + APP, bearer(token)), method=b"OPTIONS"
    )
    assert (anonymous.status, signed.status) == (401, 405)
    assert signed.header(b"allow") == b"GET, HEAD, POST"
    assert signed.header(b"access-control-allow-origin") == APP
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_a_route_without_cors_forwards_options_as_it_always_did(stack: Stack) -> None:
    reply = await stack.send(preflight(b"/plain/x", APP, b"GET"), method=b"OPTIONS")
    assert reply.status == 200
    assert cors_headers(reply) == {}
    [received] = stack.upstream.requests
    assert received.method == b"OPTIONS"


# -- actual requests -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_allowed_origin_gets_its_own_origin_back_with_credentials(stack: Stack) -> None:
    token = stack.token(scope="api:read")
    reply = await stack.send(request(b"GET", b"/api/orders", b"Origin: " + APP, bearer(token)))
    assert reply.status == 200
    assert cors_headers(reply) == {
        b"access-control-allow-origin": [APP],
        b"access-control-allow-credentials": [b"true"],
        b"access-control-expose-headers": [
            b"www-authenticate, retry-after, ratelimit, ratelimit-policy, x-request-id, etag"
        ],
    }
    assert vary(reply) == [b"origin"]
    [received] = stack.upstream.requests
    assert received.header(b"origin") == [APP]


@pytest.mark.anyio
async def test_another_origin_is_served_but_not_shared(stack: Stack) -> None:
    # CORS protects the reader, not the server (the token does that): the request is forwarded,
    # and the browser keeps the response from the page because no ACAO names its origin.
    token = stack.token(scope="api:read")
    reply = await stack.send(request(b"GET", b"/api/orders", b"Origin: " + EVIL, bearer(token)))
    no_origin = await stack.send(request(b"GET", b"/api/orders", bearer(token)))
    assert (reply.status, no_origin.status) == (200, 200)
    assert cors_headers(reply) == cors_headers(no_origin) == {}
    assert vary(reply) == vary(no_origin) == [b"origin"]  # for caches, on every response


@pytest.mark.anyio
async def test_a_star_route_shares_with_any_origin_but_null_without_credentials(stack: Stack) -> None:
    reply = await stack.send(request(b"GET", b"/open/x", b"Origin: " + EVIL))
    null = await stack.send(request(b"GET", b"/open/x", b"Origin: null"))
    assert reply.header(b"access-control-allow-origin") == b"*"
    assert reply.header(b"access-control-allow-credentials") is None
    assert cors_headers(null) == {}
    assert vary(null) == [b"origin"]


@pytest.mark.anyio
async def test_two_origin_headers_are_no_origin(stack: Stack) -> None:
    reply = await stack.send(request(b"GET", b"/public/x", b"Origin: " + APP, b"Origin: " + EVIL))
    assert reply.status == 200
    assert cors_headers(reply) == {}


@pytest.mark.anyio
@pytest.mark.parametrize("origin", [EVIL, APP])
async def test_the_upstreams_own_cors_headers_are_dropped(stack: Stack, origin: bytes) -> None:
    reply = await stack.send(request(b"GET", b"/public/misbehave/cors", b"Origin: " + origin))
    assert reply.status == 200
    headers = cors_headers(reply)
    if origin == EVIL:
        assert headers == {}
    else:
        assert headers == {
            b"access-control-allow-origin": [APP],
            b"access-control-expose-headers": [
                b"www-authenticate, retry-after, ratelimit, ratelimit-policy, x-request-id"
            ],
        }
    assert sorted(vary(reply)) == [b"accept-encoding", b"origin"]


@pytest.mark.anyio
async def test_the_gateways_own_refusals_carry_cors_for_an_allowed_origin(stack: Stack) -> None:
    missing = await stack.send(request(b"GET", b"/api/orders", b"Origin: " + APP))
    scope = await stack.send(
        request(b"POST", b"/api/orders", b"Origin: " + APP, bearer(stack.token(scope="api:read")))
    )
    method = await stack.send(request(b"PUT", b"/filtered/x", b"Origin: " + APP), method=b"PUT")
    refused_origin = await stack.send(request(b"GET", b"/api/orders", b"Origin: " + EVIL))
    assert (missing.status, scope.status, method.status, refused_origin.status) == (401, 403, 405, 401)
    for reply in (missing, scope, method):
        assert reply.header(b"access-control-allow-origin") == APP
        assert b"www-authenticate" in (reply.header(b"access-control-expose-headers") or b"")
        assert vary(reply) == [b"origin"]
    assert missing.header(b"www-authenticate") == b'Bearer realm="shop"'
    assert cors_headers(refused_origin) == {}
    assert vary(refused_origin) == [b"origin"]
    assert stack.upstream.requests == []


# -- settings --------------------------------------------------------------------------------------


def _settings(cors: dict[str, Any], **route: Any) -> GatewaySettings:
    return GatewaySettings.model_validate(
        {
            "issuers": [{"issuer": "https://auth.example", "audience": "https://api.example"}],
            "upstreams": {"app": {"targets": ["127.0.0.1:9"]}},
            "routes": [{"prefix": "/api", "upstream": "app", "cors": cors, **route}],
        }
    )


@pytest.mark.parametrize(
    ("cors", "route", "message"),
    [
        ({"origins": ["*"], "credentials": True}, {}, "cannot go with credentials"),
        ({"origins": ["*", "https://app.example"]}, {}, "'*' stands alone"),
        ({"origins": ["https://*.example.com"]}, {}, "has a wildcard"),
        ({"origins": ["https://app.example/"]}, {}, "is not an origin"),
        ({"origins": ["https://app.example/spa"]}, {}, "is not an origin"),
        ({"origins": ["app.example"]}, {}, "is not an origin"),
        ({"origins": ["null"]}, {}, "'null' is never allowed"),
        ({"origins": []}, {}, "at least 1 item"),
        ({"origins": ["https://app.example"], "headers": ["*"]}, {}, "no '*'"),
        ({"origins": ["https://app.example"], "methods": ["TRACE"]}, {}, "never forwarded"),
        (
            {"origins": ["https://app.example"], "methods": ["DELETE"]},
            {"scopes": {"GET": ["api:read"]}},
            "DELETE is not a method this route accepts",
        ),
        (
            {"origins": ["https://app.example"], "methods": ["POST"]},
            {"auth": "none", "methods": ["GET"]},
            "POST is not a method this route accepts",
        ),
    ],
)
def test_settings_refuse_unsafe_or_malformed_cors(
    cors: dict[str, Any], route: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(cors, **route)


def test_settings_keep_origins_as_browsers_send_them() -> None:
    settings = _settings(
        {"origins": ["HTTPS://App.Example:443", "http://[::1]:8080", "http://app.example:80"]}
    )
    cors = settings.routes[0].cors
    assert cors is not None
    assert cors.origins == ("https://app.example", "http://[::1]:8080", "http://app.example")

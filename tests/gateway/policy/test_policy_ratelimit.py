"""Rate limits through the real gateway (engine, policy chain, a recording upstream, a real
JWKS), on the in-process backend with an injected clock."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from bastion.gateway.app import Gateway
from bastion.gateway.app import create_gateway
from bastion.gateway.observe import AccessLog
from bastion.gateway.ratelimit import ip_bucket
from bastion.gateway.settings import GatewaySettings
from bastion.ratelimit.local import LocalLimiter

from .helpers import Issuer
from .test_policy_e2e import Upstream
from .test_policy_e2e import raw

AUD = "https://api.example"
pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def settings_for(issuer: Issuer, upstream: Upstream, **overrides: Any) -> GatewaySettings:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "",
        "issuers": [{"issuer": issuer.issuer, "jwks_uri": issuer.jwks_uri, "audience": AUD}],
        "upstreams": {"app": {"targets": [f"127.0.0.1:{upstream.port}"]}},
        "routes": [
            {"prefix": "/public", "upstream": "app", "auth": "none"},
            {"prefix": "/api", "upstream": "app"},
        ],
    }
    data.update(overrides)
    return GatewaySettings.model_validate(data)


Start = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Issuer, Upstream, Clock, list[Gateway]]]:
    issuer = Issuer("https://auth.example")
    upstream = Upstream("app")
    await issuer.start()
    await upstream.start()
    gateways: list[Gateway] = []
    try:
        yield issuer, upstream, Clock(), gateways
    finally:
        for gateway in gateways:
            await gateway.close()
        await upstream.stop()
        await issuer.stop()


@pytest.fixture
def start(parts: tuple[Issuer, Upstream, Clock, list[Gateway]]) -> Start:
    issuer, upstream, clock, gateways = parts

    async def _start(**overrides: Any) -> Gateway:
        gateway = create_gateway(
            settings_for(issuer, upstream, **overrides),
            access_log=AccessLog(io.BytesIO()),
            rate_limiter=LocalLimiter(clock),
        )
        await gateway.start()
        gateways.append(gateway)
        return gateway

    return _start


def request(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: api.example", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def status(gateway: Gateway, path: str, *headers: str) -> int:
    assert gateway.port is not None
    code, _, _ = await raw(gateway.port, request(path, *headers))
    return code


def route_limit(prefix: str, auth: str = "none", **rate_limit: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"prefix": prefix, "upstream": "app", "rate_limit": rate_limit}
    if auth == "none":
        route["auth"] = "none"
    return route


async def test_over_the_limit_is_429_with_retry_after_and_the_ietf_fields(
    start: Start, parts: tuple[Issuer, Upstream, Clock, list[Gateway]]
) -> None:
    _, upstream, clock, _ = parts
    gateway = await start(
        routes=[
            route_limit(
                "/public",
                limits=[{"requests": 3, "per": 1}, {"requests": 1000, "per": 3600, "name": "hourly"}],
            )
        ]
    )
    assert gateway.port is not None
    assert [await status(gateway, "/public/x") for _ in range(3)] == [200, 200, 200]
    code, headers, body = await raw(gateway.port, request("/public/x"))
    assert code == 429
    assert headers[b"content-type"] == b"application/problem+json"
    assert orjson.loads(body)["status"] == 429
    assert headers[b"retry-after"] == b"1"
    assert headers[b"ratelimit-policy"] == b'"3-per-1s";q=3;w=1, "hourly";q=1000;w=3600'
    assert headers[b"ratelimit"] == b'"3-per-1s";r=0;t=1'
    assert len(upstream.seen) == 3
    clock.now += 0.334  # one interval (333 334 µs) later: exactly one more
    assert [await status(gateway, "/public/x") for _ in range(2)] == [200, 429]


async def test_several_limits_the_longest_wait_is_named(
    start: Start, parts: tuple[Issuer, Upstream, Clock, list[Gateway]]
) -> None:
    _, _, clock, _ = parts
    gateway = await start(
        routes=[route_limit("/public", limits=[{"requests": 10, "per": 1}, {"requests": 4, "per": 60}])]
    )
    assert gateway.port is not None
    assert [await status(gateway, "/public") for _ in range(5)] == [200] * 4 + [429]
    _, headers, _ = await raw(gateway.port, request("/public"))
    assert headers[b"ratelimit"] == b'"4-per-60s";r=0;t=15'
    assert headers[b"retry-after"] == b"15"
    clock.now += 15
    assert await status(gateway, "/public") == 200


async def test_path_and_encoding_variants_share_the_route_bucket(start: Start) -> None:
    gateway = await start(
        routes=[route_limit("/public", limits=[{"requests": 4, "per": 60, "key": "route"}])]
    )
    codes = [await status(gateway, path) for path in ("/public/x", "/public/%78", "/public/x/", "/public")]
    assert codes == [200, 200, 200, 200]
    assert await status(gateway, "/public/%78") == 429
    # a case variant is not the route at all: no fresh bucket behind it
    assert await status(gateway, "/PUBLIC/x") == 404


async def test_ip_buckets_follow_trusted_proxies_and_group_ipv6_by_64(start: Start) -> None:
    gateway = await start(
        trusted_proxies=["127.0.0.1/32"],
        routes=[route_limit("/public", limits=[{"requests": 1, "per": 60}])],
    )

    async def via(client: str) -> int:
        return await status(gateway, "/public", f"X-Forwarded-For: {client}")

    assert [await via("192.0.2.1"), await via("192.0.2.1")] == [200, 429]
    assert await via("::ffff:192.0.2.1") == 429  # IPv4-mapped is the same client
    assert await via("192.0.2.2") == 200
    assert [await via("2001:db8::1"), await via("2001:db8::ffff:2")] == [200, 429]  # one /64
    assert await via("2001:db8:0:1::1") == 200  # the next /64


async def test_a_rotating_forwarded_for_from_an_untrusted_peer_earns_no_fresh_bucket(start: Start) -> None:
    gateway = await start(routes=[route_limit("/public", limits=[{"requests": 2, "per": 60}])])
    codes = [await status(gateway, "/public", f"X-Forwarded-For: 198.51.100.{n}") for n in range(5)]
    assert codes == [200, 200, 429, 429, 429]


async def test_client_subject_and_header_keys(
    start: Start, parts: tuple[Issuer, Upstream, Clock, list[Gateway]]
) -> None:
    issuer = parts[0]
    gateway = await start(
        routes=[
            {
                "prefix": "/api",
                "upstream": "app",
                "rate_limit": {"limits": [{"requests": 1, "per": 60, "key": "client"}]},
            },
            {
                "prefix": "/me",
                "upstream": "app",
                "rate_limit": {"limits": [{"requests": 1, "per": 60, "key": "subject"}]},
            },
            route_limit(
                "/public", limits=[{"requests": 1, "per": 60, "key": "header", "header": "X-Api-Key"}]
            ),
        ]
    )

    def bearer(**claims: Any) -> str:
        return f"Authorization: Bearer {issuer.token(**claims)}"

    assert await status(gateway, "/api", bearer(client_id="a", subject="u1")) == 200
    assert await status(gateway, "/api", bearer(client_id="a", subject="u2")) == 429
    assert await status(gateway, "/api", bearer(client_id="b", subject="u1")) == 200
    assert await status(gateway, "/me", bearer(client_id="a", subject="u1")) == 200
    assert await status(gateway, "/me", bearer(client_id="b", subject="u1")) == 429
    assert await status(gateway, "/me", bearer(client_id="a", subject="u2")) == 200
    # an invalid token is 401 before a client-keyed limit spends anything
    assert await status(gateway, "/api", "Authorization: Bearer nope") == 401
    assert await status(gateway, "/public", "X-Api-Key: k1") == 200
    assert await status(gateway, "/public", "x-api-key: k1") == 429
    assert await status(gateway, "/public", "X-Api-Key: k2") == 200
    assert await status(gateway, "/public") == 200
    assert await status(gateway, "/public") == 429  # requests without it share one bucket


async def test_the_default_applies_to_routes_that_name_none(start: Start) -> None:
    gateway = await start(
        rate_limit={"limits": [{"requests": 1, "per": 60}]},
        routes=[
            {"prefix": "/public", "upstream": "app", "auth": "none"},
            {"prefix": "/open", "upstream": "app", "auth": "none", "rate_limit": {"limits": []}},
            route_limit("/own", limits=[{"requests": 2, "per": 60}]),
        ],
    )
    assert [await status(gateway, "/public") for _ in range(2)] == [200, 429]
    assert [await status(gateway, "/open") for _ in range(3)] == [200, 200, 200]
    assert [await status(gateway, "/own") for _ in range(3)] == [200, 200, 429]


async def test_concurrent_requests_admit_exactly_the_burst(
    start: Start, parts: tuple[Issuer, Upstream, Clock, list[Gateway]]
) -> None:
    upstream = parts[1]
    gateway = await start(routes=[route_limit("/public", limits=[{"requests": 10, "per": 60}])])
    codes = await asyncio.gather(*(status(gateway, "/public") for _ in range(60)))
    assert sorted(codes).count(200) == 10
    assert codes.count(429) == 50
    assert len(upstream.seen) == 10


async def test_refusals_are_counted(start: Start) -> None:
    gateway = await start(routes=[route_limit("/public", limits=[{"requests": 1, "per": 60}])])
    for _ in range(3):
        await status(gateway, "/public")
    from prometheus_client import generate_latest

    text = generate_latest(gateway.metrics.registry).decode()
    assert 'bastion_gateway_rate_limited_total{route="/public"} 2.0' in text
    # the one admitted request was counted by the store (refusals count nothing)
    assert "bastion_gateway_rate_limit_admitted_total 1.0" in text


async def test_admitted_requests_are_counted_over_every_route_and_only_where_limited(start: Start) -> None:
    gateway = await start(
        routes=[
            route_limit("/public", limits=[{"requests": 100, "per": 60}]),
            route_limit("/free", limits=[]),
            route_limit("/own", limits=[{"requests": 100, "per": 60, "key": "route"}]),
        ]
    )
    for path in ("/public", "/public", "/free", "/free", "/free", "/own"):
        assert await status(gateway, path) == 200
    from prometheus_client import generate_latest

    text = generate_latest(gateway.metrics.registry).decode()
    assert "bastion_gateway_rate_limit_admitted_total 3.0" in text


def test_ip_bucket_groups() -> None:
    assert ip_bucket("192.0.2.1") == ip_bucket("::ffff:192.0.2.1")
    assert ip_bucket("2001:db8::1") == ip_bucket("2001:db8::ffff:ffff:ffff:ffff") == "6:20010db800000000/64"
    assert ip_bucket("not an address") == "?"


@pytest.mark.parametrize(
    ("rate_limit", "auth", "message"),
    [
        ({"limits": [{"requests": 1, "per": 1, "key": "client"}]}, "none", "needs auth"),
        ({"limits": [{"requests": 1, "per": 1, "key": "header"}]}, "required", "set header"),
        ({"limits": [{"requests": 1, "per": 1, "header": "X-A"}]}, "required", "set header"),
        ({"limits": [{"requests": 0, "per": 1}]}, "required", "greater than or equal to 1"),
        ({"limits": [{"requests": 1, "per": 1}, {"requests": 1, "per": 1}]}, "required", "same name"),
        ({"on_error": "maybe"}, "required", "'closed' or 'open'"),
    ],
)
def test_settings_refuse_what_cannot_work(rate_limit: dict[str, Any], auth: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings.model_validate(
            {
                "issuers": [{"issuer": "https://a", "audience": AUD}],
                "upstreams": {"app": {"targets": ["127.0.0.1:1"]}},
                "routes": [{"prefix": "/x", "upstream": "app", "auth": auth, "rate_limit": rate_limit}],
            }
        )

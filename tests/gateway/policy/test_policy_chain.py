"""The chain is pluggable, several issuers share routes, opaque tokens are introspected."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import time
from collections.abc import Awaitable
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web

from bastion.gateway.app import create_gateway
from bastion.gateway.contract import Decision
from bastion.gateway.contract import Forward
from bastion.gateway.contract import Reply
from bastion.gateway.contract import RequestHead
from bastion.gateway.observe import AccessLog
from bastion.gateway.policies import Exchange
from bastion.gateway.policies import Policy
from bastion.gateway.policies import PolicyContext
from bastion.gateway.policies import PolicyResult
from bastion.gateway.policies import default_factories
from bastion.gateway.policies import problem
from bastion.gateway.policies import run_chain
from bastion.gateway.settings import GatewaySettings
from bastion.gateway.settings import RouteSettings
from bastion.gateway.settings import UpstreamSettings

from .helpers import Issuer

AUD = "https://api.example"


class Group:
    """The contract's ``UpstreamGroup`` shape; the policy layer only reads ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name


def groups(name: str, settings: UpstreamSettings) -> Group:
    return Group(name)


async def decide(
    handler: Any, target: bytes, headers: list[tuple[bytes, bytes]], peer: str = "203.0.113.1"
) -> Decision:
    decision = handler(RequestHead(method=b"GET", target=target, headers=headers, client=(peer, 1)))
    if inspect.isawaitable(decision):
        decision = await decision
    return decision  # type: ignore[no-any-return]


class DenyNetwork:
    """A real (if small) IP rule: refuse clients whose address starts with a prefix."""

    name = "deny_network"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def check(self, exchange: Exchange) -> PolicyResult:
        if exchange.client_ip.startswith(self.prefix):
            return problem(403, "Forbidden", "Your network is blocked")
        return None


class SlowQuota:
    """An asynchronous policy (as a Redis-backed rate limit would be): counts per subject."""

    name = "quota"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used: dict[str | None, int] = {}

    def check(self, exchange: Exchange) -> Awaitable[PolicyResult]:
        return self._check(exchange)

    async def _check(self, exchange: Exchange) -> PolicyResult:
        await asyncio.sleep(0)
        subject = exchange.principal.subject if exchange.principal is not None else None
        self.used[subject] = self.used.get(subject, 0) + 1
        if self.used[subject] > self.limit:
            return problem(429, "Too Many Requests")
        return None


@pytest.mark.anyio
async def test_custom_policies_plug_into_the_chain() -> None:
    issuer = Issuer("https://auth.example")
    await issuer.start()
    quota = SlowQuota(limit=2)

    def ip_rules(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
        return (DenyNetwork("198.51.100."),)

    def quotas(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
        return (quota,) if route.auth == "required" else ()

    settings = GatewaySettings.model_validate(
        {
            "issuers": [{"issuer": issuer.issuer, "jwks_uri": issuer.jwks_uri, "audience": AUD}],
            "upstreams": {"api": {"targets": ["127.0.0.1:1"]}},
            "routes": [
                {"prefix": "/api", "upstream": "api"},
                {"prefix": "/open", "upstream": "api", "auth": "none"},
            ],
        }
    )
    gateway = create_gateway(
        settings,
        upstream_factory=groups,
        access_log=AccessLog(io.BytesIO()),
        policy_factories=[ip_rules, *default_factories(), quotas],
    )
    try:
        chain = gateway.handler.table.match("/api")
        assert chain is not None
        assert [p.name for p in chain.policies] == ["deny_network", "query_token", "bearer", "quota"]
        auth = [(b"authorization", b"Bearer " + issuer.token().encode())]
        blocked = await decide(gateway.handler, b"/open/x", [], peer="198.51.100.7")
        assert isinstance(blocked, Reply)
        assert blocked.status == 403
        # The IP rule runs before authentication: a blocked client learns nothing about tokens.
        blocked = await decide(gateway.handler, b"/api/x", [], peer="198.51.100.7")
        assert isinstance(blocked, Reply)
        assert blocked.status == 403
        assert isinstance(await decide(gateway.handler, b"/api/x", auth), Forward)
        # Second request: bearer answers from the cache, the quota still goes async.
        assert isinstance(await decide(gateway.handler, b"/api/x", auth), Forward)
        limited = await decide(gateway.handler, b"/api/x", auth)
        assert isinstance(limited, Reply)
        assert limited.status == 429
        assert quota.used == {"alice": 3}
    finally:
        await gateway.close()
        await issuer.stop()


def test_run_chain_stays_synchronous_without_waiting_policies() -> None:
    exchange: Any = type("E", (), {"client_ip": "10.0.0.1"})()
    assert run_chain([DenyNetwork("192."), DenyNetwork("172.")], exchange) is None
    refused = run_chain([DenyNetwork("192."), DenyNetwork("10.")], exchange)
    assert isinstance(refused, Reply)
    assert refused.status == 403


@pytest.mark.anyio
async def test_several_issuers_are_told_apart_by_iss() -> None:
    first, second = Issuer("https://one.example"), Issuer("https://two.example", kid="other")
    for issuer in (first, second):
        await issuer.start()
    settings = GatewaySettings.model_validate(
        {
            "issuers": [
                {"issuer": i.issuer, "jwks_uri": i.jwks_uri, "audience": AUD} for i in (first, second)
            ],
            "upstreams": {"api": {"targets": ["127.0.0.1:1"]}},
            "routes": [
                {"prefix": "/both", "upstream": "api"},
                {"prefix": "/one", "upstream": "api", "issuers": [first.issuer]},
            ],
        }
    )
    gateway = create_gateway(settings, upstream_factory=groups, access_log=AccessLog(io.BytesIO()))
    try:
        for issuer in (first, second):
            auth = [(b"authorization", b"Bearer " + issuer.token(subject=issuer.issuer).encode())]
            decision = await decide(gateway.handler, b"/both/x", auth)
            assert isinstance(decision, Forward)
            assert (b"x-bastion-subject", issuer.issuer.encode()) in decision.headers
        only_second = [(b"authorization", b"Bearer " + second.token().encode())]
        refused = await decide(gateway.handler, b"/one/x", only_second)
        assert isinstance(refused, Reply)
        assert refused.status == 401
        assert (first.fetches, second.fetches) == (1, 1)
    finally:
        await gateway.close()
        for issuer in (first, second):
            await issuer.stop()


@pytest.mark.anyio
async def test_opaque_tokens_are_introspected() -> None:
    issuer = Issuer("https://auth.example")
    await issuer.start()
    calls: list[dict[str, str]] = []
    expected_auth = "Basic " + base64.b64encode(b"gateway:s3cret").decode()

    async def introspect(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected_auth:
            return web.json_response({"error": "invalid_client"}, status=401)
        form = dict(await request.post())
        calls.append({k: str(v) for k, v in form.items()})
        if form["token"] != "opaque-good":
            return web.json_response({"active": False})
        return web.json_response(
            {
                "active": True,
                "iss": issuer.issuer,
                "sub": "bob",
                "client_id": "partner",
                "scope": "catalog:read",
                "aud": AUD,
                "exp": int(time.time()) + 300,
            }
        )

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}/introspect"
    settings = GatewaySettings.model_validate(
        {
            "issuers": [
                {
                    "issuer": issuer.issuer,
                    "jwks_uri": issuer.jwks_uri,
                    "audience": AUD,
                    "introspection": {
                        "endpoint": endpoint,
                        "client_id": "gateway",
                        "client_secret_env": "GW",
                    },
                }
            ],
            "upstreams": {"api": {"targets": ["127.0.0.1:1"]}},
            "routes": [{"prefix": "/catalog", "upstream": "api", "scopes": {"GET": ["catalog:read"]}}],
        }
    )
    with pytest.raises(ValueError, match="client secret was not provided"):
        create_gateway(settings, upstream_factory=groups, access_log=AccessLog(io.BytesIO()))
    gateway = create_gateway(
        settings,
        introspection_secrets={issuer.issuer: "s3cret"},
        upstream_factory=groups,
        access_log=AccessLog(io.BytesIO()),
    )
    try:
        good = [(b"authorization", b"Bearer opaque-good")]
        decision = await decide(gateway.handler, b"/catalog/x", good)
        assert isinstance(decision, Forward)
        assert (b"x-bastion-subject", b"bob") in decision.headers
        assert (b"x-bastion-client", b"partner") in decision.headers
        again = gateway.handler(
            RequestHead(method=b"GET", target=b"/catalog/y", headers=good, client=("h", 1))
        )
        assert isinstance(again, Forward)  # cached: decided synchronously
        refused = await decide(gateway.handler, b"/catalog/x", [(b"authorization", b"Bearer opaque-bad")])
        assert isinstance(refused, Reply)
        assert refused.status == 401
        assert gateway.metrics.auth_failures == {"inactive": 1}
        assert [c["token"] for c in calls] == ["opaque-good", "opaque-bad"]
        # A JWT still goes to local validation, not to the endpoint.
        jwt = [(b"authorization", b"Bearer " + issuer.token().encode())]
        assert isinstance(await decide(gateway.handler, b"/catalog/x", jwt), Forward)
        assert len(calls) == 2
    finally:
        await gateway.close()
        await runner.cleanup()
        await issuer.stop()

"""Rate limits through the real gateway on Redis: exact under concurrent requests, and the
route's ``on_error`` when a private Redis is killed mid-run."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from bastion.gateway.app import Gateway
from bastion.gateway.app import create_gateway
from bastion.gateway.observe import AccessLog
from bastion.ratelimit.redis import RedisLimiter
from tests.private_redis import PrivateRedis

from .helpers import Issuer
from .test_policy_e2e import Upstream
from .test_policy_e2e import raw
from .test_policy_ratelimit import request
from .test_policy_ratelimit import settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Issuer, Upstream]]:
    issuer = Issuer("https://auth.example")
    app = Upstream("app")
    await issuer.start()
    await app.start()
    yield issuer, app
    await app.stop()
    await issuer.stop()


async def started(
    parts: tuple[Issuer, Upstream], limiter: RedisLimiter, routes: list[dict[str, Any]]
) -> Gateway:
    gateway = create_gateway(
        settings_for(*parts, routes=routes), access_log=AccessLog(io.BytesIO()), rate_limiter=limiter
    )
    await gateway.start()
    return gateway


async def get(gateway: Gateway, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    assert gateway.port is not None
    return await raw(gateway.port, request(path))


def limited(prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "prefix": prefix,
        "upstream": "app",
        "auth": "none",
        "rate_limit": {"limits": [{"requests": 10, "per": 60}], **extra},
    }


async def test_concurrent_requests_through_redis_admit_exactly_the_limit(
    upstream: tuple[Issuer, Upstream], redis_url: str
) -> None:
    limiter = RedisLimiter(redis_url, prefix=f"test:{secrets.token_hex(6)}:", timeout=2.0)
    gateway = await started(upstream, limiter, [limited("/public")])
    try:
        replies = await asyncio.gather(*(get(gateway, "/public/x") for _ in range(60)))
    finally:
        await gateway.close()
        await limiter.close()
    codes = [code for code, _, _ in replies]
    assert codes.count(200) == 10
    assert codes.count(429) == 50
    assert len(upstream[1].seen) == 10
    refused = next(headers for code, headers, _ in replies if code == 429)
    assert refused[b"ratelimit-policy"] == b'"10-per-60s";q=10;w=60'
    assert refused[b"ratelimit"].startswith(b'"10-per-60s";r=0;t=')


async def test_redis_killed_mid_run_fails_closed_by_default_and_open_where_asked(
    upstream: tuple[Issuer, Upstream], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = PrivateRedis(tmp_path)
    limiter = RedisLimiter(server.url, timeout=0.5)
    gateway = await started(upstream, limiter, [limited("/closed"), limited("/open", on_error="open")])
    try:
        assert (await get(gateway, "/closed"))[0] == 200
        assert (await get(gateway, "/open"))[0] == 200
        server.kill()
        with caplog.at_level(logging.WARNING, logger="bastion.gateway.ratelimit"):
            code, headers, body = await get(gateway, "/closed")
            assert code == 503
            assert headers[b"retry-after"] == b"1"
            assert orjson.loads(body)["title"] == "Service Unavailable"
            closed = await asyncio.gather(*(get(gateway, "/closed") for _ in range(5)))
            assert [c for c, _, _ in closed] == [503] * 5
            assert (await get(gateway, "/open"))[0] == 200
        fallbacks = [r for r in caplog.records if "undecided" in r.getMessage()]
        assert len(fallbacks) == 7
        text = generate_latest(gateway.metrics.registry).decode()
        assert 'bastion_gateway_rate_limit_errors_total{on_error="closed",route="/closed"} 6.0' in text
        assert 'bastion_gateway_rate_limit_errors_total{on_error="open",route="/open"} 1.0' in text
        server.start()
        assert (await get(gateway, "/closed"))[0] == 200  # decided again, on a fresh bucket
    finally:
        await gateway.close()
        await limiter.close()
        server.kill()

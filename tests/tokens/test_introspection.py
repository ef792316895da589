"""Introspector against a real RFC 7662 endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bastion.tokens import Introspector
from bastion.tokens import IssuerUnavailable
from bastion.tokens import TokenExpired
from bastion.tokens import TokenInactive
from bastion.tokens import TokenTooLarge
from bastion.tokens import WrongAudience
from bastion.tokens import WrongIssuer
from bastion.tokens import WrongType
from tests.tokens.tokens_helpers import AUDIENCE
from tests.tokens.tokens_helpers import Clock
from tests.tokens.tokens_helpers import Issuer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def introspector(issuer: Issuer, clock: Clock) -> AsyncIterator[Introspector]:
    async with Introspector(
        issuer.url, client_id="gateway", client_secret="s3cret", audience=AUDIENCE, clock=clock
    ) as inspector:
        yield inspector


def active(issuer: Issuer, clock: Clock, **extra: Any) -> dict[str, Any]:
    return {
        "active": True,
        "iss": issuer.url,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "partner",
        "scope": "orders:read",
        "token_type": "Bearer",
        "exp": int(clock()) + 3600,
        "jti": "j1",
        **extra,
    }


async def test_active_token_and_client_secret_basic(
    issuer: Issuer, introspector: Introspector, clock: Clock
) -> None:
    issuer.introspection["opaque-1"] = active(issuer, clock)
    principal = await introspector.introspect("opaque-1")
    assert principal.subject == "alice"
    assert principal.client_id == "partner"
    assert principal.scopes == frozenset({"orders:read"})
    assert principal.token_id == "j1"
    assert principal.issuer == issuer.url
    assert issuer.introspection_auth == ["Basic " + base64.b64encode(b"gateway:s3cret").decode()]
    # The endpoint came from RFC 8414 metadata.
    assert issuer.hits["/.well-known/oauth-authorization-server"] == 1


async def test_positive_cache_never_outlives_the_bound(
    issuer: Issuer, introspector: Introspector, clock: Clock
) -> None:
    issuer.introspection["t"] = active(issuer, clock)
    await introspector.introspect("t")
    assert introspector.cached("t") is not None
    clock.advance(29)
    await introspector.introspect("t")
    assert issuer.hits["/introspect"] == 1
    # The issuer revokes it: within 30 s we notice (the documented worst case).
    issuer.introspection["t"] = {"active": False}
    clock.advance(2)
    assert introspector.cached("t") is None
    with pytest.raises(TokenInactive):
        await introspector.introspect("t")
    assert issuer.hits["/introspect"] == 2


async def test_positive_cache_never_outlives_exp(
    issuer: Issuer, introspector: Introspector, clock: Clock
) -> None:
    issuer.introspection["t"] = active(issuer, clock, exp=int(clock()) + 10)
    await introspector.introspect("t")
    clock.advance(10)
    assert introspector.cached("t") is None
    clock.advance(61)
    with pytest.raises(TokenExpired):
        await introspector.introspect("t")
    assert issuer.hits["/introspect"] == 2


async def test_inactive_answers_are_cached_briefly(
    issuer: Issuer, introspector: Introspector, clock: Clock
) -> None:
    for _ in range(20):
        with pytest.raises(TokenInactive) as info:
            await introspector.introspect("garbage")
        assert info.value.reason == "inactive"
    assert issuer.hits["/introspect"] == 1
    clock.advance(5)
    with pytest.raises(TokenInactive):
        await introspector.introspect("garbage")
    assert issuer.hits["/introspect"] == 2


async def test_negative_cache_is_bounded_and_separate(issuer: Issuer, clock: Clock) -> None:
    issuer.introspection["good"] = active(issuer, clock)
    async with Introspector(
        issuer.url,
        client_id="gateway",
        client_secret="s3cret",
        audience=AUDIENCE,
        inactive_cache_size=3,
        clock=clock,
    ) as inspector:
        await inspector.introspect("good")
        for index in range(10):
            with pytest.raises(TokenInactive):
                await inspector.introspect(f"garbage-{index}")
        assert inspector.cached("good") is not None  # the flood evicted only negative entries
        with pytest.raises(TokenInactive):
            await inspector.introspect("garbage-0")  # evicted: asked again
    assert issuer.hits["/introspect"] == 12


async def test_concurrent_lookups_share_one_request(
    issuer: Issuer, introspector: Introspector, clock: Clock
) -> None:
    issuer.introspection["t"] = active(issuer, clock)
    results = await asyncio.gather(*(introspector.introspect("t") for _ in range(100)))
    assert len({id(result) for result in results}) == 1
    assert issuer.hits["/introspect"] == 1
    garbage = await asyncio.gather(
        *(introspector.introspect("nope") for _ in range(100)), return_exceptions=True
    )
    assert all(isinstance(result, TokenInactive) for result in garbage)
    assert issuer.hits["/introspect"] == 2


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"aud": "https://other.example"}, WrongAudience),
        ({"aud": None}, WrongAudience),
        ({"iss": "https://evil.example"}, WrongIssuer),
        ({"token_type": "refresh_token"}, WrongType),
        ({"exp": 0}, TokenExpired),
    ],
)
async def test_active_answers_are_still_checked(
    issuer: Issuer, introspector: Introspector, clock: Clock, extra: dict[str, Any], error: type[Exception]
) -> None:
    answer = active(issuer, clock, **extra)
    issuer.introspection["t"] = {name: value for name, value in answer.items() if value is not None}
    with pytest.raises(error):
        await introspector.introspect("t")


async def test_bad_credentials_and_outages_are_never_cached(issuer: Issuer, clock: Clock) -> None:
    issuer.introspection["t"] = active(issuer, clock)
    async with Introspector(
        issuer.url,
        client_id="gateway",
        client_secret="wrong",
        audience=AUDIENCE,
        introspection_endpoint=issuer.url + "/introspect",
        clock=clock,
    ) as inspector:
        for _ in range(2):
            with pytest.raises(IssuerUnavailable):
                await inspector.introspect("t")
        assert issuer.hits["/introspect"] == 2
        assert issuer.hits["/.well-known/oauth-authorization-server"] == 0


async def test_issuer_down(issuer: Issuer, introspector: Introspector) -> None:
    await issuer.stop()
    with pytest.raises(IssuerUnavailable):
        await introspector.introspect("t")


async def test_oversize_token_is_not_sent(issuer: Issuer, introspector: Introspector) -> None:
    with pytest.raises(TokenTooLarge):
        await introspector.introspect("x" * 9000)
    assert issuer.hits["/introspect"] == 0


async def test_per_call_audience(issuer: Issuer, introspector: Introspector, clock: Clock) -> None:
    issuer.introspection["t"] = active(issuer, clock, aud=[AUDIENCE, "https/b"])
    assert (await introspector.introspect("t", audience="https/b")).audience == "https/b"
    assert introspector.cached("t") is None  # cached per audience
    with pytest.raises(WrongAudience):
        await introspector.introspect("t", audience="https/c")

"""The handler end to end at the contract seam: RequestHeads in, Replies and Forwards out.

Tokens are verified by real ``TokenValidator`` objects fetching a real JWKS over loopback. The
engine is not involved: its upstream groups are represented by the contract's minimal shape
(a name), which is all the policy layer reads from them.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from bastion.gateway.app import Gateway
from bastion.gateway.app import ReloadError
from bastion.gateway.app import create_gateway
from bastion.gateway.contract import Decision
from bastion.gateway.contract import Forward
from bastion.gateway.contract import Headers
from bastion.gateway.contract import Outcome
from bastion.gateway.contract import Reply
from bastion.gateway.contract import RequestHead
from bastion.gateway.observe import AccessLog
from bastion.gateway.settings import GatewaySettings
from bastion.gateway.settings import IssuerSettings
from bastion.gateway.settings import UpstreamSettings
from bastion.tokens import TokenValidator

from .helpers import Issuer

AUD = "https://api.example"


@dataclass(eq=False)
class Group:
    """The contract's ``UpstreamGroup`` shape; the policy layer only reads ``name``."""

    name: str
    closed: bool = False

    async def aclose(self) -> None:
        self.closed = True


def settings(issuers: list[Issuer], **overrides: Any) -> GatewaySettings:
    data: dict[str, Any] = {
        "realm": "shop",
        "trusted_proxies": ["10.0.0.0/8"],
        "strip_headers": ["X-User-Id"],
        "issuers": [
            {"issuer": i.issuer, "jwks_uri": i.jwks_uri, "audience": AUD, "algorithms": [i.alg]}
            for i in issuers
        ],
        "upstreams": {
            "catalog": {"targets": ["127.0.0.1:9001"]},
            "orders": {"targets": ["127.0.0.1:9002"]},
            "public": {"targets": ["127.0.0.1:9003"]},
        },
        "routes": [
            {
                "prefix": "/catalog",
                "upstream": "catalog",
                "scopes": {"GET": ["catalog:read"], "*": ["catalog:write"]},
                "retry": True,
            },
            {
                "prefix": "/orders",
                "upstream": "orders",
                "strip_prefix": True,
                "forward_authorization": True,
                "read_timeout": 5,
            },
            {"prefix": "/public", "upstream": "public", "auth": "none"},
            # Only GET (and so HEAD) is listed, and no "*": every other method is refused.
            {"prefix": "/reports", "upstream": "orders", "scopes": {"GET": ["reports:read"]}},
        ],
    }
    data.update(overrides)
    return GatewaySettings.model_validate(data)


class Sink(io.BytesIO):
    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.getvalue().splitlines()]


@dataclass
class World:
    issuer: Issuer
    gateway: Gateway
    sink: Sink
    groups: dict[str, Group]

    async def call(
        self,
        target: bytes,
        headers: Headers | None = None,
        *,
        method: bytes = b"GET",
        client: tuple[str, int] = ("203.0.113.9", 50000),
        tls: bool = False,
    ) -> Decision:
        head = RequestHead(method=method, target=target, headers=headers or [], client=client, tls=tls)
        decision = self.gateway.handler(head)
        if inspect.isawaitable(decision):
            decision = await decision
        return decision

    def bearer(self, **claims: Any) -> Headers:
        return [(b"authorization", b"Bearer " + self.issuer.token(**claims).encode())]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    issuer = Issuer("https://auth.example")
    await issuer.start()
    groups: dict[str, Group] = {}

    def upstream_factory(name: str, upstream: UpstreamSettings) -> Group:
        groups[name] = Group(name)
        return groups[name]

    def verifier_factory(config: IssuerSettings) -> TokenValidator:
        return TokenValidator(
            config.issuer,
            audience=config.audience,
            jwks_uri=config.jwks_uri,
            algorithms=config.algorithms,
            leeway=config.leeway,
            cache_size=config.token_cache_size,
        )

    sink = Sink()
    gateway = create_gateway(
        settings([issuer]),
        verifiers=verifier_factory,
        upstream_factory=upstream_factory,
        access_log=AccessLog(sink),
    )
    yield World(issuer, gateway, sink, groups)
    await gateway.close()
    await issuer.stop()


def header(decision: Decision, name: bytes) -> bytes | None:
    found = [value for key, value in decision.headers if key == name]
    assert len(found) <= 1, found
    return found[0] if found else None


def complete(decision: Decision, status: int | None = None) -> None:
    assert decision.on_complete is not None
    code = status if status is not None else (decision.status if isinstance(decision, Reply) else 200)
    decision.on_complete(Outcome(status=code, bytes_sent=10, total_seconds=0.002, upstream_seconds=0.001))


# -- authentication -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_missing_token_gets_a_bare_challenge(world: World) -> None:
    reply = await world.call(b"/catalog/items")
    assert isinstance(reply, Reply)
    assert reply.status == 401
    # RFC 6750 §3.1: no error code when the request carried no credentials.
    assert header(reply, b"www-authenticate") == b'Bearer realm="shop"'
    assert header(reply, b"content-type") == b"application/problem+json"
    assert orjson.loads(reply.body)["status"] == 401
    assert header(reply, b"x-request-id")
    assert header(reply, b"server") == b"bastion"


@pytest.mark.anyio
@pytest.mark.parametrize("value", [b"Basic YWxpY2U6c2VjcmV0", b"Digest x", b"Bearer2 x"])
async def test_other_schemes_count_as_no_token(world: World, value: bytes) -> None:
    reply = await world.call(b"/catalog/items", [(b"authorization", value)])
    assert isinstance(reply, Reply)
    assert reply.status == 401
    assert header(reply, b"www-authenticate") == b'Bearer realm="shop"'


@pytest.mark.anyio
async def test_valid_token_is_forwarded_with_identity(world: World) -> None:
    token = world.issuer.token(scope="catalog:read orders:read", subject="alice", client_id="shop")
    decision = await world.call(
        b"/catalog/items?page=2",
        [
            (b"host", b"api.example"),
            (b"authorization", b"bearer " + token.encode()),  # scheme is case-insensitive
            (b"x-bastion-subject", b"admin"),
            (b"x-user-id", b"1"),
        ],
    )
    assert isinstance(decision, Forward)
    assert decision.upstream is world.groups["catalog"]
    assert decision.target == b"/catalog/items?page=2"
    assert header(decision, b"x-bastion-subject") == b"alice"
    assert header(decision, b"x-bastion-client") == b"shop"
    assert header(decision, b"x-bastion-scopes") == b"catalog:read orders:read"
    assert header(decision, b"authorization") is None
    assert header(decision, b"x-user-id") is None
    assert header(decision, b"x-forwarded-for") == b"203.0.113.9"
    assert header(decision, b"x-forwarded-host") == b"api.example"
    assert decision.retry is True
    assert decision.response_headers is not None
    rid = header(decision, b"x-request-id")
    assert decision.response_headers(200, [(b"server", b"uvicorn")]) == [
        (b"server", b"bastion"),
        (b"x-request-id", rid),
    ]


@pytest.mark.anyio
async def test_second_request_is_decided_synchronously_from_the_cache(world: World) -> None:
    headers = world.bearer()
    first = await world.call(b"/catalog/a", headers)
    assert isinstance(first, Forward)
    head = RequestHead(method=b"GET", target=b"/catalog/b", headers=headers, client=("203.0.113.9", 1))
    second = world.gateway.handler(head)
    assert isinstance(second, Forward)  # no awaitable: the fast path
    assert world.gateway.metrics.cache_hits == 1
    assert world.gateway.metrics.cache_misses == 1
    assert world.issuer.fetches == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"lifetime": -120}, "expired"),
        ({"audience": "https://other.example"}, "wrong_aud"),
        ({"iss": "https://evil.example"}, "wrong_iss"),
    ],
)
async def test_invalid_tokens_get_invalid_token(world: World, claims: dict[str, Any], reason: str) -> None:
    reply = await world.call(b"/catalog/items", world.bearer(**claims))
    assert isinstance(reply, Reply)
    assert reply.status == 401
    challenge = header(reply, b"www-authenticate")
    assert challenge is not None
    assert challenge.startswith(b'Bearer realm="shop", error="invalid_token"')
    assert world.gateway.metrics.auth_failures == {reason: 1}


@pytest.mark.anyio
async def test_forged_signature_is_refused(world: World) -> None:
    from bastion.protocol import jose

    forged = world.issuer.token(key=jose.generate_private_key("ES256"))
    reply = await world.call(b"/catalog/items", [(b"authorization", b"Bearer " + forged.encode())])
    assert isinstance(reply, Reply)
    assert reply.status == 401
    assert b'error="invalid_token"' in (header(reply, b"www-authenticate") or b"")


MALFORMED = b'Bearer realm="shop", error="invalid_token", error_description="The access token is malformed"'
ONE_CREDENTIAL = (
    b'Bearer realm="shop", error="invalid_request", '
    b'error_description="Send exactly one credential, in one Authorization header"'
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value", [b"Bearer a b", b"Bearer a\tb", b"Bearer =abc", b'Bearer "abc"', b"Bearer abc;", b"Bearer a=b"]
)
async def test_a_malformed_bearer_token_is_invalid_token(world: World, value: bytes) -> None:
    """RFC 6750 §3.1: invalid_token covers a token that is "malformed", with 401."""
    reply = await world.call(b"/catalog/items", [(b"authorization", value)])
    assert isinstance(reply, Reply)
    assert reply.status == 401
    assert header(reply, b"www-authenticate") == MALFORMED
    assert world.gateway.metrics.auth_failures == {"malformed": 1}


@pytest.mark.anyio
async def test_an_oversized_bearer_token_is_invalid_token(world: World) -> None:
    reply = await world.call(b"/catalog/items", [(b"authorization", b"Bearer " + b"a" * (16 * 1024 + 1))])
    assert isinstance(reply, Reply)
    assert reply.status == 401
    assert header(reply, b"www-authenticate") == (
        b'Bearer realm="shop", error="invalid_token", error_description="The access token is too large"'
    )


@pytest.mark.anyio
@pytest.mark.parametrize("value", [b"Bearer", b"Bearer ", b"Bearer   ", b"bearer"])
async def test_bearer_without_a_token_lacks_credentials(world: World, value: bytes) -> None:
    """RFC 6750 §3.1: a request lacking authentication information gets no error code."""
    reply = await world.call(b"/catalog/items", [(b"authorization", value)])
    assert isinstance(reply, Reply)
    assert reply.status == 401
    assert header(reply, b"www-authenticate") == b'Bearer realm="shop"'
    assert world.gateway.metrics.auth_failures == {"missing": 1}


@pytest.mark.anyio
async def test_two_authorization_headers_are_refused(world: World) -> None:
    token = world.issuer.token().encode()
    reply = await world.call(
        b"/catalog/items", [(b"authorization", b"Bearer " + token), (b"authorization", b"Bearer " + token)]
    )
    assert isinstance(reply, Reply)
    assert reply.status == 400
    assert header(reply, b"www-authenticate") == (
        b'Bearer realm="shop", error="invalid_request", '
        b'error_description="Send exactly one Authorization header"'
    )


@pytest.mark.anyio
@pytest.mark.parametrize("tail", [b", Bearer TOKEN", b",Basic eA==", b","])
async def test_credentials_joined_in_one_header_are_invalid_requests(world: World, tail: bytes) -> None:
    """Two field lines merged by a proxy (RFC 9110 §5.3): two credentials, a malformed request."""
    token = world.issuer.token().encode()
    value = b"Bearer " + token + tail.replace(b"TOKEN", token)
    reply = await world.call(b"/catalog/items", [(b"authorization", value)])
    assert isinstance(reply, Reply)
    assert reply.status == 400
    assert header(reply, b"www-authenticate") == ONE_CREDENTIAL


@pytest.mark.anyio
@pytest.mark.parametrize("query", [b"access_token=abc", b"x=1&access_token=abc", b"access%5Ftoken=abc"])
async def test_token_in_query_and_in_the_header_is_invalid_request(world: World, query: bytes) -> None:
    """RFC 6750 §2: "Clients MUST NOT use more than one method to transmit the token"."""
    reply = await world.call(b"/catalog/items?" + query, world.bearer())
    assert isinstance(reply, Reply)
    assert reply.status == 400
    assert header(reply, b"www-authenticate") == ONE_CREDENTIAL


@pytest.mark.anyio
@pytest.mark.parametrize("query", [b"access_token=abc", b"x=1&access_token=abc", b"access%5Ftoken=abc"])
async def test_token_only_in_the_query_is_no_credential(world: World, query: bytes) -> None:
    """The query parameter is not a credential here (OAuth 2.1 §5.2): 401 without an error code."""
    token = world.issuer.token()
    reply = await world.call(b"/catalog/items?" + query.replace(b"abc", token.encode()))
    assert isinstance(reply, Reply)
    assert reply.status == 401
    assert header(reply, b"www-authenticate") == b'Bearer realm="shop"'
    assert orjson.loads(reply.body)["detail"] == "Send the access token in the Authorization header"
    assert world.gateway.metrics.auth_failures == {"token_in_query": 1}


@pytest.mark.anyio
async def test_missing_scope_is_403_naming_the_scope(world: World) -> None:
    headers = world.bearer(scope="catalog:read")
    reply = await world.call(b"/catalog/items", headers, method=b"POST")
    assert isinstance(reply, Reply)
    assert reply.status == 403
    assert header(reply, b"www-authenticate") == (
        b'Bearer realm="shop", error="insufficient_scope", '
        b'error_description="The access token lacks a required scope", scope="catalog:write"'
    )
    assert isinstance(await world.call(b"/catalog/items", headers), Forward)
    # POST is not idempotent: never retried even though the route allows retries.
    writer = world.bearer(scope="catalog:write")
    post = await world.call(b"/catalog/items", writer, method=b"POST")
    assert isinstance(post, Forward)
    assert post.retry is False


READ_CHALLENGE = (
    b'Bearer realm="shop", error="insufficient_scope", '
    b'error_description="The access token lacks a required scope", scope="reports:read"'
)


@pytest.mark.anyio
async def test_head_needs_the_scopes_of_get(world: World) -> None:
    """RFC 9110 §9.3.2: HEAD is GET without content, so it reveals what GET does (status,
    length, validators) and needs GET's scopes, not the "*" entry's, nor none."""
    outsider = world.bearer(scope="catalog:read")
    reply = await world.call(b"/reports/q3", outsider, method=b"HEAD")
    assert isinstance(reply, Reply)
    assert reply.status == 403
    assert header(reply, b"www-authenticate") == READ_CHALLENGE
    reader = world.bearer(scope="reports:read")
    assert isinstance(await world.call(b"/reports/q3", reader, method=b"HEAD"), Forward)
    # With a "*" entry too, HEAD still takes GET's scopes ("*" here is catalog:write).
    assert isinstance(await world.call(b"/catalog/items", outsider, method=b"HEAD"), Forward)
    writer = world.bearer(scope="catalog:write")
    refused = await world.call(b"/catalog/items", writer, method=b"HEAD")
    assert isinstance(refused, Reply)
    assert refused.status == 403
    assert b'scope="catalog:read"' in (header(refused, b"www-authenticate") or b"")


@pytest.mark.anyio
@pytest.mark.parametrize("method", [b"POST", b"OPTIONS", b"PROPFIND", b"PURGE", b"DELETE"])
@pytest.mark.parametrize("scope", ["catalog:read", "reports:read"])
async def test_methods_the_scope_table_does_not_cover_are_405(
    world: World, method: bytes, scope: str
) -> None:
    """Deny by default: without an entry for the method and without "*", nothing is forwarded,
    whatever the token holds; the 405 names what the route allows (RFC 9110 §15.5.6)."""
    reply = await world.call(b"/reports/q3", world.bearer(scope=scope), method=method)
    assert isinstance(reply, Reply)
    assert reply.status == 405
    assert header(reply, b"allow") == b"GET, HEAD"
    assert header(reply, b"www-authenticate") is None
    assert header(reply, b"content-type") == b"application/problem+json"
    assert orjson.loads(reply.body) == {
        "type": "about:blank",
        "title": "Method Not Allowed",
        "status": 405,
        "detail": "The route does not allow this method",
    }
    complete(reply)
    world.gateway.access_log.flush()
    [line] = world.sink.lines()
    assert (line["method"], line["status"], line["route"]) == (method.decode(), 405, "/reports")


@pytest.mark.anyio
async def test_an_uncovered_method_without_a_token_is_still_401(world: World) -> None:
    """Authentication comes first: a caller without a valid token learns nothing of the table."""
    reply = await world.call(b"/reports/q3", method=b"PROPFIND")
    assert isinstance(reply, Reply)
    assert reply.status == 401
    assert header(reply, b"www-authenticate") == b'Bearer realm="shop"'
    assert header(reply, b"allow") is None


@pytest.mark.anyio
@pytest.mark.parametrize("method", [b"HEAD", b"POST", b"OPTIONS", b"PROPFIND", b"PURGE"])
async def test_routes_without_a_scope_table_or_auth_forward_every_method(world: World, method: bytes) -> None:
    assert isinstance(await world.call(b"/public/x", method=method), Forward)
    assert isinstance(await world.call(b"/orders/1", world.bearer(scope=""), method=method), Forward)


@pytest.mark.anyio
async def test_issuer_unreachable_is_503(world: World) -> None:
    headers = world.bearer()
    await world.issuer.stop()
    reply = await world.call(b"/catalog/items", headers)
    assert isinstance(reply, Reply)
    assert reply.status == 503
    assert header(reply, b"www-authenticate") is None
    assert world.gateway.metrics.auth_failures == {"issuer_unavailable": 1}


# -- routing, paths, headers ----------------------------------------------------------------


@pytest.mark.anyio
async def test_unmatched_path_is_404_problem(world: World) -> None:
    reply = await world.call(b"/catalogue", world.bearer())
    assert isinstance(reply, Reply)
    assert reply.status == 404
    assert header(reply, b"content-type") == b"application/problem+json"
    assert orjson.loads(reply.body) == {"type": "about:blank", "title": "Not Found", "status": 404}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "target",
    [
        b"/public/../catalog/items",
        b"/public/%2e%2e/catalog",
        b"/public%2F..%2Fcatalog",
        b"/catalog;x/items",
        b"//catalog",
    ],
)
async def test_bypass_forms_never_forward(world: World, target: bytes) -> None:
    reply = await world.call(target)
    assert isinstance(reply, Reply)
    assert reply.status == 400
    complete(reply)
    assert world.gateway.metrics.path_refused
    world.gateway.access_log.flush()
    line = world.sink.lines()[-1]
    assert line["status"] == 400
    assert line["target"] == target.decode()


@pytest.mark.anyio
async def test_canonical_path_is_authorized_and_forwarded(world: World) -> None:
    decision = await world.call(b"/%63atalog/%69tems", world.bearer())
    assert isinstance(decision, Forward)
    assert decision.target == b"/catalog/items"


@pytest.mark.anyio
async def test_public_route_needs_no_token_but_strips_spoofed_identity(world: World) -> None:
    decision = await world.call(
        b"/public/x",
        [(b"x-bastion-subject", b"admin"), (b"X-Bastion-Scopes".lower(), b"all"), (b"x-user-id", b"7")],
    )
    assert isinstance(decision, Forward)
    assert not [n for n, _ in decision.headers if n.startswith(b"x-bastion-") or n == b"x-user-id"]


@pytest.mark.anyio
async def test_strip_prefix_and_forward_authorization(world: World) -> None:
    headers = world.bearer()
    decision = await world.call(b"/orders/42?expand=items", headers)
    assert isinstance(decision, Forward)
    assert decision.target == b"/42?expand=items"
    assert header(decision, b"authorization") == headers[0][1]
    assert decision.read_timeout == 5
    assert decision.retry is False


@pytest.mark.anyio
async def test_client_ip_and_request_id_through_a_trusted_proxy(world: World) -> None:
    decision = await world.call(
        b"/public/x",
        [
            (b"x-forwarded-for", b"198.51.100.4"),
            (b"x-request-id", b"edge-1"),
            (b"x-forwarded-proto", b"https"),
        ],
        client=("10.1.2.3", 4000),
    )
    assert isinstance(decision, Forward)
    assert header(decision, b"x-forwarded-for") == b"198.51.100.4, 10.1.2.3"
    assert header(decision, b"x-real-ip") == b"198.51.100.4"
    assert header(decision, b"x-request-id") == b"edge-1"
    assert header(decision, b"x-forwarded-proto") == b"https"
    spoofed = await world.call(b"/public/x", [(b"x-forwarded-for", b"1.1.1.1"), (b"x-request-id", b"edge-1")])
    assert isinstance(spoofed, Forward)
    assert header(spoofed, b"x-real-ip") == b"203.0.113.9"
    assert header(spoofed, b"x-request-id") != b"edge-1"


@pytest.mark.anyio
@pytest.mark.parametrize("method", [b"TRACE", b"CONNECT"])
async def test_trace_and_connect_are_refused(world: World, method: bytes) -> None:
    reply = await world.call(b"/public/x", method=method)
    assert isinstance(reply, Reply)
    assert reply.status == 405


# -- logging and metrics --------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_request_is_logged_once_without_the_token(world: World) -> None:
    token = world.issuer.token(subject="alice")
    ok = await world.call(b"/catalog/items?q=1", [(b"authorization", f"Bearer {token}".encode())])
    complete(ok, 200)
    denied = await world.call(b"/catalog/items")
    complete(denied)
    world.gateway.access_log.flush()
    first, second = world.sink.lines()
    assert first["path"] == "/catalog/items"
    assert first["route"] == "/catalog"
    assert first["status"] == 200
    assert first["subject"] == "alice"
    assert first["client_id"] == "shop"
    assert first["client_ip"] == "203.0.113.9"
    assert first["total_ms"] == 2.0
    assert first["upstream_ms"] == 1.0
    assert first["request_id"] == header(ok, b"x-request-id").decode()  # type: ignore[union-attr]
    assert second["status"] == 401
    assert second["auth_error"] == "missing"
    assert token not in world.sink.getvalue().decode()
    assert world.gateway.metrics.requests == {("/catalog", 200): 1, ("/catalog", 401): 1}


@pytest.mark.anyio
async def test_upstream_errors_are_counted_by_upstream(world: World) -> None:
    decision = await world.call(b"/public/x")
    assert isinstance(decision, Forward)
    assert decision.on_complete is not None
    decision.on_complete(Outcome(status=502, bytes_sent=0, total_seconds=0.01, error="upstream_connect"))
    assert world.gateway.metrics.upstream_errors == {("public", "upstream_connect"): 1}


# -- reload ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reload_swaps_routes_and_reuses_unchanged_parts(world: World) -> None:
    old_handler = world.gateway.handler
    catalog, orders = world.groups["catalog"], world.groups["orders"]
    await world.call(b"/catalog/a", world.bearer())
    new = settings(
        [world.issuer],
        upstreams={
            "catalog": {"targets": ["127.0.0.1:9001"]},
            "orders": {"targets": ["127.0.0.1:9999"]},
        },
        routes=[{"prefix": "/shop", "upstream": "catalog", "rewrite_prefix": "/catalog"}],
        drain_seconds=0.01,
    )
    await world.gateway.reload(new)
    assert world.gateway.handler is not old_handler
    assert world.groups["catalog"] is catalog  # unchanged upstream: same pools
    assert world.groups["orders"] is not orders  # changed targets: rebuilt
    moved = await world.call(b"/shop/a", world.bearer())
    assert isinstance(moved, Forward)
    assert moved.upstream is catalog
    assert moved.target == b"/catalog/a"
    assert world.issuer.fetches == 1  # unchanged issuer: same validator, same JWKS cache
    gone = await world.call(b"/catalog/a", world.bearer())
    assert isinstance(gone, Reply)
    assert gone.status == 404
    # The old handler still serves what it was given (in-flight requests finish on it).
    head = RequestHead(method=b"GET", target=b"/public/x", headers=[], client=("203.0.113.9", 1))
    assert isinstance(old_handler(head), Forward)
    await world.gateway.close()
    assert orders.closed
    assert world.groups["public"].closed


@pytest.mark.anyio
async def test_reload_refuses_listener_changes(world: World) -> None:
    with pytest.raises(ReloadError, match="listen"):
        await world.gateway.reload(settings([world.issuer], listen="127.0.0.1:9"))

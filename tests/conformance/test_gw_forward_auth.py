"""Forward-auth mode through the real engine: every ask ends as the proxy would have ended it.

The matrix (``tests.conformance.gw_forward``) is sent once through the gateway's own proxy by a
client, and once as a forward-auth ask by the trusted proxy, in each of the three ways a proxy
asks: nginx's ``X-Original-*`` pair, Traefik's ``X-Forwarded-*`` pair and Envoy's path prefix.
Whatever the proxy forwarded, the ask allows with the same identity; whatever it refused, the
ask refuses with the same status, challenge and problem body; and an ask never reaches the
upstream. nginx itself in front is ``tests/e2e/test_forward_auth_nginx.py``.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.gateway.app import create_gateway
from bastion.gateway.contract import Reply as Answer
from bastion.gateway.observe import AccessLog
from bastion.gateway.policies import Exchange
from bastion.gateway.policies import Policy
from bastion.gateway.policies import PolicyContext
from bastion.gateway.policies import PolicyResult
from bastion.gateway.policies import default_factories
from bastion.gateway.settings import GatewaySettings
from bastion.gateway.settings import RouteSettings
from tests.conformance.gw_attack import HOST
from tests.conformance.gw_attack import Issuer
from tests.conformance.gw_attack import RecordingUpstream
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import settings as stack_settings
from tests.conformance.gw_attack import stop_stack
from tests.conformance.gw_forward import ADMIN
from tests.conformance.gw_forward import CLIENT
from tests.conformance.gw_forward import IDENTITY
from tests.conformance.gw_forward import MATRIX
from tests.conformance.gw_forward import READ
from tests.conformance.gw_forward import Case
from tests.conformance.gw_forward import challenge
from tests.conformance.gw_forward import forward_auth_stack
from tests.conformance.gw_forward import send
from tests.conformance.gw_forward import through_proxy
from tests.conformance.gw_forward import token_for
from tests.gateway.engine.servers import Reply

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    running = await forward_auth_stack()
    try:
        yield running
    finally:
        await stop_stack(running)


@pytest.fixture
async def prefix_stack() -> AsyncIterator[Stack]:
    running = await forward_auth_stack(forward_auth={"enabled": True, "mode": "path_prefix"})
    try:
        yield running
    finally:
        await stop_stack(running)


def ask(
    case: Case,
    authorization: bytes | None,
    *,
    family: str = "original",
    extra: Sequence[bytes] = (),
) -> bytes:
    """The forward-auth ask a proxy sends for ``case``: the client's fields (a body's framing
    aside, as the proxy sends no body), the original request in ``family``'s fields."""
    lines = [b"GET /_bastion/auth HTTP/1.1", b"Host: bastion.internal"]
    if family == "original":
        lines += [b"X-Original-Method: " + case.method, b"X-Original-URI: " + case.target]
    else:
        lines += [b"X-Forwarded-Method: " + case.method, b"X-Forwarded-Uri: " + case.target]
    lines += [b"X-Forwarded-Host: " + HOST, b"X-Forwarded-For: " + CLIENT.encode()]
    if authorization is not None:
        lines.append(b"Authorization: " + authorization)
    lines += [line for line in case.headers if not line.lower().startswith(b"content-length")]
    lines += [*extra, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def prefix_ask(case: Case, authorization: bytes | None) -> bytes:
    """Envoy's ask for ``case``: the original method, ``/_bastion/auth`` + the original target."""
    lines = [case.method + b" /_bastion/auth" + case.target + b" HTTP/1.1", b"Host: " + HOST]
    if authorization is not None:
        lines.append(b"Authorization: " + authorization)
    lines += [line for line in case.headers if not line.lower().startswith(b"content-length")]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def identity_of(reply: Reply) -> dict[bytes, list[bytes]]:
    return {name: [value for key, value in reply.headers if key == name] for name in IDENTITY}


async def _same_outcome(stack: Stack, case: Case, data_for: Any) -> None:
    authorization = token_for(stack, case.token)
    # The ask goes first, so a valid token is verified on the ask's slow path (a cache miss);
    # the proxy then finds it cached.
    before = len(stack.upstream.requests)
    answer = await send(stack.port, data_for(case, authorization), method=case.method)
    assert len(stack.upstream.requests) == before, "a forward-auth ask reached the upstream"
    proxy = await through_proxy(stack, case, authorization)
    assert proxy.reply.status == case.expect, (case.name, proxy.reply.status, proxy.reply.body)
    assert proxy.forwarded is (case.expect == 200)
    if proxy.forwarded:
        assert answer.status == 200, (case.name, answer.status, answer.body)
        assert identity_of(answer) == proxy.identity
        assert answer.body == b""
        assert answer.header(b"cache-control") == b"no-store"
    else:
        assert answer.status == proxy.reply.status, (case.name, answer.body)
        assert challenge(answer) == challenge(proxy.reply)
        assert answer.header(b"content-type") == proxy.reply.header(b"content-type")
        assert answer.body == proxy.reply.body
        assert identity_of(answer) == {name: [] for name in IDENTITY}
    assert answer.header(b"x-request-id") is not None


@pytest.mark.parametrize("case", MATRIX, ids=[case.name for case in MATRIX])
async def test_nginx_style_asks_end_as_the_proxy_ends(stack: Stack, case: Case) -> None:
    await _same_outcome(stack, case, lambda c, a: ask(c, a, family="original"))


@pytest.mark.parametrize("case", MATRIX, ids=[case.name for case in MATRIX])
async def test_traefik_style_asks_end_as_the_proxy_ends(stack: Stack, case: Case) -> None:
    await _same_outcome(stack, case, lambda c, a: ask(c, a, family="forwarded"))


@pytest.mark.parametrize("case", MATRIX, ids=[case.name for case in MATRIX])
async def test_path_prefix_asks_end_as_the_proxy_ends(prefix_stack: Stack, case: Case) -> None:
    await _same_outcome(prefix_stack, case, prefix_ask)


async def test_the_allow_carries_the_verified_identity(stack: Stack) -> None:
    case = Case("read", 200, b"GET", b"/catalog/items")
    token = b"Bearer " + stack.token(scope="catalog:read extra", subject="alice", client_id="shop")
    answer = await send(stack.port, ask(case, token))
    assert answer.status == 200
    assert identity_of(answer) == {
        b"x-bastion-subject": [b"alice"],
        b"x-bastion-client": [b"shop"],
        b"x-bastion-scopes": [b"catalog:read extra"],
    }


async def test_claim_headers_are_part_of_the_allow() -> None:
    running = await forward_auth_stack(
        routes=[
            {
                "prefix": "/catalog",
                "upstream": "app",
                "claim_headers": {"email": "X-User-Email"},
            }
        ]
    )
    try:
        token = b"Bearer " + running.token(scope=READ, email="alice@example.com")
        case = Case("claims", 200, b"GET", b"/catalog/items")
        answer = await send(running.port, ask(case, token, extra=[b"X-User-Email: mallory@example.com"]))
        assert answer.status == 200
        assert [v for k, v in answer.headers if k == b"x-user-email"] == [b"alice@example.com"]
        assert running.upstream.requests == []
    finally:
        await stop_stack(running)


async def test_an_ask_from_an_untrusted_peer_is_refused(stack: Stack) -> None:
    """A client that reaches the endpoint itself must not choose the URI it is checked for."""
    token = token_for(stack, ADMIN)
    case = Case("admin", 200, b"GET", b"/admin/users")
    answer = await send(stack.port, ask(case, token), local=CLIENT)
    assert answer.status == 403
    assert answer.json()["detail"] == "Forward-auth requests are answered for trusted proxies only"
    assert identity_of(answer) == {name: [] for name in IDENTITY}
    assert stack.upstream.requests == []


async def test_an_escaped_spelling_of_the_endpoint_is_the_endpoint(stack: Stack) -> None:
    token = token_for(stack, ADMIN)
    case = Case("admin", 200, b"GET", b"/admin/users")
    data = ask(case, token).replace(b"GET /_bastion/auth ", b"GET /_bastion/%61uth ")
    refused = await send(stack.port, data, local=CLIENT)
    assert refused.status == 403
    allowed = await send(stack.port, data)
    assert allowed.status == 200
    assert identity_of(allowed)[b"x-bastion-scopes"] == [b"admin"]
    assert stack.upstream.requests == []


BAD_ASKS = {
    "no-original-request": [],
    "method-missing": [b"X-Original-URI: /public/x"],
    "uri-missing": [b"X-Original-Method: GET"],
    "both-pairs": [
        b"X-Original-Method: GET",
        b"X-Original-URI: /admin/users",
        b"X-Forwarded-Method: GET",
        b"X-Forwarded-Uri: /public/x",
    ],
    "half-of-the-other-pair": [
        b"X-Original-Method: GET",
        b"X-Original-URI: /admin/users",
        b"X-Forwarded-Uri: /public/x",
    ],
    "uri-twice": [b"X-Original-Method: GET", b"X-Original-URI: /admin/users", b"X-Original-URI: /public/x"],
    "method-twice": [b"X-Forwarded-Method: POST", b"X-Forwarded-Method: GET", b"X-Forwarded-Uri: /catalog/x"],
    "empty-uri": [b"X-Original-Method: GET", b"X-Original-URI: "],
    "bad-method": [b"X-Original-Method: GE T", b"X-Original-URI: /public/x"],
    "empty-method": [b"X-Original-Method: ", b"X-Original-URI: /public/x"],
}


@pytest.mark.parametrize("fields", list(BAD_ASKS.values()), ids=list(BAD_ASKS))
async def test_an_ask_that_does_not_name_one_request_is_refused(stack: Stack, fields: list[bytes]) -> None:
    lines = [
        b"GET /_bastion/auth HTTP/1.1",
        b"Host: bastion.internal",
        b"X-Forwarded-Host: " + HOST,
        *fields,
        b"Connection: close",
    ]
    answer = await send(stack.port, b"\r\n".join(lines) + b"\r\n\r\n")
    assert answer.status == 400
    assert answer.json()["detail"] == "The forward-auth request does not name one original request"
    assert stack.upstream.requests == []


@pytest.mark.parametrize(
    "hosts",
    [[], [b"X-Forwarded-Host: a.example", b"X-Forwarded-Host: b.example"], [b"X-Forwarded-Host: a@b"]],
)
async def test_the_original_host_is_one_well_formed_forwarded_host(stack: Stack, hosts: list[bytes]) -> None:
    lines = [
        b"GET /_bastion/auth HTTP/1.1",
        b"Host: " + HOST,
        b"X-Original-Method: GET",
        b"X-Original-URI: /public/x",
        *hosts,
        b"Connection: close",
    ]
    answer = await send(stack.port, b"\r\n".join(lines) + b"\r\n\r\n")
    assert answer.status == 400


async def test_host_routes_are_chosen_by_the_original_host() -> None:
    """``X-Forwarded-Host`` picks the host's routes: a protected host route is not skipped for
    the public host-less one."""
    running = await forward_auth_stack(
        routes=[
            {"prefix": "/", "upstream": "app", "auth": "none"},
            {"prefix": "/", "host": "admin.example", "upstream": "app", "scopes": {"*": ["admin"]}},
        ]
    )
    try:
        case = Case("root", 200, b"GET", b"/x")
        public = await send(running.port, ask(case, None))
        assert public.status == 200
        data = ask(case, None).replace(b"X-Forwarded-Host: " + HOST, b"X-Forwarded-Host: Admin.Example:8443")
        protected = await send(running.port, data)
        assert protected.status == 401
    finally:
        await stop_stack(running)


async def test_path_prefix_mode_takes_the_target_below_the_prefix(prefix_stack: Stack) -> None:
    token = token_for(prefix_stack, READ)
    answer = await send(prefix_stack.port, _prefix(b"GET", b"/_bastion/auth/catalog/items?page=2", token))
    assert answer.status == 200
    assert identity_of(answer)[b"x-bastion-subject"] == [b"alice"]
    escaped = await send(prefix_stack.port, _prefix(b"GET", b"/_bastion/%61uth/catalog/items", token))
    assert escaped.status == 200
    write = await send(prefix_stack.port, _prefix(b"DELETE", b"/_bastion/auth/catalog/items", token))
    assert write.status == 403
    # The endpoint itself names no original request; outside the prefix is the proxy's.
    for target in (b"/_bastion/auth", b"/_bastion/auth?x=/catalog"):
        bare = await send(prefix_stack.port, _prefix(b"GET", target, token))
        assert bare.status == 400
        assert bare.json()["detail"] == "The forward-auth request does not name one original request"
    assert prefix_stack.upstream.requests == []


def _prefix(method: bytes, target: bytes, authorization: bytes | None) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + HOST]
    if authorization is not None:
        lines.append(b"Authorization: " + authorization)
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


async def test_the_ask_is_logged_as_the_original_request(stack: Stack) -> None:
    token = token_for(stack, READ)
    case = Case("read", 200, b"GET", b"/catalog/items?page=2")
    answer = await send(stack.port, ask(case, token))
    assert answer.status == 200
    refused = await send(stack.port, ask(Case("dotdot", 400, b"GET", b"/public/../admin"), None))
    assert refused.status == 400
    untrusted = await send(stack.port, ask(case, token), local=CLIENT)
    assert untrusted.status == 403
    records = [json.loads(line) for line in stack.log_text().splitlines()]
    allowed = next(r for r in records if r.get("route") == "/catalog")
    assert (allowed["method"], allowed["path"], allowed["status"], allowed["subject"]) == (
        "GET",
        "/catalog/items",
        200,
        "alice",
    )
    assert allowed["client_ip"] == CLIENT  # X-Forwarded-For through the trusted proxy
    assert any(r.get("error") == "dot_segment" and r["status"] == 400 for r in records)
    assert any(r.get("error") == "forward_auth_untrusted" and r["status"] == 403 for r in records)


async def test_ip_rules_see_the_client_behind_the_proxy() -> None:
    running = await forward_auth_stack(ip_deny=[f"{CLIENT}/32"])
    try:
        case = Case("public", 200, b"GET", b"/public/x")
        denied = await send(running.port, ask(case, None))
        assert denied.status == 403
        assert denied.json()["detail"] == "Requests from this address are not allowed"
        other = ask(case, None).replace(b"X-Forwarded-For: " + CLIENT.encode(), b"X-Forwarded-For: 192.0.2.9")
        assert (await send(running.port, other)).status == 200
    finally:
        await stop_stack(running)


async def test_when_disabled_the_path_is_an_ordinary_route() -> None:
    running = await forward_auth_stack(forward_auth={"enabled": False})
    try:
        case = Case("admin", 200, b"GET", b"/admin/users")
        answer = await send(running.port, ask(case, None))
        assert answer.status == 200  # the public catch-all route, proxied
        [seen] = running.upstream.requests
        assert seen.target == b"/_bastion/auth"
    finally:
        await stop_stack(running)


class _AnswersItself:
    """A policy that answers every request with 204 (as a preflight answer would)."""

    name = "answers_itself"

    def check(self, exchange: Exchange) -> PolicyResult:
        return Answer(status=204)


def _answers_itself(route: RouteSettings, ctx: PolicyContext) -> Sequence[Policy]:
    return (_AnswersItself(),) if route.prefix == "/public" else ()


async def test_a_reply_below_400_never_becomes_an_allow() -> None:
    issuer = Issuer("https://auth.example")
    upstream = RecordingUpstream()
    await issuer.start()
    await upstream.start()
    settings = stack_settings(
        upstream, issuer, trusted_proxies=["127.0.0.1/32"], forward_auth={"enabled": True}
    )
    gateway = create_gateway(
        settings,
        access_log=AccessLog(io.BytesIO()),
        policy_factories=[*default_factories(), _answers_itself],
    )
    await gateway.start()
    running = Stack(issuer, upstream, gateway, io.BytesIO())
    try:
        case = Case("public", 204, b"GET", b"/public/x")
        proxy = await through_proxy(running, case, None)
        assert proxy.reply.status == 204
        answer = await send(running.port, ask(case, None))
        assert answer.status == 403
        assert (
            answer.json()["detail"]
            == "The gateway answers this request itself, which forward-auth cannot relay"
        )
        assert answer.header(b"x-request-id") is not None
        assert upstream.requests == []
    finally:
        await stop_stack(running)


# -- settings ------------------------------------------------------------------------------------------


def _settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings.model_validate(overrides)


def test_forward_auth_is_off_by_default() -> None:
    settings = _settings()
    assert settings.forward_auth.enabled is False
    assert settings.forward_auth.path == "/_bastion/auth"
    assert settings.forward_auth.mode == "headers"


def test_forward_auth_needs_trusted_proxies() -> None:
    with pytest.raises(ValidationError, match=r"forward_auth\.enabled needs trusted_proxies"):
        _settings(forward_auth={"enabled": True})
    assert _settings(forward_auth={"enabled": True}, trusted_proxies=["10.0.0.0/8"]).forward_auth.enabled


@pytest.mark.parametrize("path", ["/", "/auth/", "/a/../b", "/a%2fb", "auth", "/a?b", "/%61uth", "/a//b"])
def test_forward_auth_path_must_be_canonical(path: str) -> None:
    with pytest.raises(ValidationError, match=r"forward_auth\.path"):
        _settings(forward_auth={"path": path})


def test_forward_auth_refuses_unknown_keys_and_modes() -> None:
    with pytest.raises(ValidationError, match=r"forward_auth\.mode"):
        _settings(forward_auth={"mode": "query"})
    with pytest.raises(ValidationError, match=r"forward_auth\.trust_all"):
        _settings(forward_auth={"trust_all": True})

"""Header attacks through the whole gateway: identity spoofing, hop-by-hop abuse, tokens out of place.

Every case goes over a real socket to the gateway (engine + policy layer) in front of a recording
upstream; the assertions are about what the upstream received. Sources: Traefik CVE-2024-45410
and Apache CVE-2022-31813 (a client naming the proxy's own headers in ``Connection`` so that they
are dropped), nginx/Envoy's special handling of ``_`` in header names (a WSGI/CGI server maps
``X_Bastion_Subject`` and ``X-Bastion-Subject`` to the same ``HTTP_X_BASTION_SUBJECT``),
RFC 6750 §2 (where a bearer token may be) and RFC 9110 §7.6.1 (``Connection``).
"""

from __future__ import annotations

import pytest

from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import get
from tests.conformance.gw_attack import request
from tests.conformance.gw_attack import stack
from tests.conformance.gw_attack import start_stack
from tests.conformance.gw_attack import stop_stack

__all__ = ["stack"]

#: Headers the gateway sets itself on every forwarded request.
GATEWAY_SET = (
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-real-ip",
    b"x-request-id",
)
IDENTITY = (b"x-bastion-subject", b"x-bastion-client", b"x-bastion-scopes")


def _one(stack: Stack, name: bytes) -> bytes:
    [received] = stack.upstream.requests
    values = received.header(name)
    assert len(values) == 1, (name, received.headers)
    return values[0]


@pytest.mark.anyio
async def test_connection_cannot_drop_the_headers_the_gateway_sets(stack: Stack) -> None:
    """Traefik CVE-2024-45410: ``Connection: X-Forwarded-For`` made the proxy drop its own header.

    Here the client names every header the gateway sets; the upstream still receives each of
    them exactly once, with the gateway's values, and the verified identity intact.
    """
    named = b", ".join(GATEWAY_SET + IDENTITY)
    token = stack.token(scope="admin", subject="alice", client_id="shop")
    reply = await stack.send(get(b"/admin/users", bearer(token), b"Connection: close, " + named))
    assert reply.status == 200
    assert _one(stack, b"x-bastion-subject") == b"alice"
    assert _one(stack, b"x-bastion-client") == b"shop"
    assert _one(stack, b"x-bastion-scopes") == b"admin"
    assert _one(stack, b"x-forwarded-for") == b"127.0.0.1"
    assert _one(stack, b"x-real-ip") == b"127.0.0.1"
    assert _one(stack, b"x-forwarded-proto") == b"http"
    assert _one(stack, b"x-forwarded-host") == b"api.example"
    assert _one(stack, b"x-request-id") == reply.header(b"x-request-id")


@pytest.mark.anyio
async def test_connection_still_drops_the_client_fields_it_names(stack: Stack) -> None:
    reply = await stack.send(
        get(
            b"/public/x",
            b"Connection: close, X-Private, x-other",
            b"X-Private: 1",
            b"X-Other: 2",
            b"X-Kept: 3",
        )
    )
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert b"x-private" not in received.names()
    assert b"x-other" not in received.names()
    assert received.header(b"x-kept") == [b"3"]
    assert b"connection" not in received.names()


@pytest.mark.anyio
async def test_connection_naming_identity_with_a_spoofed_value_keeps_the_verified_one(stack: Stack) -> None:
    token = stack.token(scope="admin", subject="alice")
    reply = await stack.send(
        get(b"/admin/x", bearer(token), b"Connection: close, X-Bastion-Subject", b"X-Bastion-Subject: root")
    )
    assert reply.status == 200
    assert _one(stack, b"x-bastion-subject") == b"alice"


SPOOF_NAMES = [
    b"X-Bastion-Subject",
    b"x-bastion-subject",
    b"X-BASTION-SUBJECT",
    b"X-bAsTiOn-SuBjEcT",
    b"X_Bastion_Subject",
    b"x_bastion_subject",
    b"X-Bastion_Subject",
    b"X_Bastion-Subject",
    b"X-Bastion-Scopes",
    b"X_BASTION_SCOPES",
    b"X-Bastion-Client",
    b"x_bastion_client",
    b"X-Bastion-Anything",
    b"X_Forwarded_For",
    b"X-Forwarded_For",
    b"X_Real_IP",
    b"X_Request_Id",
    b"X_Forwarded_Host",
    b"X_Forwarded_Proto",
    b"Forwarded",
    b"X-User-Id",
    b"X_User_Id",
    b"x_uSER-id",
]


@pytest.mark.anyio
@pytest.mark.parametrize("name", SPOOF_NAMES)
async def test_spoofed_identity_header_variants_never_reach_the_upstream(stack: Stack, name: bytes) -> None:
    """Every case and ``_``/``-`` spelling of a header the gateway owns is dropped, on public and
    protected routes alike; duplicates too."""
    spoof = name + b": spoofed"
    token = stack.token(scope="admin", subject="alice")
    for target, auth in ((b"/public/x", ()), (b"/admin/x", (bearer(token),))):
        reply = await stack.send(get(target, *auth, spoof, spoof, name + b":spoofed-too"))
        assert reply.status == 200
    assert len(stack.upstream.requests) == 2
    for received in stack.upstream.requests:
        assert b"spoofed" not in b"".join(value for _, value in received.headers)
        normalised = [key.replace(b"_", b"-") for key in received.names()]
        for key in IDENTITY + GATEWAY_SET:
            assert normalised.count(key) <= 1
    assert stack.upstream.requests[1].header(b"x-bastion-subject") == [b"alice"]


@pytest.mark.anyio
async def test_unrelated_underscore_headers_pass(stack: Stack) -> None:
    reply = await stack.send(get(b"/public/x", b"X_Custom_Thing: 1", b"Accept_Language: en"))
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert received.header(b"x_custom_thing") == [b"1"]
    assert received.header(b"accept_language") == [b"en"]


# -- where a bearer token may be, and how it may be written -----------------------------------------


def _token_line(stack: Stack, template: bytes) -> bytes:
    return template.replace(b"TOKEN", stack.token(scope="admin"))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "line",
    [
        b"Authorization: Bearer TOKEN",
        b"Authorization: bearer TOKEN",
        b"Authorization: BEARER TOKEN",
        b"Authorization: Bearer  TOKEN",
        b"Authorization:Bearer TOKEN",
        b"Authorization: Bearer TOKEN ",
        b"Authorization:\tBearer TOKEN\t",
    ],
)
async def test_accepted_spellings_of_the_bearer_credential(stack: Stack, line: bytes) -> None:
    """RFC 6750 §2.1 ``"Bearer" 1*SP b64token``; RFC 9110 §11.1 schemes are case-insensitive and
    §5.5 field values lose leading and trailing whitespace."""
    reply = await stack.send(get(b"/admin/x", _token_line(stack, line)))
    assert reply.status == 200
    assert _one(stack, b"x-bastion-subject") == b"alice"


BARE = b'Bearer realm="shop"'
MALFORMED = b'Bearer realm="shop", error="invalid_token", error_description="The access token is malformed"'
TWO_HEADERS = (
    b'Bearer realm="shop", error="invalid_request", error_description="Send exactly one Authorization header"'
)
ONE_CREDENTIAL = (
    b'Bearer realm="shop", error="invalid_request", '
    b'error_description="Send exactly one credential, in one Authorization header"'
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("lines", "status", "challenge"),
    [
        # Malformed as a request: two credentials (RFC 6750 §2) → 400 invalid_request.
        ((b"Authorization: Bearer TOKEN", b"Authorization: Bearer TOKEN"), 400, TWO_HEADERS),
        ((b"Authorization: Basic YWRtaW46YWRtaW4=", b"Authorization: Bearer TOKEN"), 400, TWO_HEADERS),
        ((b"Authorization: Bearer TOKEN", b"authorization: Bearer x"), 400, TWO_HEADERS),
        ((b"Authorization: Bearer TOKEN, Bearer TOKEN",), 400, ONE_CREDENTIAL),
        ((b"Authorization: Bearer TOKEN,Basic eA==",), 400, ONE_CREDENTIAL),
        # A malformed bearer token (not a b64token, RFC 6750 §2.1) → 401 invalid_token (§3.1).
        ((b"Authorization: Bearer TOKEN TOKEN",), 401, MALFORMED),
        ((b"Authorization: Bearer TOKEN;",), 401, MALFORMED),
        ((b'Authorization: Bearer "TOKEN"',), 401, MALFORMED),
        # No credentials at all → 401 without an error code (RFC 6750 §3.1).
        ((b"Authorization: Bearer",), 401, BARE),
        ((b"Authorization: Bearer ",), 401, BARE),
        ((b"Authorization: Bearer\tTOKEN",), 401, BARE),
        ((b"Authorization: BearerTOKEN",), 401, BARE),
        ((b"Authorization: Bearer=TOKEN",), 401, BARE),
        ((b"Authorization: Basic YWRtaW46YWRtaW4=",), 401, BARE),
        ((b"Authorization: DPoP TOKEN",), 401, BARE),
        ((b"Authorization: TOKEN",), 401, BARE),
        ((b"Authorization:",), 401, BARE),
        ((b"Proxy-Authorization: Bearer TOKEN",), 401, BARE),
        ((b"X-Access-Token: TOKEN",), 401, BARE),
        ((b"Cookie: access_token=TOKEN",), 401, BARE),
        ((b"Cookie: Authorization=Bearer%20TOKEN",), 401, BARE),
        ((b"X-Forwarded-Authorization: Bearer TOKEN",), 401, BARE),
        ((b"Authorization_: Bearer TOKEN",), 401, BARE),
        # Not a valid field value (RFC 9110 §5.5): the HTTP parser refuses it before any policy.
        ((b"Authorization: Bearer TOKEN\x0b",), 400, None),
    ],
)
async def test_refused_placements_and_spellings(
    stack: Stack, lines: tuple[bytes, ...], status: int, challenge: bytes | None
) -> None:
    reply = await stack.send(get(b"/admin/x", *(_token_line(stack, line) for line in lines)))
    assert reply.status == status
    assert reply.header(b"www-authenticate") == challenge
    assert stack.upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    [
        b"access_token=TOKEN",
        b"x=1&access_token=TOKEN",
        b"%61ccess_token=TOKEN",
        b"access%5Ftoken=TOKEN",
        b"access_token=TOKEN&access_token=TOKEN",
    ],
)
async def test_a_token_in_the_query_with_one_in_the_header_is_invalid_request(
    stack: Stack, query: bytes
) -> None:
    """RFC 6750 §2: "Clients MUST NOT use more than one method to transmit the token"."""
    token = stack.token(scope="admin")
    target = b"/admin/x?" + query.replace(b"TOKEN", token)
    reply = await stack.send(get(target, bearer(token)))
    assert reply.status == 400
    assert reply.header(b"www-authenticate") == ONE_CREDENTIAL
    assert stack.upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("query", [b"access_token=TOKEN", b"x=1&%61ccess_token=TOKEN"])
async def test_a_token_only_in_the_query_is_no_credential(stack: Stack, query: bytes) -> None:
    """OAuth 2.1 §5.2 drops the query parameter: such a request carries no credential the
    gateway accepts, so it is 401 without an error code (RFC 6750 §3.1), and never forwarded."""
    token = stack.token(scope="admin")
    reply = await stack.send(get(b"/admin/x?" + query.replace(b"TOKEN", token)))
    assert reply.status == 401
    assert reply.header(b"www-authenticate") == BARE
    assert stack.upstream.requests == []
    assert token.decode() not in stack.log_text()


@pytest.mark.anyio
async def test_a_token_in_a_form_body_is_never_read(stack: Stack) -> None:
    body = b"access_token=" + stack.token(scope="admin")
    data = request(
        b"POST",
        b"/admin/x",
        b"Content-Type: application/x-www-form-urlencoded",
        b"Content-Length: %d" % len(body),
        body=body,
    )
    reply = await stack.send(data)
    assert reply.status == 401
    assert stack.upstream.requests == []


@pytest.mark.anyio
async def test_the_token_is_not_forwarded_and_never_logged(stack: Stack) -> None:
    token = stack.token(scope="admin")
    assert (await stack.send(get(b"/admin/x", bearer(token)))).status == 200
    assert stack.upstream.requests[0].header(b"authorization") == []
    assert token not in stack.upstream.all_bytes
    assert token.decode() not in stack.log_text()


# -- X-Forwarded-For ------------------------------------------------------------------------------------

XFF_VALUES = [
    b"6.6.6.6",
    b"6.6.6.6, 10.0.0.1",
    b"6.6.6.6 ,\t10.0.0.1",
    b"2001:db8::1",
    b"[2001:db8::1]:443",
    b"1.2.3.4:80",
    b"garbage",
    b"unknown, 127.0.0.1",
    b"127.0.0.1",
    b"6.6.6.6,,,",
    b"",
    b"0x7f.0.0.1",
    b"' OR 1=1 --",
    b"9" * 2000,
]


@pytest.mark.anyio
@pytest.mark.parametrize("value", XFF_VALUES)
async def test_forwarded_for_from_an_untrusted_peer_is_replaced(stack: Stack, value: bytes) -> None:
    reply = await stack.send(
        get(
            b"/public/x",
            b"X-Forwarded-For: " + value,
            b"X-Forwarded-For: 5.5.5.5",
            b"X-Real-IP: 6.6.6.6",
            b"Forwarded: for=6.6.6.6",
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-Host: evil.example",
        )
    )
    assert reply.status == 200
    assert _one(stack, b"x-forwarded-for") == b"127.0.0.1"
    assert _one(stack, b"x-real-ip") == b"127.0.0.1"
    assert _one(stack, b"x-forwarded-proto") == b"http"
    assert _one(stack, b"x-forwarded-host") == b"api.example"
    assert stack.upstream.requests[0].header(b"forwarded") == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("value", "client"),
    [
        (b"6.6.6.6", b"6.6.6.6"),
        (b"6.6.6.6, 10.0.0.1", b"10.0.0.1"),
        (b"6.6.6.6 ,\t10.0.0.1", b"10.0.0.1"),
        (b"2001:db8::1", b"2001:db8::1"),
        (b"[2001:db8::1]:443", b"127.0.0.1"),
        (b"1.2.3.4:80", b"127.0.0.1"),
        (b"garbage", b"127.0.0.1"),
        (b"unknown, 5.5.5.5", b"5.5.5.5"),
        (b"5.5.5.5, garbage", b"127.0.0.1"),
        (b"0x7f.0.0.1", b"127.0.0.1"),
        (b"' OR 1=1 --", b"127.0.0.1"),
        (b"9" * 2000, b"127.0.0.1"),
    ],
)
async def test_forwarded_for_through_a_trusted_proxy_is_walked_from_the_right(
    value: bytes, client: bytes
) -> None:
    """Only a well-formed address is ever the client (``X-Real-IP``, logs, rate limits); the
    rightmost untrusted hop wins, a malformed hop ends the walk at the last good one."""
    running = await start_stack(trusted_proxies=["127.0.0.0/8"])
    try:
        reply = await running.send(get(b"/public/x", b"X-Forwarded-For: " + value))
        assert reply.status == 200
        assert _one(running, b"x-real-ip") == client
        assert _one(running, b"x-forwarded-for").endswith(b", 127.0.0.1")
    finally:
        await stop_stack(running)

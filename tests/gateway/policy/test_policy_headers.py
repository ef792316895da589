"""Header rewriting, identity stripping and client-address resolution."""

from __future__ import annotations

import ipaddress

import pytest

from bastion.gateway.contract import Headers
from bastion.gateway.headers import HeaderRules
from bastion.gateway.headers import TrustedProxies
from bastion.gateway.headers import claim_value
from bastion.gateway.headers import forward_headers
from bastion.gateway.headers import identity_headers
from bastion.gateway.headers import identity_value
from bastion.gateway.headers import reply_headers
from bastion.gateway.headers import response_filter
from bastion.gateway.headers import scan_request
from bastion.gateway.headers import trusted_request_id
from bastion.gateway.headers import unsettable_header

PROXIES = TrustedProxies([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")])
RULES = HeaderRules(strip=frozenset({b"x-user-id"}), proxies=PROXIES)


def names(headers: Headers) -> list[bytes]:
    return [name for name, _ in headers]


def forward(headers: Headers, *, peer: str = "203.0.113.7", **kw: object) -> Headers:
    scanned = scan_request(headers, RULES)
    trusted = PROXIES.is_trusted(peer)
    options: dict[str, object] = {
        "peer": peer,
        "peer_trusted": trusted,
        "client_ip": PROXIES.client_ip(peer, scanned.forwarded_for),
        "tls": False,
        "request_id": "rid",
        "identity": None,
        "forward_authorization": False,
    }
    options.update(kw)
    return forward_headers(scanned, **options)  # type: ignore[arg-type]


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    out = forward(
        [
            (b"host", b"api.example"),
            (b"connection", b"keep-alive, X-Secret-Hop"),
            (b"keep-alive", b"timeout=5"),
            (b"te", b"trailers"),
            (b"trailer", b"x"),
            (b"transfer-encoding", b"chunked"),
            (b"content-length", b"5"),
            (b"upgrade", b"websocket"),
            (b"proxy-authorization", b"Basic Zm9v"),
            (b"proxy-connection", b"keep-alive"),
            (b"x-secret-hop", b"1"),
            (b"accept", b"application/json"),
            (b"x-custom", b"kept"),
        ]
    )
    assert [h for h in out if h[0] in (b"accept", b"x-custom")] == [
        (b"accept", b"application/json"),
        (b"x-custom", b"kept"),
    ]
    for dropped in (
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"content-length",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-connection",
        b"x-secret-hop",
        b"host",
    ):
        assert dropped not in names(out)
    assert (b"x-forwarded-host", b"api.example") in out


def test_spoofed_identity_headers_are_stripped_and_set_from_the_token() -> None:
    out = forward(
        [
            (b"x-bastion-subject", b"admin"),
            (b"x-bastion-scopes", b"admin:all"),
            (b"x-bastion-client", b"trusted"),
            (b"x-bastion-anything", b"x"),
            (b"x-user-id", b"1"),
            (b"x-real-ip", b"1.2.3.4"),
            (b"forwarded", b"for=1.2.3.4"),
            (b"x-forwarded-proto", b"https"),
            (b"x-request-id", b"chosen-by-client"),
        ],
        identity=identity_headers("alice", "shop", ["orders:read", "catalog:read"]),
    )
    assert (b"x-bastion-subject", b"alice") in out
    assert (b"x-bastion-client", b"shop") in out
    assert (b"x-bastion-scopes", b"catalog:read orders:read") in out
    assert names(out).count(b"x-bastion-subject") == 1
    assert b"x-bastion-anything" not in names(out)
    assert b"x-user-id" not in names(out)
    assert b"forwarded" not in names(out)
    assert (b"x-real-ip", b"203.0.113.7") in out
    assert (b"x-forwarded-proto", b"http") in out
    assert (b"x-request-id", b"rid") in out
    assert names(out).count(b"x-request-id") == 1


def test_identity_without_subject_or_client() -> None:
    assert identity_headers(None, None, []) == [(b"x-bastion-scopes", b"")]


def test_without_a_token_no_identity_is_set() -> None:
    out = forward([(b"x-bastion-subject", b"admin")])
    assert not [n for n in names(out) if n.startswith(b"x-bastion-")]


def test_authorization_only_when_the_route_says_so() -> None:
    headers: Headers = [(b"authorization", b"Bearer abc")]
    assert b"authorization" not in names(forward(headers))
    assert (b"authorization", b"Bearer abc") in forward(headers, forward_authorization=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice", b"alice"),
        ("a\r\nX-Bastion-Scopes: admin", b"a%0D%0AX-Bastion-Scopes:%20admin"),
        ("caf\u00e9", b"caf%C3%A9"),
        ("100%", b"100%25"),
        ("nul\x00", b"nul%00"),
    ],
)
def test_identity_values_cannot_split_headers(value: str, expected: bytes) -> None:
    assert identity_value(value) == expected


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        # untrusted peer: its X-Forwarded-For is ignored
        ("203.0.113.7", [b"1.1.1.1"], "203.0.113.7"),
        ("203.0.113.7", [], "203.0.113.7"),
        # trusted peer: the rightmost untrusted hop is the client
        ("10.0.0.1", [b"198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", [b"6.6.6.6, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", [b"6.6.6.6, 198.51.100.1, 10.0.0.2"], "198.51.100.1"),
        ("10.0.0.1", [b"6.6.6.6", b"198.51.100.1, 10.0.0.2"], "198.51.100.1"),
        ("10.0.0.1", [b"2001:db8::1, fd00::1"], "2001:db8::1"),
        # all hops trusted: the leftmost
        ("10.0.0.1", [b"10.0.0.3, 10.0.0.2"], "10.0.0.3"),
        # no header from a trusted peer: the peer itself
        ("10.0.0.1", [], "10.0.0.1"),
        # garbage ends the walk at the last good hop
        ("10.0.0.1", [b"198.51.100.1, not-an-ip"], "10.0.0.1"),
        ("10.0.0.1", [b"6.6.6.6, junk, 10.0.0.9"], "10.0.0.9"),
        ("::ffff:10.0.0.1", [b"198.51.100.1"], "198.51.100.1"),
    ],
)
def test_client_ip_walks_trusted_proxies_from_the_right(peer: str, xff: list[bytes], client: str) -> None:
    assert PROXIES.client_ip(peer, xff) == client


def test_no_trusted_proxies_means_the_socket_peer() -> None:
    nobody = TrustedProxies(())
    assert not nobody
    assert nobody.client_ip("10.0.0.1", [b"1.1.1.1"]) == "10.0.0.1"


def test_forwarded_for_is_appended_only_through_a_trusted_proxy() -> None:
    spoofed = forward([(b"x-forwarded-for", b"1.1.1.1")])
    assert (b"x-forwarded-for", b"203.0.113.7") in spoofed
    via_proxy = forward(
        [
            (b"x-forwarded-for", b"198.51.100.1"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"shop"),
        ],
        peer="10.0.0.1",
    )
    assert (b"x-forwarded-for", b"198.51.100.1, 10.0.0.1") in via_proxy
    assert (b"x-forwarded-proto", b"https") in via_proxy
    assert (b"x-forwarded-host", b"shop") in via_proxy
    assert (b"x-real-ip", b"198.51.100.1") in via_proxy


def test_tls_sets_https_and_bad_hosts_are_not_forwarded() -> None:
    assert (b"x-forwarded-proto", b"https") in forward([], tls=True)
    assert b"x-forwarded-host" not in names(forward([(b"host", b"a b\r\n")]))
    assert b"x-forwarded-host" not in names(forward([(b"host", b"a"), (b"host", b"b")]))


def test_request_id_is_kept_only_from_a_trusted_proxy() -> None:
    scanned = scan_request([(b"x-request-id", b"abc-123")], RULES)
    assert trusted_request_id(scanned, True) == "abc-123"
    fresh = trusted_request_id(scanned, False)
    assert fresh != "abc-123"
    assert len(fresh) == 32
    bad = scan_request([(b"x-request-id", b"a\x00b")], RULES)
    assert trusted_request_id(bad, True) != "a\x00b"


def test_response_hides_the_upstream() -> None:
    filt = response_filter("rid", b"bastion")
    out = filt(
        200,
        [
            (b"server", b"gunicorn/20"),
            (b"x-powered-by", b"Express"),
            (b"connection", b"close, x-internal"),
            (b"x-internal", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"content-length", b"2"),
            (b"x-request-id", b"upstream"),
            (b"content-type", b"text/plain"),
        ],
    )
    assert out == [
        (b"content-length", b"2"),
        (b"content-type", b"text/plain"),
        (b"server", b"bastion"),
        (b"x-request-id", b"rid"),
    ]
    assert response_filter("rid", None)(200, [(b"server", b"nginx")]) == [(b"x-request-id", b"rid")]
    assert reply_headers("rid", None) == [(b"x-request-id", b"rid")]


def test_forwarded_hops_are_normalised_addresses() -> None:
    # A scope id is free text; a mapped IPv6 address is the IPv4 client it wraps.
    assert PROXIES.client_ip("10.0.0.1", [b"203.0.113.9, fe80::1%a b"]) == "10.0.0.1"
    assert PROXIES.client_ip("10.0.0.1", [b"::ffff:203.0.113.9"]) == "203.0.113.9"
    assert PROXIES.client_ip("10.0.0.1", [b"203.0.113.9, ::ffff:10.0.0.7"]) == "203.0.113.9"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice@example.com", b"alice@example.com"),
        ("John Smith", b"John%20Smith"),
        ("a\r\nX-Bastion-Subject: admin", b"a%0D%0AX-Bastion-Subject:%20admin"),
        ("alice\n", b"alice%0A"),
        ("nul\x00del\x7f", b"nul%00del%7F"),
        ("100%", b"100%25"),
        ("Zoë", b"Zo%C3%AB"),
        (["admin", "ops"], b'["admin","ops"]'),
        (["a, b", "c\nd"], b'["a,%20b","c\\nd"]'),
        (["é"], b'["%C3%A9"]'),
        ({"tier": "gold"}, b'{"tier":"gold"}'),
        (42, b"42"),
        (True, b"true"),
        ([], b"[]"),
        ("", b""),
        (None, None),
    ],
)
def test_claim_values_are_strings_or_json_and_never_split_a_header(
    value: object, expected: bytes | None
) -> None:
    rendered = claim_value(value)
    assert rendered == expected
    if rendered is not None:
        assert all(0x21 <= byte <= 0x7E for byte in rendered)


@pytest.mark.parametrize(
    ("name", "unsettable"),
    [
        ("X-Bastion-Roles", False),
        ("X-User-Email", False),
        ("X-Tenant", False),
        ("X-Bastion-Subject", True),
        ("x-bastion-scopes", True),
        ("X-Bastion-Client", True),
        ("Authorization", True),
        ("Cookie", True),
        ("Host", True),
        ("Content-Length", True),
        ("Transfer-Encoding", True),
        ("Connection", True),
        ("X-Forwarded-For", True),
        ("X-Real-IP", True),
        ("X-Request-Id", True),
        ("Forwarded", True),
        ("X_Forwarded_For", True),
    ],
)
def test_headers_a_claim_may_not_set(name: str, unsettable: bool) -> None:
    assert unsettable_header(name) is unsettable

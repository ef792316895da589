"""Which hosts count as loopback (the exception that lets an issuer use plain http)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bastion.net import address_bucket
from bastion.net import is_loopback_host
from bastion.settings import AuthorizationServerSettings


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST",
        "127.0.0.1",
        "127.1.2.3",
        "127.255.255.254",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
    ],
)
def test_loopback_literals_and_localhost_are_loopback(host: str) -> None:
    assert is_loopback_host(host) is True


@pytest.mark.parametrize(
    "host",
    [
        "127.attacker.example",
        "127.0.0.1.nip.io",
        "127.0.0.1.attacker.example",
        "localhost.attacker.example",
        "128.0.0.1",
        "10.0.0.1",
        "::2",
        "::ffff:10.0.0.1",
        "fe80::1%lo",
        "",
    ],
)
def test_names_that_merely_look_loopback_are_not(host: str) -> None:
    assert is_loopback_host(host) is False


@pytest.mark.parametrize(
    "issuer",
    ["http://localhost:8000", "http://127.0.0.1:8000", "http://127.1.2.3", "http://[::1]:8000"],
)
def test_http_issuer_on_a_loopback_host_is_accepted(issuer: str) -> None:
    settings = AuthorizationServerSettings(issuer=issuer)
    assert settings.issuer == issuer
    assert settings.secure_cookies is False


@pytest.mark.parametrize(
    "issuer",
    ["http://127.attacker.example", "http://127.0.0.1.nip.io:8000", "http://localhost.attacker.example"],
)
def test_http_issuer_on_a_name_starting_like_loopback_is_refused(issuer: str) -> None:
    with pytest.raises(ValidationError, match="http is allowed only on loopback hosts"):
        AuthorizationServerSettings(issuer=issuer)


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "?"),
        ("", "?"),
    ],
)
def test_address_buckets_are_ipv4_addresses_and_ipv6_64s(address: str, bucket: str) -> None:
    assert address_bucket(address) == bucket


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        (b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # all-zero trace-id
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),  # all-zero parent-id
        (b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper-case hex
        (b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # unknown version
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", None),  # version 00 is 55 chars
        (b"", None),
    ],
)
def test_trace_id_of_a_traceparent(value: bytes, expected: str | None) -> None:
    from bastion.tracecontext import trace_id_of

    assert trace_id_of(value) == expected

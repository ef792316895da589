"""IP allow and deny lists: the network set, address reading, and how the lists combine."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from bastion.gateway.contract import RequestHead
from bastion.gateway.headers import HeaderRules
from bastion.gateway.headers import scan_request
from bastion.gateway.observe import GatewayMetrics
from bastion.gateway.paths import parse_target
from bastion.gateway.policies import Exchange
from bastion.gateway.policies import IpPolicy
from bastion.gateway.policies import PolicyContext
from bastion.gateway.policies import default_factories
from bastion.gateway.policies import ip_rules
from bastion.gateway.settings import GatewaySettings
from bastion.net import NetworkSet
from bastion.net import address_key
from bastion.net import parse_networks


def networks(*cidrs: str) -> NetworkSet:
    return NetworkSet(parse_networks(cidrs))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("192.0.2.1", (4, 0xC0000201)),
        ("::ffff:192.0.2.1", (4, 0xC0000201)),
        ("::FFFF:c000:0201", (4, 0xC0000201)),
        ("2001:db8::1", (6, 0x20010DB8 << 96 | 1)),
        ("fe80::1%eth0", (6, 0xFE80 << 112 | 1)),
        ("::1", (6, 1)),
        ("not-an-address", None),
        ("", None),
        ("192.0.2.1:80", None),
    ],
)
def test_addresses_are_read_with_mapped_ipv6_as_ipv4(text: str, key: tuple[int, int] | None) -> None:
    assert address_key(text) == key


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("11.0.0.0", False),
        ("192.168.7.7", True),  # entered as ::ffff:192.168.0.0/112
        ("::ffff:192.168.7.7", True),
        ("192.169.0.0", False),
        ("198.51.100.7", True),
        ("198.51.100.8", False),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("::ffff:2001:db8", False),  # an IPv4 address (32.1.13.184): IPv6 networks never hold it
        ("::1", False),
    ],
)
def test_membership_by_prefix_length(address: str, inside: bool) -> None:
    found = networks("10.0.0.0/8", "::ffff:192.168.0.0/112", "198.51.100.7/32", "2001:db8::/32")
    key = address_key(address)
    assert key is not None
    assert found.contains(key) is inside


def test_the_whole_space_and_single_hosts() -> None:
    everything = networks("0.0.0.0/0", "::/0")
    for text in (
        "0.0.0.0",
        "255.255.255.255",
        "::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:1.1.1.1",
    ):
        key = address_key(text)
        assert key is not None
        assert everything.contains(key)
    single = networks("2001:db8::7/128")
    assert single.contains((6, int(ipaddress.IPv6Address("2001:db8::7"))))
    assert not single.contains((6, int(ipaddress.IPv6Address("2001:db8::6"))))
    assert not networks().contains((4, 1))


def test_thousands_of_networks_agree_with_ipaddress() -> None:
    rng = random.Random(7)
    cidrs = [
        ipaddress.ip_network((rng.getrandbits(32), rng.randint(8, 32)), strict=False) for _ in range(1500)
    ] + [
        ipaddress.ip_network((rng.getrandbits(128), rng.randint(16, 128)), strict=False) for _ in range(1500)
    ]
    found = NetworkSet(cidrs)
    # One set per distinct prefix length, not one entry per network to scan.
    assert sum(len(table) for table in found._by_version.values()) <= 33 + 129
    probes = [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(1000)]
    probes += [ipaddress.ip_address(rng.getrandbits(128)) for _ in range(1000)]
    probes += [network.network_address + 1 for network in cidrs[::50] if network.num_addresses > 1]
    plain = [(n.version, int(n.network_address), int(n.netmask)) for n in cidrs]
    for ip in probes:
        value = int(ip)
        expected = any(v == ip.version and value & mask == net for v, net, mask in plain)
        key = address_key(str(ip))
        assert key is not None
        assert found.contains(key) is expected, ip


# -- how the lists combine ------------------------------------------------------------------------


def settings(route: dict[str, Any], **gateway: Any) -> GatewaySettings:
    return GatewaySettings.model_validate(
        {
            "upstreams": {"app": {"targets": ["127.0.0.1:9"]}},
            "routes": [{"prefix": "/", "upstream": "app", "auth": "none", **route}],
            **gateway,
        }
    )


def decide(config: GatewaySettings, client: str) -> int:
    ctx = PolicyContext(gateway=config, verifiers={}, metrics=GatewayMetrics())
    policies = [p for factory in default_factories() for p in factory(config.routes[0], ctx)]
    ip = [p for p in policies if isinstance(p, IpPolicy)]
    head = RequestHead(method=b"GET", target=b"/", headers=[(b"host", b"a")], client=(client, 1))
    exchange = Exchange(
        head=head,
        method="GET",
        target=parse_target(b"/"),
        scanned=scan_request(head.headers, HeaderRules()),
        peer_trusted=False,
        client_ip=client,
        request_id="r",
    )
    if not ip:
        return 200
    [policy] = ip
    reply = policy.check(exchange)
    return 200 if reply is None else reply.status


GLOBAL = {"ip_allow": ["10.0.0.0/8", "2001:db8::/32"], "ip_deny": ["10.6.0.0/16"]}


@pytest.mark.parametrize(
    ("route", "client", "status"),
    [
        # The gateway's lists alone: deny wins inside allow; outside allow is refused.
        ({}, "10.1.1.1", 200),
        ({}, "::ffff:10.1.1.1", 200),
        ({}, "10.6.1.1", 403),
        ({}, "::ffff:10.6.1.1", 403),
        ({}, "192.0.2.1", 403),
        ({}, "2001:db8::1", 200),
        ({}, "2001:db9::1", 403),
        ({}, "garbage", 403),
        # A route's allow list narrows the gateway's: a client must be in both.
        ({"ip_allow": ["10.1.0.0/16"]}, "10.1.1.1", 200),
        ({"ip_allow": ["10.1.0.0/16"]}, "10.2.1.1", 403),
        # ... and cannot reopen what the gateway refuses.
        ({"ip_allow": ["10.6.0.0/16", "192.0.2.0/24"]}, "10.6.1.1", 403),
        ({"ip_allow": ["10.6.0.0/16", "192.0.2.0/24"]}, "192.0.2.1", 403),
        # A route's deny list adds to the gateway's.
        ({"ip_deny": ["10.1.1.0/24"]}, "10.1.1.1", 403),
        ({"ip_deny": ["10.1.1.0/24"]}, "10.1.2.1", 200),
    ],
)
def test_a_route_list_narrows_the_gateways(route: dict[str, Any], client: str, status: int) -> None:
    assert decide(settings(route, **GLOBAL), client) == status


def test_no_lists_no_policy_and_a_route_list_alone() -> None:
    assert decide(settings({}), "192.0.2.1") == 200
    only_route = settings({"ip_deny": ["192.0.2.0/24"]})
    assert decide(only_route, "192.0.2.1") == 403
    assert decide(only_route, "::ffff:192.0.2.1") == 403
    assert decide(only_route, "198.51.100.1") == 200


def test_the_gateways_lists_are_compiled_once_for_every_route() -> None:
    config = settings({}, **GLOBAL)
    assert ip_rules(config.ip_allow, config.ip_deny) is ip_rules(config.ip_allow, config.ip_deny)


def test_list_entries_are_networks() -> None:
    with pytest.raises(ValueError, match="ip_deny"):
        settings({}, ip_deny=["10.0.0.300/8"])
    with pytest.raises(ValueError, match="ip_allow"):
        settings({"ip_allow": ["example.com"]})

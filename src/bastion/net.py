"""Network facts shared by the apps: which hosts are loopback, which peers may speak for the
client, and sets of networks."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Final


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a URL's host, IPv6 brackets allowed) names this machine's loopback.

    ``localhost`` (RFC 6761 §6.3: it resolves to loopback) or an IP literal in 127.0.0.0/8, ``::1``
    or IPv4-mapped loopback (``::ffff:127.0.0.1``). Only literals count: ``127.attacker.example``
    and ``127.0.0.1.nip.io`` are DNS names that resolve wherever their owner wants.
    """
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    if "%" in host:  # a zone id: a link-local address, never loopback
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def parse_networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDR strings as networks. Raises ``ValueError`` naming the bad entry."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP network (CIDR)") from None
    return networks


class TrustedProxies:
    """Which peers may speak for the client, and the client address they report."""

    __slots__ = ("_cache", "_networks")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        """Trust ``networks`` (empty: trust nobody; the socket peer is always the client)."""
        self._networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def is_trusted(self, address: str) -> bool:
        """Whether ``address`` lies in a trusted network (malformed addresses are not)."""
        if not self._networks:
            return False
        known = self._cache.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        trusted = any(ip.version == net.version and ip in net for net in self._networks)
        if len(self._cache) < 65_536:
            self._cache[address] = trusted
        return trusted

    def client_ip(self, peer: str, forwarded_for: Iterable[bytes]) -> str:
        """The client address for a request from ``peer`` carrying ``forwarded_for`` headers.

        The rightmost ``X-Forwarded-For`` entry was appended by the proxy we trust (the peer),
        the one left of it by the proxy before, and so on: walk from the right while the hop is
        trusted; the first untrusted hop is the client. A malformed entry ends the walk at the
        last hop known good, since nothing left of it can be believed.
        """
        if not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(b",")]
        current = peer
        for raw in reversed(hops):
            hop = _address(raw)
            if hop is None:
                return current
            current = hop
            if not self.is_trusted(hop):
                return hop
        return current


def _address(raw: bytes) -> str | None:
    """A forwarded hop as a normalised address: no IPv6 scope ids (free text an attacker could
    fill), IPv4-mapped IPv6 as plain IPv4; ``None`` when it is not an address."""
    if b"%" in raw:
        return None
    try:
        ip = ipaddress.ip_address(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


#: An address as :class:`NetworkSet` reads it: ``(4 or 6, the address as an integer)``.
AddressKey = tuple[int, int]
_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


@functools.lru_cache(maxsize=65_536)
def address_key(text: str) -> AddressKey | None:
    """``text`` as an :data:`AddressKey`; ``None`` when it is not an IP address.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a dual-stack socket reports for an
    IPv4 client) is read as the IPv4 address, and an IPv6 zone (``fe80::1%eth0``) is dropped:
    neither may make one client look like another network. Cached, since a client sends many
    requests.
    """
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return 4, int(mapped)
        return 6, int(ip)
    return 4, int(ip)


def _normalised(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv6 network inside ``::ffff:0:0/96`` as the IPv4 network it maps."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        base = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((base, network.prefixlen - 96))
    return network


class NetworkSet:
    """A set of CIDRs answering "does it contain this address?" in time independent of its size.

    The networks are kept as one set of network numbers per prefix length (``addr >> (32 - n)``
    for IPv4 ``/n``), so a lookup is one set probe per distinct prefix length present (at most
    33 for IPv4, 129 for IPv6) however many thousand networks the set holds. IPv4-mapped IPv6
    networks are stored as IPv4 (see :func:`address_key`); an IPv6 network never contains an
    IPv4 address.
    """

    __slots__ = ("_by_version", "networks")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        """Index ``networks``."""
        self.networks = tuple(_normalised(network) for network in networks)
        lengths: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for network in self.networks:
            bits = network.max_prefixlen
            shift = bits - network.prefixlen
            lengths[network.version].setdefault(shift, set()).add(int(network.network_address) >> shift)
        #: Per version, ``(shift, network numbers)`` pairs, widest networks first.
        self._by_version: dict[int, tuple[tuple[int, frozenset[int]], ...]] = {
            version: tuple((shift, frozenset(found)) for shift, found in sorted(table.items(), reverse=True))
            for version, table in lengths.items()
        }

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __len__(self) -> int:
        return len(self.networks)

    def contains(self, key: AddressKey) -> bool:
        """Whether the address ``key`` (from :func:`address_key`) lies in one of the networks."""
        version, value = key
        return any(value >> shift in found for shift, found in self._by_version[version])


@functools.lru_cache(maxsize=65_536)
def address_bucket(text: str) -> str:
    """The address a per-address limit counts ``text`` under: an IPv4 address as it is (an
    IPv4-mapped IPv6 address read as IPv4), an IPv6 address as its /64 network
    (``2001:db8:1:2::/64``: one subscriber usually holds a whole /64, so single addresses would
    be free buckets for it); anything that is not an address shares the bucket ``"?"``."""
    key = address_key(text)
    if key is None:
        return "?"
    version, value = key
    if version == 4:
        return str(ipaddress.IPv4Address(value))
    return f"{ipaddress.IPv6Address(value >> 64 << 64)}/64"

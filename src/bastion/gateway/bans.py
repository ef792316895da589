"""Address bans: the local ban set each gateway process enforces, and how bans are recorded.

A ban names a network (:class:`~bastion.storage.ban_protocols.Ban`): one IPv4 address, the
``/64`` of an IPv6 client (one subscriber gets a whole ``/64`` and can rotate through it), or an
operator's CIDR. Bans are written in this order (:class:`BanBook`), so that losing the fast
store never loses a ban:

1. the durable record (the truth; a process that reconnects catches up from it);
2. a key ``bans:{NETWORK}:ban`` in the fast-state store, expiring with the ban;
3. a message on the ``bans`` channel, which every gateway process follows (:class:`BanFeed`)
   into its :class:`BanSet`.

An unban deletes the record and the keys (the failure counts too, so the address starts
afresh) and publishes, so every process lifts it at once. Expired bans end by themselves in
every process: the set drops them at their ``until`` without any message.

:class:`BanSet` is an :class:`~bastion.gateway.policies.AddressCheck`: synchronous, in memory,
one :class:`~bastion.net.NetworkSet` probe per request (nothing at all while no ban exists).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Final

import orjson

from bastion.net import AddressKey
from bastion.net import NetworkSet
from bastion.net import address_key
from bastion.ops.audit import Auditor
from bastion.ops.feeds import DEFAULT_BACKOFF
from bastion.ops.feeds import FeedMetrics
from bastion.ops.feeds import Follower
from bastion.storage.ban_protocols import Ban
from bastion.storage.ban_protocols import BanStore
from bastion.storage.protocols import FastState

__all__ = [
    "BANS_CHANNEL",
    "KINDS",
    "Audit",
    "BanBook",
    "BanFeed",
    "BanSet",
    "ban_key",
    "ban_network",
    "count_key",
    "parse_network",
    "repeat_key",
]

log = logging.getLogger("bastion.gateway.bans")

#: The fast-state channel every gateway process follows.
BANS_CHANNEL: Final = "bans"
#: What an automatic ban counts, by ``[gateway.bans]`` section name.
KINDS: Final = ("auth", "rate_limit", "refused")
_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


#: Where ban events go (:class:`bastion.ops.audit.AuditLog`).
Audit = Auditor


# -- networks and keys --------------------------------------------------------------------------


def ban_network(address: str) -> str | None:
    """The network a ban of ``address`` covers: the IPv4 address itself (an IPv4-mapped IPv6
    address read as IPv4), or the ``/64`` of an IPv6 address; ``None`` if not an address."""
    key = address_key(address)
    if key is None:
        return None
    version, value = key
    if version == 4:
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Network(((value >> 64) << 64, 64)))


def parse_network(text: str) -> str:
    """The canonical network for an operator's ``ADDRESS`` or ``CIDR``.

    An address is banned as :func:`ban_network` bans it (an IPv6 address as its ``/64``), and an
    IPv6 network narrower than ``/64`` widens to its ``/64``, so ``bastion bans remove`` finds
    an automatic ban by any address inside it.

    Raises:
        ValueError: ``text`` is neither an IP address nor a CIDR.
    """
    text = text.strip()
    if "%" in text:  # an IPv6 zone: free text, never part of a ban
        raise ValueError(f"{text!r} is not an IP address or network (CIDR)")
    if "/" not in text:
        network = ban_network(text)
        if network is None:
            raise ValueError(f"{text!r} is not an IP address or network (CIDR)")
        return network
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network (CIDR)") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        base = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        net = ipaddress.IPv4Network((base, net.prefixlen - 96))
    if net.version == 4 and net.prefixlen == 32:
        return str(net.network_address)
    if net.version == 6 and net.prefixlen > 64:
        return str(net.supernet(new_prefix=64))
    return str(net)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def count_key(network: str, kind: str) -> str:
    """The fast-state counter of ``kind`` failures from ``network`` (hash-tagged by network, so
    one address's keys share a Redis Cluster slot)."""
    return f"bans:{{{network}}}:{kind}"


def repeat_key(network: str) -> str:
    """The fast-state counter of automatic bans of ``network`` (for escalation)."""
    return f"bans:{{{network}}}:repeat"


def ban_key(network: str) -> str:
    """The fast-state key holding the live ban of ``network``."""
    return f"bans:{{{network}}}:ban"


# -- the local set ------------------------------------------------------------------------------


class BanSet:
    """The bans this process enforces, in memory: an :class:`AddressCheck`.

    ``refuses`` costs nothing while the set is empty and one :class:`NetworkSet` probe
    otherwise; bans past their ``until`` are dropped at the first lookup after it.
    """

    __slots__ = ("_bans", "_clock", "_next_expiry", "_set", "on_change")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """Judge expiry by ``clock`` (POSIX seconds)."""
        self._clock = clock
        self._bans: dict[str, Ban] = {}
        self._set = NetworkSet(())
        self._next_expiry = math.inf
        #: Called after every change (metrics).
        self.on_change: Callable[[], None] | None = None

    def __bool__(self) -> bool:
        return bool(self._bans)

    def __len__(self) -> int:
        return len(self._bans)

    def refuses(self, key: AddressKey) -> bool:
        """Whether a live ban covers the address ``key``."""
        if not self._bans:
            return False
        if self._clock() >= self._next_expiry:
            self._prune()
        return self._set.contains(key)

    def banned(self, address: str) -> bool:
        """:meth:`refuses` for an address in text form (an unreadable one is not banned here)."""
        if not self._bans:
            return False
        key = address_key(address)
        return key is not None and self.refuses(key)

    def get(self, network: str) -> Ban | None:
        """The live ban of exactly ``network``."""
        ban = self._bans.get(network)
        return ban if ban is not None and ban.until > self._clock() else None

    def active(self) -> list[Ban]:
        """Live bans, oldest first."""
        self._prune()
        return sorted(self._bans.values(), key=lambda ban: (ban.since, ban.network))

    def apply(self, ban: Ban) -> None:
        """Enforce ``ban`` (replacing a ban of the same network); an expired one is ignored."""
        if ban.until <= self._clock():
            return
        self._bans[ban.network] = ban
        self._rebuild()

    def lift(self, network: str) -> bool:
        """Stop enforcing the ban of ``network``; whether there was one."""
        if self._bans.pop(network, None) is None:
            return False
        self._rebuild()
        return True

    def replace(self, bans: Iterable[Ban], *, keep_since: float | None = None) -> None:
        """Enforce exactly ``bans`` (a catch-up from the durable record), plus the bans applied
        here since ``keep_since`` (made while the record was being read, so possibly not in it)."""
        now = self._clock()
        kept = {} if keep_since is None else {n: b for n, b in self._bans.items() if b.since >= keep_since}
        self._bans = {**kept, **{ban.network: ban for ban in bans if ban.until > now}}
        self._rebuild()

    def _prune(self) -> None:
        now = self._clock()
        expired = [network for network, ban in self._bans.items() if ban.until <= now]
        for network in expired:
            del self._bans[network]
        self._rebuild()

    def _rebuild(self) -> None:
        self._set = NetworkSet(_network(network) for network in self._bans)
        self._next_expiry = min((ban.until for ban in self._bans.values()), default=math.inf)
        if self.on_change is not None:
            self.on_change()


# -- messages -----------------------------------------------------------------------------------


def ban_message(ban: Ban) -> bytes:
    """The ``bans`` channel message announcing ``ban``."""
    return orjson.dumps({"event": "ban", "ban": ban.as_dict()})


def unban_message(network: str) -> bytes:
    """The ``bans`` channel message lifting the ban of ``network``."""
    return orjson.dumps({"event": "unban", "network": network})


def apply_message(bans: BanSet, message: bytes) -> None:
    """Apply one ``bans`` channel message to ``bans``.

    Raises:
        ValueError: not a ban message.
    """
    body = orjson.loads(message)
    event = body.get("event") if isinstance(body, dict) else None
    if event == "ban" and isinstance(body.get("ban"), dict):
        bans.apply(Ban.from_dict(body["ban"]))
    elif event == "unban" and isinstance(body.get("network"), str):
        bans.lift(body["network"])
    else:
        raise ValueError(f"not a ban event: {message[:100]!r}")


# -- recording ----------------------------------------------------------------------------------


class BanBook:
    """Records bans and unbans: durable record, fast-state key, channel, audit event — in that
    order, so a ban survives the loss of the fast store (see the module docstring)."""

    def __init__(
        self, store: BanStore, state: FastState, audit: Audit | None, clock: Callable[[], float] = time.time
    ) -> None:
        """Write to ``store`` and ``state``; audit to ``audit`` (``None``: not audited here)."""
        self._store = store
        self._state = state
        self._audit = audit
        self._clock = clock

    async def ban(self, ban: Ban) -> None:
        """Record and announce ``ban``; audited as ``ip.banned``.

        Raises:
            StorageError: a store refused the write (the steps before it are done).
        """
        await self._store.put_ban(ban)
        ttl = ban.until - self._clock()
        if ttl > 0:
            await self._state.set(ban_key(ban.network), ban_message(ban), ttl)
        await self._state.publish(BANS_CHANNEL, ban_message(ban))
        if self._audit is not None:
            self._audit.emit(
                "ip.banned",
                outcome="denied",
                subject=ban.network,
                reason=ban.reason,
                details={
                    "source": ban.source,
                    "kind": ban.kind,
                    "since": ban.since,
                    "until": ban.until,
                    "repeat": ban.repeat,
                },
            )

    async def lift(self, network: str, reason: str) -> Ban | None:
        """Lift the ban of ``network`` everywhere and forget its failure counts; audited as
        ``ip.unbanned`` with ``reason`` when a ban was recorded. Returns the lifted ban.

        The unban is announced even when no ban was recorded, so a process holding one the
        record lost lets go of it too.

        Raises:
            StorageError: a store refused the write.
        """
        lifted = await self._store.remove_ban(network)
        await self._state.delete(ban_key(network))
        for kind in KINDS:
            await self._state.delete(count_key(network, kind))
        await self._state.publish(BANS_CHANNEL, unban_message(network))
        if lifted is not None and self._audit is not None:
            self._audit.emit(
                "ip.unbanned",
                subject=network,
                reason=reason,
                details={"banned_for": lifted.reason, "source": lifted.source, "until": lifted.until},
            )
        return lifted

    async def active(self) -> list[Ban]:
        """Live bans from the durable record, oldest first."""
        return list(await self._store.active_bans(self._clock()))


# -- following ----------------------------------------------------------------------------------


class BanFeed:
    """Keeps a :class:`BanSet` in step with every process: follows the ``bans`` channel, and at
    start and after every reconnect replaces the set with the durable record's live bans (which
    also brings in bans made, and drops bans lifted, while the feed was down).

    While the feed is down the set keeps enforcing what it holds (its bans still expire on time);
    a ban made elsewhere meanwhile arrives with the catch-up.
    """

    def __init__(
        self,
        bans: BanSet,
        state: FastState,
        store: BanStore,
        *,
        metrics: FeedMetrics | None = None,
        clock: Callable[[], float] = time.time,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        """Feed ``bans`` from ``state``'s channel and ``store``."""
        self.bans = bans
        self._store = store
        self._clock = clock
        self.follower = Follower(
            "bans",
            state,
            BANS_CHANNEL,
            self._on_message,
            catch_up=self._catch_up,
            metrics=metrics,
            backoff=backoff,
        )

    @property
    def healthy(self) -> bool:
        """Subscribed and caught up."""
        return self.follower.healthy

    def start(self) -> None:
        """Start following on the running loop."""
        self.follower.start()

    async def stop(self) -> None:
        """Stop following."""
        await self.follower.stop()

    def _on_message(self, message: bytes) -> None:
        apply_message(self.bans, message)

    async def _catch_up(self) -> None:
        now = self._clock()
        # A ban issued here while the record is read may be missing from it: keep it.
        self.bans.replace(await self._store.active_bans(now), keep_since=now)
        await self._store.purge_expired_bans(now)

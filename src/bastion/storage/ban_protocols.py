"""The durable record of address bans (the gateway's automatic and manual IP bans).

A :class:`Ban` names a network: one IPv4 address (``203.0.113.7``), the ``/64`` of an IPv6
client (``2001:db8:1:2::/64``), or any CIDR an operator bans by hand. The durable record is the
truth; the fast-state store carries the same bans as keys and announces them on a channel
(see :mod:`bastion.gateway.bans`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from typing import Protocol

__all__ = ["Ban", "BanSource", "BanStore"]

#: ``auto``: earned by failures counted at the gateway; ``manual``: ``bastion bans add``.
BanSource = Literal["auto", "manual"]


@dataclass(frozen=True, slots=True)
class Ban:
    """One network refused by the gateway until ``until`` (POSIX seconds)."""

    #: The banned network in canonical text form (``ipaddress`` ``str``; a single IPv4
    #: address without ``/32``).
    network: str
    #: Why (shown by ``bastion bans list`` and audited): ``20 auth failures in 60 s`` or the
    #: operator's ``--reason``.
    reason: str
    source: BanSource
    since: float
    until: float
    #: The how-manieth automatic ban of this network within the repeat window (1 for the first;
    #: escalation multiplies the duration per repeat); 0 for a manual ban.
    repeat: int = 0
    #: What earned an automatic ban: ``auth``, ``rate_limit`` or ``refused``; ``None`` for manual.
    kind: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The ban as plain JSON-ready data."""
        return {
            "network": self.network,
            "reason": self.reason,
            "source": self.source,
            "since": self.since,
            "until": self.until,
            "repeat": self.repeat,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Ban:
        """The inverse of :meth:`as_dict`.

        Raises:
            ValueError: a field is missing or of the wrong type.
        """
        try:
            source = str(data["source"])
            if source not in ("auto", "manual"):
                raise ValueError(f"unknown ban source {source!r}")
            kind = data.get("kind")
            return cls(
                network=str(data["network"]),
                reason=str(data["reason"]),
                source="auto" if source == "auto" else "manual",
                since=float(data["since"]),  # type: ignore[arg-type]
                until=float(data["until"]),  # type: ignore[arg-type]
                repeat=int(data.get("repeat") or 0),  # type: ignore[call-overload]
                kind=None if kind is None else str(kind),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a ban: {exc}") from None


class BanStore(Protocol):
    """Bans in the durable store: one row per network, the latest ban replacing an older one."""

    async def put_ban(self, ban: Ban) -> None:
        """Record ``ban``, replacing any ban of the same network."""

    async def remove_ban(self, network: str) -> Ban | None:
        """Delete the ban of ``network``; returns it, or ``None`` when there was none."""

    async def active_bans(self, now: float) -> Sequence[Ban]:
        """Bans whose ``until`` is after ``now``, oldest first."""

    async def purge_expired_bans(self, now: float) -> int:
        """Delete bans that ended at or before ``now``; returns how many."""

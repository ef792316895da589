"""The audit trail's record and its durable store.

An :class:`AuditEvent` is one security-relevant event in one shape for every part of Bastion
(the vocabulary of ``type`` values is :data:`bastion.ops.audit_events.EVENT_TYPES`; the fields
are described in ``docs/audit.md``). It never holds a secret or a token: a token is named by its
``jti`` or a hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import Protocol

__all__ = ["AuditEvent", "AuditQuery", "AuditStore", "Found", "Outcome", "rfc3339"]

#: ``success``: done; ``failure``: attempted and failed (a wrong password, a bad grant);
#: ``denied``: refused by a rule (consent denied, throttled, banned).
Outcome = Literal["success", "failure", "denied"]

OUTCOMES: tuple[Outcome, ...] = ("success", "failure", "denied")


def rfc3339(ts: float, timespec: Literal["seconds", "milliseconds"] = "milliseconds") -> str:
    """``ts`` (POSIX seconds) as RFC 3339 UTC, with milliseconds by default
    (``2025-01-02T03:04:05.678Z``) or whole seconds (``2025-01-02T03:04:05Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """POSIX seconds of an RFC 3339 time (``Z`` or an offset; a date alone is midnight UTC).

    Raises:
        ValueError: not such a time, or one without a time zone.
    """
    text = text.strip()
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    if len(text) == 10:  # a date alone
        parsed = parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (end it with Z or an offset such as +02:00)")
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One security event. Field meanings are in ``docs/audit.md``."""

    #: When, in POSIX seconds.
    time: float
    #: What happened, dotted: ``login.failed``, ``token.issued``, ``key.rotated`` ...
    type: str
    outcome: Outcome
    #: Who acted: a user id, a client id, ``cli``, ``system`` or ``anonymous``.
    actor: str
    #: Whom or what the event is about: a user id, a client id, a ``kid``, a network.
    subject: str | None = None
    #: The OAuth client involved.
    client: str | None = None
    #: The client address of the request.
    address: str | None = None
    #: Why (a failure's or a refusal's machine-readable reason, an operator's words).
    reason: str | None = None
    #: The id of the request that caused it (``X-Request-Id``), when there was one.
    request_id: str | None = None
    #: The W3C trace-id of the request (``traceparent``), shared with the gateway's access log.
    trace_id: str | None = None
    #: Facts of this event type (``jti``, ``scope``, ``grant_type``, ``alg`` ...).
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The event as one JSON line writes it: every field, ``null`` where absent, the time
        as RFC 3339 (``time``) and as POSIX seconds (``ts``)."""
        return {
            "time": rfc3339(self.time),
            "ts": round(self.time, 3),
            "type": self.type,
            "outcome": self.outcome,
            "actor": self.actor,
            "subject": self.subject,
            "client": self.client,
            "address": self.address,
            "reason": self.reason,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """The inverse of :meth:`as_dict` (``ts`` is the time read back).

        Raises:
            ValueError: a required field is missing or of the wrong type.
        """
        try:
            outcome = str(data["outcome"])
            if outcome not in OUTCOMES:
                raise ValueError(f"unknown outcome {outcome!r}")
            details = data.get("details") or {}
            if not isinstance(details, Mapping):
                raise ValueError("details is not an object")
            return cls(
                time=float(data["ts"]),
                type=str(data["type"]),
                outcome=outcome,  # type: ignore[arg-type]
                actor=str(data["actor"]),
                subject=_text(data.get("subject")),
                client=_text(data.get("client")),
                address=_text(data.get("address")),
                reason=_text(data.get("reason")),
                request_id=_text(data.get("request_id")),
                trace_id=_text(data.get("trace_id")),
                details=dict(details),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an audit event: {exc}") from None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which events to find. Every given criterion must hold."""

    #: From this time on (inclusive), POSIX seconds.
    since: float | None = None
    #: Before this time (exclusive).
    until: float | None = None
    #: Any of these types; ``login.*`` (a prefix then ``*``) matches every ``login.`` type.
    types: tuple[str, ...] = ()
    subject: str | None = None
    client: str | None = None
    #: At most this many events; ``None``: all.
    limit: int | None = None
    #: The newest matches first (``search``), else the oldest first (``export``).
    newest_first: bool = False
    #: Only events after this ``(time, id)`` in oldest-first order (paging through an export:
    #: the last :class:`Found`'s ``(event.time, id)``).
    after: tuple[float, int] | None = None


class Found(NamedTuple):
    """An event as stored, with its storage id (increasing in the order of writing)."""

    id: int
    event: AuditEvent


class AuditStore(Protocol):
    """Audit events in the durable store, written in batches."""

    async def append(self, events: Sequence[AuditEvent]) -> None:
        """Store ``events`` in one transaction (values longer than a column are cut)."""

    async def search(self, query: AuditQuery) -> Sequence[Found]:
        """Events matching ``query``, oldest first, or newest first with ``newest_first``."""

    async def prune(self, before: float) -> int:
        """Delete events older than ``before``; returns how many."""

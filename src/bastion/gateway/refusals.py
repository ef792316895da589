"""Policy refusals in the audit trail: what the gateway refused, and whom, without a flood.

Every refusal is in the access log and the metrics. The audit trail gets the security story:
one ``gateway.refused`` event (``gateway.throttled`` for a 429) per client address, route,
status and reason per ``interval`` seconds in this process, carrying how many like it were
folded into it since the last one (``details.suppressed``). A client hammering the gateway
costs the trail one line a minute per kind of refusal, not one per request; the number of
distinct keys remembered is bounded, and when it is full the oldest interval is forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bastion.ops.audit import Auditor
from bastion.ops.sampling import OncePer
from bastion.tokens import Principal


class RefusalReporter:
    """Turns the gateway's refusals into rate-limited audit events."""

    __slots__ = ("_audit", "_reports")

    def __init__(
        self,
        audit: Auditor,
        *,
        interval: float = 60.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._reports = OncePer(interval, max_keys=max_keys, clock=clock)

    def report(
        self, client_ip: str, route: str, status: int, reason: str | None, principal: Principal | None
    ) -> None:
        """Record one refusal of ``client_ip`` on ``route`` with ``status``."""
        why = reason or f"http_{status}"
        suppressed = self._reports.due((client_ip, route, status, why))
        if suppressed is None:
            return
        self._audit.emit(
            "gateway.throttled" if status == 429 else "gateway.refused",
            outcome="denied",
            actor=principal.client_id if principal is not None and principal.client_id else "anonymous",
            subject=principal.subject if principal is not None else None,
            client=principal.client_id if principal is not None else None,
            address=client_ip,
            reason=why,
            details={"route": route, "status": status, "suppressed": suppressed},
        )

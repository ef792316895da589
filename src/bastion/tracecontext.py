"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the ``traceparent`` rules every
part shares (pure).

The gateway continues or starts a trace per request (:mod:`bastion.gateway.tracing`); the
authorization server records the trace-id of a valid ``traceparent`` in the audit events a
request causes, so an audit line and the gateway's access line of one request share it.
"""

from __future__ import annotations

import re
from typing import Final

#: §3.2: ``version "-" trace-id "-" parent-id "-" trace-flags``, lower-case hex (HEXDIGLC). Only
#: version 00 is accepted, and it "MUST" be exactly 55 characters.
_TRACEPARENT: Final = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_PARENT: Final = b"0" * 16


def valid_traceparent(value: bytes) -> bool:
    """Whether ``value`` is a version-00 ``traceparent`` whose trace-id and parent-id are not all
    zeros (§3.2.2.3: "All bytes as zero ... is considered an invalid value")."""
    match = _TRACEPARENT.fullmatch(value)
    return match is not None and match[1] != _ZERO_TRACE and match[2] != _ZERO_PARENT


def trace_id_of(value: bytes) -> str | None:
    """The trace-id of a valid ``traceparent``; ``None`` for anything else."""
    return value[3:35].decode("ascii") if valid_traceparent(value) else None

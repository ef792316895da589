"""The revocation list: revoked, unexpired ``jti`` values and disabled clients, for polling.

Services on another machine, sharing neither the database nor the fast-state store, poll
``POST /revocations`` (see :mod:`bastion.server.endpoints`) with
:class:`bastion.tokens.PollingRevocations`. The list is read from the durable store only (the
truth; the fast store may have lost marks), so it answers while the fast store is down.

The cursor: incremental without a sequence number
    A poll's cursor is the time at which this server started reading (its own clock). The next
    poll returns what was revoked after ``cursor - CURSOR_OVERLAP``: a revocation written by a
    slow transaction, or by another authorization-server process whose clock runs behind, is
    still seen as long as it commits within ``CURSOR_OVERLAP`` of its own timestamp. Entries may
    thus come twice; applying one is idempotent. A poll without a cursor, or with one older
    than anything still remembered, gets the full list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from bastion.protocol.errors import InvalidRequest
from bastion.services.container import Services

#: A client must have this scope registered to read the revocation list (``bastion clients
#: create --scope bastion:revocations``). It grants nothing at any resource server.
REVOCATIONS_SCOPE: Final = "bastion:revocations"
#: Each incremental poll reads back this many seconds before its cursor (see module docstring).
CURSOR_OVERLAP: Final = 60.0


@dataclass(frozen=True, slots=True)
class RevocationPage:
    """One answer of the revocation list.

    Attributes:
        jtis: ``(jti, until)``: refuse the token until ``until`` (its ``exp`` plus the margin
            every revocation is remembered for, :data:`bastion.tokens.MAX_LEEWAY`).
        clients: ``(client_id, before, until)``: the client was disabled; refuse its tokens
            issued before ``before``, until ``until`` (when the last of them has expired).
        cursor: Send it back on the next poll to get only what changed.
        full: Whether this is the whole list (no cursor, or one too old), not only changes.
    """

    jtis: list[tuple[str, float]]
    clients: list[tuple[str, float, float]]
    cursor: str
    full: bool

    def to_json(self) -> dict[str, object]:
        """The response body of ``POST /revocations``."""
        return {
            "jtis": [[jti, until] for jti, until in self.jtis],
            "clients": [[client_id, before, until] for client_id, before, until in self.clients],
            "cursor": self.cursor,
            "full": self.full,
        }


def parse_cursor(value: str | None) -> float | None:
    """The time a cursor stands for; ``None`` for no cursor.

    Raises:
        InvalidRequest: not a cursor this server issued (RFC 6749 §5.2 ``invalid_request``).
    """
    if value is None or value == "":
        return None
    try:
        when = float(value)
    except ValueError:
        raise InvalidRequest("cursor is not one this server issued") from None
    if not math.isfinite(when) or when < 0 or len(value) > 32:
        raise InvalidRequest("cursor is not one this server issued")
    return when


async def revocation_page(services: Services, cursor: str | None, now: float | None = None) -> RevocationPage:
    """What was revoked (and which clients were disabled) since ``cursor``, or everything still
    remembered without one.

    Raises:
        InvalidRequest: a malformed cursor.
        StorageError: the durable store cannot answer.
    """
    since = parse_cursor(cursor)
    now = services.clock() if now is None else now
    memory = services.tokens.revocation_memory()
    oldest = now - memory  # a client disabled before this holds no live token any more
    if since is not None and since - CURSOR_OVERLAP > oldest:
        full = False
        after = since - CURSOR_OVERLAP
        jtis = await services.stores.tokens.revoked_jtis_since(after, now)
        disabled = await services.stores.clients.disabled_clients(after)
    else:
        # Every token still remembered was revoked after it was issued, so after ``oldest``:
        # a cursor that old would read the same rows as the full list.
        full = True
        jtis = await services.stores.tokens.revoked_jtis(now)
        disabled = await services.stores.clients.disabled_clients(oldest)
    clients = [(client_id, before, before + memory) for client_id, before in disabled]
    return RevocationPage(jtis=sorted(jtis), clients=sorted(clients), cursor=f"{now:.6f}", full=full)

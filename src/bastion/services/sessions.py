"""Login session ids (``sid``): started at sign-in, ended at logout, and ended all at once for a
user whose password is reset, who is disabled or who is deleted.

A session id lives in two places:

* the durable index (:class:`~bastion.storage.people_protocols.LoginSessionIndex`): the truth,
  by user, so every session of a user can be found and ended from any process - ``bastion
  users set-password`` on the command line included, whatever fast-state store the server uses;
* the fast-state key ``sid:<sid>``: its cache, which the code exchange and the browser's session
  lookup read too.

A session is alive only while both say so. Ending one deletes the durable row first, then the
fast-state key, so a failure in between leaves it ended. The browser's session record
(``session:<hash>``, :mod:`bastion.services.authorize`) names its ``sid``; once the sid is
ended, its cookie is a stranger's: the login page again, and no code.
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion.services.container import Services
from bastion.storage.people_protocols import LoginSession
from bastion.storage.sql.people import PeopleStores
from bastion.storage.sql.people import SQLLoginSessionIndex

#: Fast-state key of a live login session id (``sid``), set at sign-in, deleted at logout.
SID_PREFIX = "sid:"


def _index(services: Services) -> SQLLoginSessionIndex:
    return PeopleStores.open(services.stores.db).sessions


async def start(services: Services, sid: str, user_id: str, now: float, ttl: float) -> None:
    """Record a signed-in session of ``user_id`` for ``ttl`` seconds (durably first)."""
    await _index(services).add_session(sid, user_id, now, now + ttl)
    await services.stores.state.set(SID_PREFIX + sid, user_id.encode(), ttl)


async def alive(services: Services, sid: str) -> bool:
    """Whether a session id may still be used: not signed out, not ended, not expired."""
    if await services.stores.state.get(SID_PREFIX + sid) is None:
        return False
    return await _index(services).session_alive(sid, services.clock())


async def end(services: Services, sid: str) -> None:
    """End one session (logout, or a new sign-in in the same browser)."""
    await _index(services).end_session(sid)
    await services.stores.state.delete(SID_PREFIX + sid)


async def end_for_user(services: Services, user_id: str) -> int:
    """End every session of a user (password reset, disable, delete); returns how many."""
    sids = await _index(services).end_user_sessions(user_id)
    for sid in sids:
        await services.stores.state.delete(SID_PREFIX + sid)
    if sids:
        services.audit.emit("login_sessions.ended", subject=user_id, details={"count": len(sids)})
    return len(sids)


async def for_user(services: Services, user_id: str) -> Sequence[LoginSession]:
    """The live sessions of a user, oldest first."""
    return await _index(services).user_sessions(user_id, services.clock())


async def revoke(services: Services, user_id: str, sid: str) -> bool:
    """End session ``sid`` of ``user_id`` (an operator's act, audited as
    ``login_session.revoked``); ``False`` if the user has no such session."""
    if await _index(services).session_owner(sid) != user_id:
        return False
    await end(services, sid)
    services.audit.emit("login_session.revoked", subject=user_id, details={"sid": sid})
    return True


async def purge(services: Services, now: float) -> int:
    """Forget expired sessions in the durable index (fast state expires its own keys)."""
    return await _index(services).purge_expired(now)

"""Server-side BFF sessions in the fast-state store.

Keys hold a SHA-256 of the cookie's value, never the value itself, so a dump of the store does
not give anyone a working cookie. A session has an idle and an absolute lifetime; the record's
TTL is whichever ends first, and every read checks both against the injected clock.

States: *pre-login* (``bff:login:…``: state, nonce, PKCE verifier, return path; consumed once
by the callback) → *signed in* (``bff:session:…``) → *gone* (logout, expiry, or a refresh the
authorization server refused). A new session id is minted at every sign-in (session fixation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion.storage.protocols import FastState


def new_id() -> str:
    """A fresh unguessable identifier (256 bits)."""
    return secrets.token_urlsafe(32)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class PreLogin:
    """What the callback must find again: bound to the pre-login cookie."""

    state: str
    nonce: str
    verifier: str
    return_to: str


@dataclass(frozen=True)
class Session:
    """A signed-in browser session (never sent to the browser)."""

    claims: dict[str, Any]
    csrf: str
    created_at: float
    last_seen: float


@dataclass(frozen=True)
class Tokens:
    """A session's tokens, under a key of their own: only sign-in and the refresh that holds the
    session's lock write it, so a request recording its visit can never put back a token that a
    refresh has just rotated (which the authorization server would treat as theft)."""

    access_token: str
    refresh_token: str | None
    expires_at: float
    id_token: str | None = None


class SessionStore:
    """Sessions and pre-login records over :class:`FastState`."""

    def __init__(
        self, state: FastState, *, idle: int, absolute: int, login_ttl: int, clock: Callable[[], float]
    ) -> None:
        self._state = state
        self._idle = idle
        self._absolute = absolute
        self._login_ttl = login_ttl
        self._clock = clock

    # -- pre-login ---------------------------------------------------------------------------

    async def begin(self, pre: PreLogin) -> str:
        """Store a pre-login record; returns the pre-login cookie's value."""
        cookie = new_id()
        await self._state.set(
            f"bff:login:{_digest(cookie)}", json.dumps(dataclasses.asdict(pre)).encode(), self._login_ttl
        )
        return cookie

    async def take_login(self, cookie: str) -> PreLogin | None:
        """Consume the pre-login record (once: a replayed callback finds nothing)."""
        raw = await self._state.consume(f"bff:login:{_digest(cookie)}")
        return PreLogin(**json.loads(raw)) if raw is not None else None

    # -- sessions ----------------------------------------------------------------------------

    def key(self, sid: str) -> str:
        """The fast-state key of session ``sid``."""
        return f"bff:session:{_digest(sid)}"

    def _ttl(self, session: Session) -> float:
        now = self._clock()
        return min(session.last_seen + self._idle, session.created_at + self._absolute) - now

    def tokens_key(self, sid: str) -> str:
        """The fast-state key of session ``sid``'s tokens."""
        return f"bff:tokens:{_digest(sid)}"

    async def create(self, session: Session, tokens: Tokens) -> str:
        """Store a new session under a fresh id; returns the id (the cookie's value)."""
        sid = new_id()
        await self.save_tokens(sid, session, tokens)
        await self.save(sid, session)
        return sid

    async def save_tokens(self, sid: str, session: Session, tokens: Tokens) -> None:
        """Write the session's tokens (kept until the session's absolute end)."""
        ttl = session.created_at + self._absolute - self._clock()
        if ttl > 0:
            await self._state.set(self.tokens_key(sid), json.dumps(dataclasses.asdict(tokens)).encode(), ttl)

    async def load_tokens(self, sid: str) -> Tokens | None:
        """The session's tokens, or ``None``."""
        raw = await self._state.get(self.tokens_key(sid))
        return Tokens(**json.loads(raw)) if raw is not None else None

    async def save(self, sid: str, session: Session) -> None:
        """Write ``session`` (its TTL: the nearer of the idle and absolute ends)."""
        ttl = self._ttl(session)
        if ttl <= 0:
            await self.delete(sid)
            return
        await self._state.set(self.key(sid), json.dumps(dataclasses.asdict(session)).encode(), ttl)

    async def load(self, sid: str) -> Session | None:
        """The live session, or ``None`` (absent, idle too long, or past its absolute end)."""
        raw = await self._state.get(self.key(sid))
        if raw is None:
            return None
        session = Session(**json.loads(raw))
        if self._ttl(session) <= 0:
            await self.delete(sid)
            return None
        return session

    async def touch(self, sid: str) -> Session | None:
        """Load the session and record this use (restarting the idle timer)."""
        session = await self.load(sid)
        if session is None:
            return None
        session = dataclasses.replace(session, last_seen=self._clock())
        await self.save(sid, session)
        return session

    async def delete(self, sid: str) -> None:
        """End session ``sid``."""
        await self._state.delete(self.key(sid))
        await self._state.delete(self.tokens_key(sid))

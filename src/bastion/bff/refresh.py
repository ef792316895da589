"""Server-side refresh of a session's access token, single-flight across processes.

Many requests of one session arrive when its access token is about to expire; if each refreshed,
the first rotation would make every other refresh token a reused one, and the authorization
server would revoke the whole family (RFC 9700 §4.14.2). So one refresh runs at a time per
session, in any number of BFF processes sharing the fast-state store:

- the refresher takes ``bff:refresh:<session>`` with :meth:`FastState.add` (SET NX with a TTL,
  the lease), renews the lease while the refresh runs, and deletes it when done;
- every other request polls the session's tokens until they are fresh (the refresher's
  result), the lock is free again (it retries), or its deadline passes (503).

A lease that lapses (a process died mid-refresh) frees the lock for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from bastion.bff.metrics import BffMetrics
from bastion.bff.oidc import AuthorizationServer
from bastion.bff.oidc import GrantRefused
from bastion.bff.oidc import UpstreamError
from bastion.bff.sessions import Session
from bastion.bff.sessions import SessionStore
from bastion.bff.sessions import Tokens
from bastion.bff.sessions import new_id
from bastion.storage.protocols import FastState

log = logging.getLogger("bastion.bff")


class RefreshTimeout(Exception):
    """Another request's refresh did not finish in time."""


class Refresher:
    """Keeps a session's access token fresh, one refresh at a time per session."""

    def __init__(
        self,
        state: FastState,
        store: SessionStore,
        server: AuthorizationServer,
        *,
        clock: Callable[[], float],
        margin: float,
        metrics: BffMetrics | None = None,
        lease: float = 10.0,
        wait: float = 15.0,
        poll: float = 0.02,
    ) -> None:
        self._state = state
        self._store = store
        self._server = server
        self._clock = clock
        self._margin = margin
        self._metrics = metrics if metrics is not None else BffMetrics()
        self._lease = lease
        self._wait = wait
        self._poll = poll

    def _fresh(self, tokens: Tokens) -> bool:
        return tokens.expires_at - self._margin > self._clock()

    async def tokens(self, sid: str, session: Session) -> Tokens | None:
        """The session's tokens, refreshed first if they expire within the margin.

        Returns ``None`` when the session has no tokens any more or the authorization server
        refused the refresh (the session is then deleted).

        Raises:
            RefreshTimeout: the refresh of another request did not finish before the deadline.
            UpstreamError: the authorization server could not be reached.
        """
        tokens = await self._store.load_tokens(sid)
        if tokens is None or self._fresh(tokens):
            return tokens
        lock = "bff:refresh:" + self._store.key(sid).rpartition(":")[2]
        deadline = time.monotonic() + self._wait
        while True:
            owner = new_id()
            if await self._state.add(lock, owner.encode(), self._lease):
                return await self._refresh_holding(sid, session, lock, owner)
            while True:
                await asyncio.sleep(self._poll)
                tokens = await self._store.load_tokens(sid)
                if tokens is None or self._fresh(tokens):
                    return tokens
                if time.monotonic() > deadline:
                    raise RefreshTimeout
                if await self._state.get(lock) is None:
                    break  # the holder finished without a fresh token, or its lease lapsed

    async def _refresh_holding(self, sid: str, session: Session, lock: str, owner: str) -> Tokens | None:
        renewer = asyncio.create_task(self._renew(lock, owner))
        try:
            # Another process may have refreshed between our look and our lock.
            tokens = await self._store.load_tokens(sid)
            if tokens is None or self._fresh(tokens):
                return tokens
            if tokens.refresh_token is None:
                await self._store.delete(sid)
                return None
            try:
                response = await self._server.token(
                    {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
                )
            except GrantRefused as exc:
                log.info("bff: refresh refused (%s); the session ends", exc.error)
                self._metrics.refresh("refused")
                await self._store.delete(sid)
                return None
            fresh = dataclasses.replace(
                tokens,
                access_token=response.access_token,
                refresh_token=response.refresh_token or tokens.refresh_token,
                expires_at=self._clock() + response.expires_in,
                id_token=response.id_token or tokens.id_token,
            )
            await self._store.save_tokens(sid, session, fresh)
            self._metrics.refresh("ok")
            return fresh
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if await self._state.get(lock) == owner.encode():
                await self._state.delete(lock)

    async def _renew(self, lock: str, owner: str) -> None:
        """Extend the lease while the refresh runs, as long as it is still ours."""
        while True:
            await asyncio.sleep(self._lease / 3)
            if await self._state.get(lock) != owner.encode():
                return
            await self._state.set(lock, owner.encode(), self._lease)


__all__ = ["RefreshTimeout", "Refresher", "UpstreamError"]

"""The guard for Flask: an extension and a decorator.

::

    guard = Guard(app, validator=validator, revocations=revocations, public_paths={"/health"})

    @app.get("/orders/<int:order_id>")
    @guard.require_scopes("orders:read")
    def read(order_id: int):
        order = orders.get(order_id)
        authorize(current_principal(), "read", order, owner() | role("admin"))
        return order

Every request outside ``public_paths`` must carry a valid bearer token (checked before the
view, in ``before_request``); the principal is ``flask.g.principal`` (:func:`current_principal`).
Token errors, missing scopes and :func:`~bastion.guard.authorize` refusals become the same
RFC 6750 / RFC 9457 answers as with the ASGI middleware.

Why a private event loop on its own thread: :class:`~bastion.tokens.TokenValidator` is async
and keeps state bound to one event loop (its aiohttp session, the lock that makes concurrent
JWKS misses share one fetch, the revocation follower). Flask views run on many threads (the
threaded development server, gunicorn's ``gthread``), and each cannot run its own loop over
that shared state, nor can ``asyncio.run`` per request keep a session or a follower alive. So
the guard owns one loop on a daemon thread; each request hands its token over with
``asyncio.run_coroutine_threadsafe`` and waits (bounded by ``timeout``), and the validator's
cache, JWKS fetches and revocation feed all live on that loop. A cache hit costs one thread
hop, small beside Flask's own per-request work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Coroutine
from typing import Any
from typing import ParamSpec
from typing import Protocol
from typing import TypeVar

from flask import Flask
from flask import Response
from flask import g
from flask import request

from bastion.guard._core import SUBJECT_HEADER
from bastion.guard._core import MissingToken
from bastion.guard._core import TokenChecker
from bastion.guard._core import bearer_token
from bastion.guard._core import check_identity_headers
from bastion.guard._core import check_token
from bastion.guard._core import refusal
from bastion.guard.policy import Refused
from bastion.tokens import IssuerUnavailable
from bastion.tokens import Principal
from bastion.tokens import TokenError

__all__ = ["Guard", "current_principal"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Follower(Protocol):
    async def follow(self, validators: Any) -> None: ...


class Guard:
    """A Flask extension validating bearer tokens on its own event-loop thread.

    Args:
        app: The application (or call :meth:`init_app` later).
        validator: A :class:`~bastion.tokens.TokenValidator` or
            :class:`~bastion.tokens.Introspector`, built outside any loop; the guard runs it
            on its loop and closes it in :meth:`close`.
        revocations: A revocation source with ``follow`` (``FastStateRevocations``,
            ``PollingRevocations``): the guard runs ``follow([validator])`` on its loop.
        public_paths: Paths served without a token: exact paths, or prefixes ending in ``/``.
        realm: The ``realm`` of the challenges (RFC 6750 §3).
        timeout: Longest wait for a validation, in seconds; past it the answer is 503.
        check_identity_headers: Refuse a request whose ``X-Bastion-Subject`` disagrees with
            its token (400). Those headers are never used as identity.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        validator: TokenChecker,
        revocations: _Follower | None = None,
        public_paths: Collection[str] = (),
        realm: str | None = None,
        timeout: float = 10.0,
        check_identity_headers: bool = True,
    ) -> None:
        self.validator = validator
        self.realm = realm
        self.timeout = timeout
        self.check_identity_headers = check_identity_headers
        self._exact = frozenset(path for path in public_paths if not path.endswith("/"))
        self._prefixes = tuple(path for path in public_paths if path.endswith("/"))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bastion-guard", daemon=True)
        self._thread.start()
        self._follower: concurrent.futures.Future[None] | None = None
        if revocations is not None:
            self._follower = asyncio.run_coroutine_threadsafe(revocations.follow([validator]), self._loop)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Check every request of ``app`` and render refusals."""
        app.extensions["bastion.guard"] = self
        app.before_request(self._before_request)
        app.register_error_handler(TokenError, self._render)
        app.register_error_handler(Refused, self._render)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the guard's loop and wait for its result (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def require_scopes(self, *scopes: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a view so it runs only with a token holding every one of ``scopes``; else
        403 ``insufficient_scope`` naming them (RFC 6750 §3.1). Works on public paths too: the
        token is then validated here."""

        def decorate(view: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(view)
            def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                principal = g.get("principal")
                if not isinstance(principal, Principal):
                    principal = g.principal = self._authenticate()
                principal.require_scopes(*scopes)
                return view(*args, **kwargs)

            return guarded

        return decorate

    def close(self) -> None:
        """Stop following revocations, close the validator and stop the loop."""
        if self._loop.is_closed():
            return
        if self._follower is not None:
            self._follower.cancel()
        close = getattr(self.validator, "close", None)
        if close is not None:
            self.call(close(), self.timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.timeout)
        self._loop.close()

    # -- per request --------------------------------------------------------------------------

    def _public(self, path: str) -> bool:
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    def _before_request(self) -> None:
        if not self._public(request.path):
            g.principal = self._authenticate()

    def _authenticate(self) -> Principal:
        token = bearer_token(request.headers.getlist("Authorization"))
        future = asyncio.run_coroutine_threadsafe(check_token(self.validator, token), self._loop)
        try:
            principal = future.result(self.timeout)
        except TimeoutError as exc:
            future.cancel()
            raise IssuerUnavailable("validation timed out", reason="timeout") from exc
        if self.check_identity_headers:
            check_identity_headers(principal, request.headers.getlist(SUBJECT_HEADER))
        return principal

    def _render(self, error: TokenError | Refused) -> Response:
        status, headers, body = refusal(error, self.realm)
        return Response(body, status=status, headers=headers)


def current_principal() -> Principal:
    """The principal of the current request.

    Raises:
        MissingToken: none was validated (a public path): answered 401.
    """
    principal = g.get("principal")
    if not isinstance(principal, Principal):
        raise MissingToken("no principal on a public path")
    return principal

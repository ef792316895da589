"""The guard for Starlette and FastAPI: a pure ASGI middleware and ``require_scopes``.

::

    app.add_middleware(GuardMiddleware, validator=validator, public_paths={"/health"})

    @app.get("/orders/{order_id}")
    async def read(order_id: int, principal: Principal = Depends(require_scopes("orders:read"))):
        order = await orders.get(order_id)
        authorize(principal, "read", order, owner() | role("admin"))
        return order

The middleware validates the bearer token of every request outside ``public_paths`` with the
same :class:`~bastion.tokens.TokenValidator` the gateway uses (revocations included), puts
the :class:`~bastion.tokens.Principal` in ``scope["state"]["principal"]``
(``request.state.principal``), and answers refusals itself: RFC 6750 §3 challenges for token
errors (401, 403 ``insufficient_scope``, 400 ``invalid_request``, 503 when the issuer or the
revocation source cannot answer), 403/404 for :func:`~bastion.guard.authorize`, as RFC 9457
problem details. ``TokenError`` and ``Refused`` raised by endpoints and dependencies are
rendered the same way, provided the response has not started.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

from bastion.guard._core import SUBJECT_HEADER
from bastion.guard._core import MissingToken
from bastion.guard._core import TokenChecker
from bastion.guard._core import bearer_token
from bastion.guard._core import check_identity_headers
from bastion.guard._core import check_token
from bastion.guard._core import refusal
from bastion.guard.policy import Refused
from bastion.tokens import Principal
from bastion.tokens import TokenError

__all__ = ["GuardMiddleware", "current_principal", "require_scopes"]

_GUARDED = "bastion.guard"


class GuardMiddleware:
    """Validates the bearer token of every HTTP and WebSocket request (pure ASGI).

    Args:
        app: The application to protect.
        validator: A :class:`~bastion.tokens.TokenValidator`, or an
            :class:`~bastion.tokens.Introspector` for opaque tokens. The middleware does not
            start or close it: do that in the application's lifespan.
        public_paths: Paths served without a token: exact paths, or prefixes ending in ``/``.
        realm: The ``realm`` of the challenges (RFC 6750 §3).
        check_identity_headers: Refuse a request whose ``X-Bastion-Subject`` disagrees with
            its token (400 ``invalid_request``). Those headers are never used as identity.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        validator: TokenChecker,
        public_paths: Collection[str] = (),
        realm: str | None = None,
        check_identity_headers: bool = True,
    ) -> None:
        self.app = app
        self.validator = validator
        self.realm = realm
        self.check_identity_headers = check_identity_headers
        self._exact = frozenset(path for path in public_paths if not path.endswith("/"))
        self._prefixes = tuple(path for path in public_paths if path.endswith("/"))

    def _public(self, path: str) -> bool:
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                started = True
            await send(message)

        # Marks the request as guarded, for current_principal() to tell a public path (no
        # principal: 401) from an application that forgot the middleware (a bug).
        scope[_GUARDED] = True
        try:
            if not self._public(scope["path"]):
                scope.setdefault("state", {})["principal"] = await self._authenticate(scope)
            await self.app(scope, receive, tracking_send)
        except (TokenError, Refused) as error:
            if started:
                raise
            await self._refuse(scope, send, error)

    async def _authenticate(self, scope: Scope) -> Principal:
        authorization: list[str] = []
        subjects: list[str] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization.append(value.decode("latin-1"))
            elif name == SUBJECT_HEADER.encode():
                subjects.append(value.decode("latin-1"))
        principal = await check_token(self.validator, bearer_token(authorization))
        if self.check_identity_headers:
            check_identity_headers(principal, subjects)
        return principal

    async def _refuse(self, scope: Scope, send: Send, error: TokenError | Refused) -> None:
        status, headers, body = refusal(error, self.realm)
        if scope["type"] == "websocket":
            # RFC 6455 §7.4.1: 1008 "policy violation"; the handshake is refused.
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        raw = [(name.encode(), value.encode("latin-1")) for name, value in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def current_principal(connection: HTTPConnection) -> Principal:
    """The principal the :class:`GuardMiddleware` validated for this request.

    Raises:
        MissingToken: none (a public path): answered 401 with a bare challenge.
        RuntimeError: the middleware is not installed.
    """
    if not connection.scope.get(_GUARDED):
        raise RuntimeError("GuardMiddleware is not installed on this application")
    principal = connection.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        raise MissingToken("no principal on a public path")
    return principal


def require_scopes(*scopes: str) -> Callable[[HTTPConnection], Principal]:
    """A FastAPI dependency (and Starlette helper) returning the principal if it holds every
    one of ``scopes``; otherwise the middleware answers 403 ``insufficient_scope`` naming them
    (RFC 6750 §3.1)::

        principal: Principal = Depends(require_scopes("orders:read"))   # FastAPI
        principal = require_scopes("orders:read")(request)              # Starlette

    .. versionadded:: 0.2
    """

    # A plain function (not a callable object): FastAPI resolves its annotations through the
    # function's module globals.
    def dependency(connection: HTTPConnection) -> Principal:
        principal = current_principal(connection)
        principal.require_scopes(*scopes)
        return principal

    dependency.__qualname__ = dependency.__name__ = f"require_scopes({' '.join(scopes)})"
    return dependency

"""Who may call the admin API: a bearer access token of this server with the admin scope.

There are no default credentials. An operator registers a client allowed the scope (``bastion
clients create --name ops --scope bastion:admin``) and obtains tokens with the client
credentials grant. Each request's token is checked in this process, as introspection checks it
(signature by a published key, ``iss``, ``exp``, revocation; an opaque token by its record),
and its client must still be enabled. Refusals carry RFC 6750 §3 challenges: 401 without a
usable token, 403 ``insufficient_scope`` without the scope. Every call, answered or refused, is
an ``admin.call`` audit event whose actor is the token's client.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from typing import Final

from bastion.ops.audit_events import current_request
from bastion.server.admin.problems import UNAUTHORIZED
from bastion.server.admin.problems import Problem
from bastion.server.responses import StatusRecorder
from bastion.services.container import Services
from bastion.storage.audit_protocols import Outcome
from bastion.storage.protocols import StorageError
from bastion.types import ASGIApp
from bastion.types import Receive
from bastion.types import Scope
from bastion.types import Send

log = logging.getLogger("bastion.server.admin")

#: The scope an access token needs to call the admin API.
ADMIN_SCOPE: Final = "bastion:admin"
REALM: Final = "bastion-admin"
#: Paths served without a token: the API's own description.
PUBLIC_PATHS: Final = frozenset({"/openapi.json"})
_MAX_TOKEN = 8192


def _challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


class AdminAuthMiddleware:
    """Authenticates every request but :data:`PUBLIC_PATHS`, then audits it (pure ASGI)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def principal(self, scope: Scope) -> dict[str, Any]:
        """The claims of the request's admin token.

        Raises:
            Problem: 401 (no token, or not a live token of this server), 403 (no admin scope).
        """
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if not values:
            raise Problem(
                401,
                "an access token with the bastion:admin scope is required",
                type=UNAUTHORIZED,
                headers={"www-authenticate": _challenge()},
            )
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        token = token.strip()
        if len(values) > 1 or scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN:
            raise Problem(
                401,
                "send one access token as Authorization: Bearer",
                type=UNAUTHORIZED,
                headers={"www-authenticate": _challenge("invalid_request")},
            )
        claims = await self.services.tokens.introspect(token)
        client_id = claims.get("client_id")
        client = await self.services.clients.get(client_id) if isinstance(client_id, str) else None
        if (
            not claims.get("active")
            or claims.get("token_type") != "Bearer"
            or client is None
            or client.disabled
        ):
            raise Problem(
                401,
                "the access token is invalid, expired or revoked",
                type=UNAUTHORIZED,
                headers={"www-authenticate": _challenge("invalid_token", "the access token is not active")},
            )
        if ADMIN_SCOPE not in str(claims.get("scope", "")).split():
            raise Problem(
                403,
                "the access token lacks the bastion:admin scope",
                type=UNAUTHORIZED,
                headers={"www-authenticate": _challenge("insufficient_scope", scope=ADMIN_SCOPE)},
            )
        return claims

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        reason: str | None = None
        actor: str | None = None
        started = time.perf_counter()
        sending = StatusRecorder(send)
        try:
            try:
                claims = await self.principal(scope)
            except Problem as problem:
                reason = problem.headers["www-authenticate"].partition('error="')[2].partition('"')[0] or (
                    "no_token"
                )
                await problem.response()(scope, receive, sending)
                return
            except StorageError as exc:
                log.error("admin API: storage failure while checking a token: %s", exc)
                await Problem(
                    503, "storage is unavailable; retry later", headers={"retry-after": "5"}
                ).response()(scope, receive, sending)
                return
            actor = str(claims["client_id"])
            request = current_request()
            if request is not None:
                request.actor = request.client = actor
            scope.setdefault("state", {})["admin_claims"] = claims
            await self.app(scope, receive, sending)
        finally:
            status = sending.status
            outcome: Outcome = "success" if status and status < 400 else "failure"
            if status in (401, 403):
                outcome = "denied"
            self.services.audit.emit(
                "admin.call",
                outcome=outcome,
                actor=actor or "anonymous",
                client=actor,
                reason=reason,
                details={
                    "method": scope["method"],
                    "path": scope["path"][:512],
                    "status": status or 500,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )

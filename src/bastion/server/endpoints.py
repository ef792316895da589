"""The token, introspection, revocation and revocation-list endpoints as raw ASGI callables.

These carry the machine traffic, so they skip the router and the request object: read
the body (bounded), parse the form strictly, authenticate the client, call a service, render.
Every failure leaves as an RFC 6749 §5.2 error; nothing leaves as a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bastion.net import TrustedProxies
from bastion.net import parse_networks
from bastion.ops.audit_events import current_request
from bastion.protocol.errors import AccessDenied
from bastion.protocol.errors import InvalidClient
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.errors import OAuthError
from bastion.protocol.errors import ServerError
from bastion.protocol.errors import TemporarilyUnavailable
from bastion.protocol.errors import UnsupportedGrantType
from bastion.protocol.errors import UnsupportedTokenType
from bastion.protocol.models import Client
from bastion.protocol.models import GrantType
from bastion.protocol.requests import is_form_content_type
from bastion.protocol.requests import parse_form
from bastion.protocol.rfc6749.grants import client_credentials
from bastion.protocol.rfc6749.scope import format_scope
from bastion.server.responses import error_response
from bastion.server.responses import send_json
from bastion.services.container import Services
from bastion.services.keys import NoSigningKey
from bastion.services.revocation_list import REVOCATIONS_SCOPE
from bastion.services.revocation_list import revocation_page
from bastion.storage.protocols import StorageError
from bastion.types import Receive
from bastion.types import Scope
from bastion.types import Send

log = logging.getLogger("bastion.server")

_SENSITIVE_QUERY = re.compile(
    rb"(?:^|&)(?:client_secret|token|refresh_token|code|code_verifier|password)=", re.I
)


@dataclass(frozen=True, slots=True)
class FormRequest:
    """What a machine endpoint's handler reads: the form, the ``Authorization`` header and the
    client address (resolved through ``trusted_proxies``)."""

    params: dict[str, str]
    authorization: str | None
    ip: str


Handler = Callable[[Services, FormRequest], Awaitable[dict[str, Any]]]


class BodyTooLarge(InvalidRequest):
    """The request body exceeds the endpoint's limit."""

    status_hint = 413


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge("the request body is too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _headers(scope: Scope) -> tuple[str | None, str | None, list[bytes]]:
    """``Content-Type``, ``Authorization`` and the ``X-Forwarded-For`` values, in one pass;
    ``Content-Type`` or ``Authorization`` repeated is refused."""
    content_type = authorization = None
    forwarded: list[bytes] = []
    for key, value in scope["headers"]:
        if key == b"content-type":
            if content_type is not None:
                raise InvalidRequest("header content-type is repeated")
            content_type = value.decode("latin-1")
        elif key == b"authorization":
            if authorization is not None:
                raise InvalidRequest("header authorization is repeated")
            authorization = value.decode("latin-1")
        elif key == b"x-forwarded-for":
            forwarded.append(value)
    return content_type, authorization, forwarded


async def _authenticate(services: Services, request: FormRequest, *, allow_public: bool = False) -> Client:
    """The request's client (counted and throttled, see :mod:`bastion.services.client_auth`)."""
    return await services.clients.authenticate(
        request.params, request.authorization, ip=request.ip, allow_public=allow_public
    )


async def _within_rate(services: Services, client: Client, request: FormRequest) -> None:
    """Count the authenticated client's request against its rate, or refuse it (HTTP 429)."""
    if services.client_requests is not None:
        await services.client_requests.admit(client, request.ip)


async def token(services: Services, request: FormRequest) -> dict[str, Any]:
    """RFC 6749 §3.2 token endpoint."""
    params = request.params
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required")
    if grant_type != GrantType.CLIENT_CREDENTIALS and grant_type not in services.grant_handlers:
        raise UnsupportedGrantType(f"grant_type {grant_type} is not supported")
    client = await _authenticate(services, request, allow_public=grant_type != GrantType.CLIENT_CREDENTIALS)
    now = services.clock()
    if grant_type != GrantType.CLIENT_CREDENTIALS:
        return await services.grant_handlers[grant_type](services, client, params, now)
    decision = client_credentials.decide(client, params, services.settings.issuer)
    scope = format_scope(decision.scopes)
    issued = await services.tokens.issue_access_token(
        client=client, subject=client.client_id, scope=scope, audience=decision.audience, now=now
    )
    services.audit.emit(
        "token.issued",
        actor=client.client_id,
        subject=client.client_id,
        client=client.client_id,
        details={"grant_type": grant_type, "jti": issued.jti, "scope": scope},
    )
    response: dict[str, Any] = {
        "access_token": issued.token,
        "token_type": issued.token_type,
        "expires_in": issued.expires_in,
    }
    if scope:
        response["scope"] = scope
    return response


async def introspect_token(services: Services, token: str, client: Client | None = None) -> dict[str, Any]:
    """The RFC 7662 answer for ``token``, inactive once the client it was issued to is disabled
    or deleted: a disabled client's refresh tokens are refused, and so are its access tokens
    wherever this server is asked (introspection, UserInfo)."""
    result = await services.tokens.introspect(token, client)
    if result.get("active"):
        owner = await services.clients.get(str(result.get("client_id", "")))
        if owner is None or owner.disabled:
            return {"active": False}
    return result


async def introspect(services: Services, request: FormRequest) -> dict[str, Any]:
    """RFC 7662 §2: "the protected resource calls the introspection endpoint" with its own
    credentials; unknown, expired or revoked tokens are ``{"active": false}``."""
    client = await _authenticate(services, request)
    await _within_rate(services, client, request)
    value = request.params.get("token")
    if value is None:
        raise InvalidRequest("token is required")
    return await introspect_token(services, value, client)


async def revoke(services: Services, request: FormRequest) -> dict[str, Any]:
    """RFC 7009 §2: revoke a token the client holds; 200 whether or not it was valid."""
    client = await _authenticate(services, request, allow_public=True)
    await _within_rate(services, client, request)
    params = request.params
    value = params.get("token")
    if value is None:
        raise InvalidRequest("token is required")
    hint = params.get("token_type_hint")
    if hint is not None and hint not in ("access_token", "refresh_token"):
        raise UnsupportedTokenType(f"token_type_hint {hint} is not supported")
    await services.tokens.revoke(value, client)
    return {}


async def revocations(services: Services, request: FormRequest) -> dict[str, Any]:
    """The revocation list, for services that validate tokens themselves and share no store
    with this server (``bastion.tokens.PollingRevocations`` polls it).

    Client authentication as for introspection (RFC 7662 §2.1: confidential clients,
    ``client_secret_basic`` or ``client_secret_post``); only a client registered with the scope
    :data:`~bastion.services.revocation_list.REVOCATIONS_SCOPE` may read it, anyone else is
    refused with 403 ``access_denied``. ``cursor`` (optional) is the one the previous answer
    gave: the answer then holds only what changed since.
    """
    client = await _authenticate(services, request)
    await _within_rate(services, client, request)
    if REVOCATIONS_SCOPE not in client.scopes:
        raise AccessDenied(
            f"this client may not read the revocation list (it needs the scope {REVOCATIONS_SCOPE})"
        )
    page = await revocation_page(services, request.params.get("cursor"))
    return page.to_json()


class FormEndpoint:
    """An ASGI callable: POST, form body, client auth, JSON answer."""

    def __init__(self, services: Services, handler: Handler, name: str) -> None:
        self.services = services
        self.handler = handler
        self.name = name
        self._realm = services.settings.issuer
        self._proxies = TrustedProxies(parse_networks(services.settings.trusted_proxies))
        #: The token endpoint counts its answers by grant type and outcome.
        self._counted = name == "token"

    def _count(self, params: dict[str, str] | None, outcome: str) -> None:
        services = self.services
        grant_type = params.get("grant_type", "none") if params is not None else "none"
        if grant_type != GrantType.CLIENT_CREDENTIALS and grant_type not in services.grant_handlers:
            grant_type = "none" if grant_type == "none" else "other"  # a bounded label set
        services.metrics.token(grant_type, outcome)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.services
        params: dict[str, str] | None = None
        try:
            if scope["method"] != "POST":
                await send_json(
                    send,
                    405,
                    {"error": "invalid_request", "error_description": "use POST"},
                    [(b"allow", b"POST")],
                )
                return
            if _SENSITIVE_QUERY.search(scope.get("query_string", b"")):
                # RFC 6749 §2.3.1: credentials "MUST NOT be included in the request URI"; the
                # same holds for tokens (RFC 6750 §5.3: URLs end up in logs and histories).
                raise InvalidRequest("send parameters in the request body, not in the URL")
            content_type, authorization, forwarded = _headers(scope)
            if not is_form_content_type(content_type):
                raise InvalidRequest("the body must be application/x-www-form-urlencoded")
            body = await read_body(receive, services.settings.max_body_bytes)
            params = parse_form(body)
            request = current_request()  # AuditScopeMiddleware resolved the address already
            if request is not None and request.address is not None:
                ip = request.address
            else:
                peer = scope.get("client")
                ip = self._proxies.client_ip(peer[0] if peer else "unknown", forwarded)
            result = await self.handler(services, FormRequest(params, authorization, ip))
        except OAuthError as error:
            status, body_json, headers = error_response(error, self._realm)
            if self._counted:
                self._count(params, error.error)
            if self.name == "token":
                services.audit.emit(
                    "token.refused",
                    outcome="failure",
                    reason=error.error,
                    details={"description": error.detail or error.description},
                )
            elif isinstance(error, InvalidClient):
                services.audit.emit(
                    "client.auth_failed",
                    outcome="failure",
                    reason=error.error,
                    details={"endpoint": self.name, "description": error.detail or error.description},
                )
            await send_json(send, status, body_json, headers)
            return
        except (StorageError, NoSigningKey) as exc:
            log.error("%s endpoint: cannot serve: %s", self.name, exc)
            # RFC 6749 §5.2 has no code for this; temporarily_unavailable (§4.1.2.1) says what
            # the client should do (retry later), and RFC 7009 §2.2.1 names 503 for revocation.
            # A missing signing key (every key of an algorithm withdrawn and its replacement not
            # yet loaded) is the same kind of outage: nothing the client sent was wrong.
            status, body_json, headers = error_response(
                TemporarilyUnavailable("storage is unavailable; retry later"), self._realm
            )
            if self._counted:
                self._count(params, TemporarilyUnavailable.error)
            await send_json(send, status, body_json, [(b"retry-after", b"5")])
            return
        except Exception:
            log.exception("%s endpoint failed", self.name)
            if self._counted:
                self._count(params, ServerError.error)
            status, body_json, headers = error_response(ServerError(), self._realm)
            await send_json(send, status, body_json, headers)
            return
        if self._counted:
            self._count(params, "ok")
        await send_json(send, 200, result)

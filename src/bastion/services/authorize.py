"""The interactive part of the authorization endpoint: login sessions, pending requests, and
the decision to sign in, ask for consent, or issue a code.

State, all in the fast-state store (so every process sees it):

* ``session:<hash>`` - a browser's login session, keyed by the keyed hash of its cookie value:
  the CSRF token, and once signed in the user, ``auth_time`` and ``sid``. A session exists
  before sign-in (to carry the CSRF token of the login form) and is replaced by a new one at
  sign-in (no session fixation).
* ``sid:<sid>`` - the login session ids alive, which codes are bound to; the durable per-user
  index behind them is :mod:`bastion.services.sessions`.
* ``authz:<id>`` - an authorization request waiting for the user (login or consent), bound to
  the session that started it.

Nothing here renders: :mod:`bastion.server.people` turns an :data:`Outcome` into a response.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any

import orjson

from bastion.protocol.errors import AccessDenied
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.errors import OAuthError
from bastion.protocol.models import Client
from bastion.protocol.models import User
from bastion.protocol.oidc.logout import verify_id_token_hint
from bastion.protocol.rfc6749.authorize import AuthorizationPageError
from bastion.protocol.rfc6749.authorize import AuthorizationRequest
from bastion.protocol.rfc6749.authorize import Interaction
from bastion.protocol.rfc6749.authorize import check_redirect_target
from bastion.protocol.rfc6749.authorize import code_response_uri
from bastion.protocol.rfc6749.authorize import collect_params
from bastion.protocol.rfc6749.authorize import error_response_uri
from bastion.protocol.rfc6749.authorize import required_interaction
from bastion.protocol.rfc6749.authorize import validate_authorization_request
from bastion.services import consent
from bastion.services import sessions
from bastion.services.authorization_code import issue_code
from bastion.services.container import Services
from bastion.services.users import people

SESSION_PREFIX = "session:"
PENDING_PREFIX = "authz:"
#: Seconds a user has to sign in and consent before the request must start again.
PENDING_TTL = 900
#: Lifetime of a session that never signed in (it only carries a CSRF token).
ANONYMOUS_SESSION_TTL = 3600


@dataclass(frozen=True, slots=True)
class LoginSession:
    """A browser's session with the authorization server."""

    key_hash: str
    csrf: str
    user_id: str | None = None
    auth_time: float | None = None
    sid: str | None = None

    @property
    def signed_in(self) -> bool:
        """Whether a user signed in with this session."""
        return self.user_id is not None

    def to_json(self) -> bytes:
        """Serialised for the fast-state store."""
        return orjson.dumps(
            {"csrf": self.csrf, "user_id": self.user_id, "auth_time": self.auth_time, "sid": self.sid}
        )


@dataclass(frozen=True, slots=True)
class Pending:
    """An authorization request waiting for the user."""

    pending_id: str
    request: AuthorizationRequest
    session_hash: str
    signed_in: bool = False
    consented: bool = False

    def to_json(self) -> bytes:
        """Serialised for the fast-state store."""
        return orjson.dumps(
            {
                "request": self.request.to_dict(),
                "session_hash": self.session_hash,
                "signed_in": self.signed_in,
                "consented": self.consented,
            }
        )


@dataclass(frozen=True, slots=True)
class ShowError:
    """Answer with an error page (never redirect)."""

    error: OAuthError


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the browser to the client (code or error)."""

    location: str


@dataclass(frozen=True, slots=True)
class Interact:
    """Send the browser to the login or consent page."""

    kind: Interaction
    pending_id: str
    client: Client = field(compare=False)


Outcome = ShowError | Redirect | Interact


def csrf_matches(session: LoginSession | None, token: str | None) -> bool:
    """Whether a submitted form token is the session's, compared in constant time."""
    if session is None or not token:
        return False
    return hmac.compare_digest(session.csrf.encode(), token.encode())


# -- sessions ------------------------------------------------------------------------------


async def load_session(services: Services, cookie: str | None) -> LoginSession | None:
    """The session a cookie names, or ``None`` (unknown, expired, or a ``sid`` that was signed
    out or ended with every session of its user)."""
    if not cookie or len(cookie) > 256:
        return None
    key_hash = services.sealer.hash_secret(cookie)
    raw = await services.stores.state.get(SESSION_PREFIX + key_hash)
    if raw is None:
        return None
    data: dict[str, Any] = orjson.loads(raw)
    session = LoginSession(key_hash=key_hash, **data)
    if session.sid is not None and not await sessions.alive(services, session.sid):
        return None  # signed out, or the user's sessions were ended (password reset, disable)
    return session


async def new_session(services: Services) -> tuple[str, LoginSession]:
    """A fresh anonymous session: returns the cookie value and the session."""
    cookie = secrets.token_urlsafe(32)
    session = LoginSession(key_hash=services.sealer.hash_secret(cookie), csrf=secrets.token_urlsafe(32))
    await services.stores.state.set(
        SESSION_PREFIX + session.key_hash, session.to_json(), ANONYMOUS_SESSION_TTL
    )
    return cookie, session


async def sign_in(
    services: Services, old: LoginSession | None, user: User, now: float
) -> tuple[str, LoginSession]:
    """Replace the browser's session with a signed-in one (new cookie, new CSRF token, new sid)."""
    state = services.stores.state
    ttl = services.settings.login_session_ttl
    if old is not None:
        await state.delete(SESSION_PREFIX + old.key_hash)
        if old.sid is not None:
            await sessions.end(services, old.sid)
    cookie = secrets.token_urlsafe(32)
    session = LoginSession(
        key_hash=services.sealer.hash_secret(cookie),
        csrf=secrets.token_urlsafe(32),
        user_id=user.user_id,
        auth_time=now,
        sid=secrets.token_urlsafe(16),
    )
    await sessions.start(services, str(session.sid), user.user_id, now, ttl)
    await state.set(SESSION_PREFIX + session.key_hash, session.to_json(), ttl)
    return cookie, session


async def sign_out(services: Services, session: LoginSession | None, sid: str | None = None) -> None:
    """End a login session (its cookie and its ``sid``, so codes bound to it die too)."""
    state = services.stores.state
    if session is not None:
        await state.delete(SESSION_PREFIX + session.key_hash)
        sid = sid or session.sid
    if sid is not None:
        await sessions.end(services, sid)


# -- pending requests ------------------------------------------------------------------------


async def _save(services: Services, pending: Pending) -> None:
    await services.stores.state.set(PENDING_PREFIX + pending.pending_id, pending.to_json(), PENDING_TTL)


async def load_pending(
    services: Services, pending_id: str | None, session: LoginSession | None
) -> Pending | None:
    """A pending request, if it exists and belongs to this browser's session."""
    if not pending_id or session is None or len(pending_id) > 64:
        return None
    raw = await services.stores.state.get(PENDING_PREFIX + pending_id)
    if raw is None:
        return None
    data = orjson.loads(raw)
    if not hmac.compare_digest(data["session_hash"].encode(), session.key_hash.encode()):
        return None
    return Pending(
        pending_id=pending_id,
        request=AuthorizationRequest.from_dict(data["request"]),
        session_hash=data["session_hash"],
        signed_in=data["signed_in"],
        consented=data["consented"],
    )


async def signed_in_for(services: Services, pending: Pending, session: LoginSession) -> None:
    """Record that the user signed in for this request, and move it to the new session."""
    await _save(services, replace(pending, session_hash=session.key_hash, signed_in=True))


# -- the decision ----------------------------------------------------------------------------


async def _user_of(services: Services, session: LoginSession | None) -> User | None:
    if session is None or session.user_id is None:
        return None
    user = await people(services).users.get_user(session.user_id)
    return None if user is None or user.disabled else user


async def authorize(services: Services, items: Iterable[tuple[str, str]], session: LoginSession) -> Outcome:
    """Handle an authorization request (RFC 6749 §4.1.1) from a browser with ``session``."""
    params, repeated = collect_params(items)
    client_id = params.get("client_id")
    client = await services.clients.get(client_id) if client_id and len(client_id) <= 128 else None
    try:
        target = check_redirect_target(params, repeated, client)
    except AuthorizationPageError as exc:
        return ShowError(exc.error)
    if client is None:  # pragma: no cover - check_redirect_target refused it already
        return ShowError(InvalidRequest("unknown client"))
    try:
        request = validate_authorization_request(params, repeated, client, target)
        if "id_token_hint" in params:
            request = replace(request, hint_subject=verify_hint(services, params["id_token_hint"], client))
    except OAuthError as exc:
        return Redirect(error_response_uri(target, exc, services.settings.issuer))
    pending = Pending(pending_id=secrets.token_urlsafe(16), request=request, session_hash=session.key_hash)
    return await decide(services, client, pending, session)


def verify_hint(services: Services, token: str, client: Client) -> str:
    """The ``sub`` of an ``id_token_hint`` this issuer signed for ``client`` (expired or not).

    Raises:
        InvalidRequest: not an ID token of this issuer, or one issued to another client.
    """
    keys = {}
    for key in services.keys.published():
        if (found := services.keys.public_key(key.kid)) is not None:
            keys[key.kid] = found[1]
    claims = verify_id_token_hint(
        token,
        issuer=services.settings.issuer,
        keys=keys,
        algorithms=(services.settings.id_token_algorithm,),
    )
    if claims["aud"] != client.client_id or not isinstance(claims.get("sub"), str):
        raise InvalidRequest("id_token_hint was issued to another client")
    return str(claims["sub"])


async def resume(services: Services, pending: Pending, session: LoginSession) -> Outcome:
    """Continue a pending request after the user signed in or consented."""
    client = await services.clients.get(pending.request.client_id)
    if client is None or client.disabled:
        await services.stores.state.delete(PENDING_PREFIX + pending.pending_id)
        return ShowError(InvalidRequest("the client is no longer available"))
    return await decide(services, client, pending, session)


async def decide(services: Services, client: Client, pending: Pending, session: LoginSession) -> Outcome:
    """Sign in, consent, or issue the code (OIDC Core §3.1.2.1 ``prompt``, ``max_age``)."""
    now = services.clock()
    request = pending.request
    issuer = services.settings.issuer
    user = await _user_of(services, session)
    scope: tuple[str, ...] = ()
    covered = False
    if user is not None:
        scope = await consent.scope_to_grant(services, client, request, user)
        covered = await consent.covers(services, user, client, scope)
    try:
        interaction = required_interaction(
            request,
            auth_time=session.auth_time if user is not None else None,
            signed_in_for_request=pending.signed_in and user is not None,
            consent_covers=covered,
            consented_for_request=pending.consented,
            first_party=client.first_party,
            now=now,
            user_id=user.user_id if user is not None else None,
        )
    except OAuthError as exc:
        await services.stores.state.delete(PENDING_PREFIX + pending.pending_id)
        return Redirect(error_response_uri(request.target, exc, issuer))
    if interaction is not Interaction.NONE:
        await _save(services, pending)
        return Interact(interaction, pending.pending_id, client)
    if user is None or session.sid is None or session.auth_time is None:  # pragma: no cover
        return ShowError(InvalidRequest("sign in again"))  # required_interaction asked for a login
    await services.stores.state.delete(PENDING_PREFIX + pending.pending_id)
    code = await issue_code(
        services,
        request=request,
        user=user,
        scope=scope,
        sid=session.sid,
        auth_time=session.auth_time,
        now=now,
    )
    return Redirect(code_response_uri(request.target, code, issuer))


async def consent_view(services: Services, pending: Pending, session: LoginSession) -> dict[str, Any] | None:
    """What the consent page shows, or ``None`` if the user is not signed in any more."""
    user = await _user_of(services, session)
    client = await services.clients.get(pending.request.client_id)
    if user is None or client is None:
        return None
    scope = await consent.scope_to_grant(services, client, pending.request, user)
    return {"client_name": client.name, "username": user.username, "scopes": consent.describe(scope)}


async def answer_consent(
    services: Services, pending: Pending, session: LoginSession, *, allow: bool
) -> Outcome:
    """The user allowed or denied the consent screen."""
    request = pending.request
    if not allow:
        await services.stores.state.delete(PENDING_PREFIX + pending.pending_id)
        services.audit.emit(
            "consent.denied",
            outcome="denied",
            actor=session.user_id,
            subject=session.user_id,
            client=request.client_id,
            details={"scope": " ".join(request.scope)},
        )
        return Redirect(
            error_response_uri(
                request.target, AccessDenied("the user denied the request"), services.settings.issuer
            )
        )
    user = await _user_of(services, session)
    client = await services.clients.get(request.client_id)
    if user is None or client is None:
        return ShowError(InvalidRequest("sign in again"))
    scope = await consent.scope_to_grant(services, client, request, user)
    await consent.remember(services, user, client, scope)
    return await decide(services, client, replace(pending, consented=True), session)

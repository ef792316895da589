"""The authorization endpoint (RFC 6749 §3.1, §4.1.1-§4.1.2) with OAuth 2.1 and OIDC rules.

https://www.rfc-editor.org/rfc/rfc6749#section-4.1

Validation happens in two phases, because the spec treats their failures differently:

1. :func:`check_redirect_target` - the client and its redirect URI. RFC 6749 §4.1.2.1: "If the
   request fails due to a missing, invalid, or mismatching redirection URI, or if the client
   identifier is missing or invalid, the authorization server SHOULD inform the resource owner of
   the error and MUST NOT automatically redirect the user-agent to the invalid redirection URI."
   Failures raise :class:`AuthorizationPageError` (an error page).
2. :func:`validate_authorization_request` - everything else. Failures raise :class:`OAuthError`
   and go back to the client with ``error``, ``state`` and ``iss`` (RFC 9207 §2).

Then :func:`required_interaction` decides (OIDC Core §3.1.2.1 ``prompt`` and ``max_age``) whether
the user must sign in, consent, or neither. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from typing import Final
from urllib.parse import urlencode
from urllib.parse import urlsplit

from bastion.protocol.errors import ConsentRequired
from bastion.protocol.errors import InvalidClient
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.errors import InvalidScope
from bastion.protocol.errors import LoginRequired
from bastion.protocol.errors import OAuthError
from bastion.protocol.errors import UnauthorizedClient
from bastion.protocol.errors import UnsupportedResponseType
from bastion.protocol.models import Client
from bastion.protocol.rfc6749.scope import parse_scope
from bastion.protocol.rfc7636 import validate_code_challenge

#: Scopes about the person's identity rather than API permissions: granted when the client may
#: ask for them, without a role (OIDC Core §5.4, §11).
IDENTITY_SCOPES: Final = frozenset({"openid", "profile", "email", "offline_access"})

#: The only ``response_type`` (OAuth 2.1 §4.1.1; no implicit, no hybrid).
RESPONSE_TYPES: Final = ("code",)
RESPONSE_MODES: Final = ("query",)
PROMPT_VALUES: Final = frozenset({"none", "login", "consent", "select_account"})

_MAX_STATE: Final = 2048
_MAX_NONCE: Final = 512
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1"})
# Parameters that locate the redirect target: a duplicate of one of these is a page error.
_TARGET_PARAMS: Final = ("client_id", "redirect_uri")


class RequestNotSupported(OAuthError):
    """The OP does not support use of the ``request`` parameter (OIDC Core §3.1.2.6)."""

    error = "request_not_supported"


class RequestUriNotSupported(OAuthError):
    """The OP does not support use of the ``request_uri`` parameter (OIDC Core §3.1.2.6)."""

    error = "request_uri_not_supported"


class AuthorizationPageError(Exception):
    """An authorization request that must be answered with an error page, never a redirect.

    Attributes:
        error: the OAuth error to show.
    """

    def __init__(self, error: OAuthError) -> None:
        super().__init__(str(error))
        self.error = error


class Interaction(StrEnum):
    """What the user must do before a code is issued."""

    NONE = "none"
    LOGIN = "login"
    CONSENT = "consent"


@dataclass(frozen=True, slots=True)
class RedirectTarget:
    """Where the authorization response goes: a redirect URI verified against the client."""

    client_id: str
    redirect_uri: str
    state: str | None


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A validated authorization request."""

    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    code_challenge: str
    state: str | None = None
    nonce: str | None = None
    prompt: frozenset[str] = frozenset()
    max_age: int | None = None
    login_hint: str | None = None
    #: ``sub`` of a verified ``id_token_hint``: the user the client expects (OIDC Core §3.1.2.1).
    hint_subject: str | None = None

    @property
    def target(self) -> RedirectTarget:
        """The verified place its response goes."""
        return RedirectTarget(self.client_id, self.redirect_uri, self.state)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for keeping the request while the user signs in."""
        return {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": list(self.scope),
            "code_challenge": self.code_challenge,
            "state": self.state,
            "nonce": self.nonce,
            "prompt": sorted(self.prompt),
            "max_age": self.max_age,
            "login_hint": self.login_hint,
            "hint_subject": self.hint_subject,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthorizationRequest:
        """The inverse of :meth:`to_dict`."""
        return cls(
            client_id=data["client_id"],
            redirect_uri=data["redirect_uri"],
            scope=tuple(data["scope"]),
            code_challenge=data["code_challenge"],
            state=data.get("state"),
            nonce=data.get("nonce"),
            prompt=frozenset(data.get("prompt", ())),
            max_age=data.get("max_age"),
            login_hint=data.get("login_hint"),
            hint_subject=data.get("hint_subject"),
        )


def collect_params(items: Iterable[tuple[str, str]]) -> tuple[dict[str, str], frozenset[str]]:
    """Single-valued parameters and the names that were repeated.

    RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
    Parameters sent without a value are treated as omitted (§3.1).
    """
    params: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in items:
        if name in params:
            repeated.add(name)
        if value != "":
            params[name] = value
    return params, frozenset(repeated)


def match_redirect_uri(registered: Iterable[str], requested: str) -> str | None:
    """The registered redirect URI ``requested`` matches, or ``None``.

    RFC 9700 §2.1: "authorization servers MUST utilize exact string matching" for redirect URIs,
    with one exception: RFC 8252 §7.3, "The authorization server MUST allow any port to be
    specified at the time of the request for loopback IP redirect URIs". Only ``http`` URIs on
    ``127.0.0.1`` or ``[::1]`` get that exception (``localhost`` is NOT RECOMMENDED, §8.3).
    """
    candidates = tuple(registered)
    if requested in candidates:
        return requested
    # urlsplit silently drops tabs and newlines (WHATWG URL parsing), so "http://127.0.0.1:8\t0/x"
    # would compare as port 80 while the raw string, not what was compared, is redirected to.
    # RFC 3986 §2 has no place for controls or spaces in a URI: refuse them outright.
    if any(ch <= " " or ch == "\x7f" for ch in requested):
        return None
    try:
        asked = urlsplit(requested)
        asked.port  # noqa: B018 - raises ValueError on a malformed or out-of-range port
    except ValueError:
        return None
    if asked.scheme != "http" or asked.hostname not in _LOOPBACK_HOSTS or "#" in requested:
        return None
    # Any port goes, none (port 80) included: a registration with a port does not pin it.
    if asked.username is not None or asked.password is not None:
        return None
    for uri in candidates:
        known = urlsplit(uri)
        if known.scheme != "http" or known.hostname not in _LOOPBACK_HOSTS:
            continue
        if known.username is not None or known.password is not None:
            continue
        same_host = _host_part(known.netloc) == _host_part(asked.netloc)
        if same_host and known.path == asked.path and known.query == asked.query:
            return requested
    return None


def _host_part(netloc: str) -> str:
    if netloc.startswith("["):
        return netloc[: netloc.index("]") + 1]
    return netloc.split(":", 1)[0]


def check_redirect_target(
    params: Mapping[str, str], repeated: frozenset[str], client: Client | None
) -> RedirectTarget:
    """Phase one: the client and the redirect URI.

    Args:
        params: the request's single-valued parameters (:func:`collect_params`).
        repeated: parameter names that appeared more than once.
        client: the client named by ``client_id``, or ``None`` if there is none.

    Raises:
        AuthorizationPageError: unknown or disabled client, a missing or unregistered redirect
            URI, or a repeated ``client_id``/``redirect_uri``.
    """
    for name in _TARGET_PARAMS:
        if name in repeated:
            raise AuthorizationPageError(InvalidRequest(f"{name} was sent more than once"))
    client_id = params.get("client_id")
    if not client_id:
        raise AuthorizationPageError(InvalidRequest("client_id is required"))
    if client is None or client.client_id != client_id or client.disabled:
        raise AuthorizationPageError(InvalidClient("unknown client"))
    redirect_uri = params.get("redirect_uri")
    # OAuth 2.1 §4.1.1 and OIDC Core §3.1.2.1 make redirect_uri REQUIRED: we never guess.
    if not redirect_uri:
        raise AuthorizationPageError(InvalidRequest("redirect_uri is required"))
    if match_redirect_uri(client.redirect_uris, redirect_uri) is None:
        raise AuthorizationPageError(InvalidRequest("redirect_uri is not registered for this client"))
    state = params.get("state")
    if state is not None and len(state) > _MAX_STATE:
        state = None  # too long to echo back; the error below says why
    return RedirectTarget(client_id=client_id, redirect_uri=redirect_uri, state=state)


def validate_authorization_request(
    params: Mapping[str, str], repeated: frozenset[str], client: Client, target: RedirectTarget
) -> AuthorizationRequest:
    """Phase two: every other rule; errors here are redirected to ``target``.

    Raises:
        OAuthError: ``invalid_request``, ``unsupported_response_type``, ``unauthorized_client``,
            ``invalid_scope``, ``request_not_supported`` or ``request_uri_not_supported``.
    """
    if repeated:
        raise InvalidRequest(f"{sorted(repeated)[0]} was sent more than once")
    state = params.get("state")
    if state is not None and len(state) > _MAX_STATE:
        raise InvalidRequest("state is too long")
    response_type = params.get("response_type")
    if not response_type:
        raise InvalidRequest("response_type is required")
    if response_type not in RESPONSE_TYPES:
        # OAuth 2.1 removes the implicit grant; hybrid flows (OIDC Core §3.3) are not offered.
        raise UnsupportedResponseType("only response_type=code is supported")
    response_mode = params.get("response_mode")
    if response_mode is not None and response_mode not in RESPONSE_MODES:
        raise InvalidRequest("only response_mode=query is supported")
    if "request" in params:
        raise RequestNotSupported("request objects are not supported")
    if "request_uri" in params:
        raise RequestUriNotSupported("request_uri is not supported")
    if "authorization_code" not in client.grant_types:
        raise UnauthorizedClient("this client may not use the authorization code grant")
    code_challenge = validate_code_challenge(
        params.get("code_challenge"), params.get("code_challenge_method")
    )
    scope = tuple(parse_scope(params.get("scope")))
    if not scope:
        raise InvalidScope("scope is required")
    unknown = [token for token in scope if token not in client.scopes]
    if unknown:
        raise InvalidScope(f"scope not allowed for this client: {unknown[0]}")
    nonce = params.get("nonce")
    if nonce is not None and len(nonce) > _MAX_NONCE:
        raise InvalidRequest("nonce is too long")
    prompt = frozenset(params.get("prompt", "").split())
    # OIDC Core §3.1.2.1: "If this parameter contains none with any other value, an error is
    # returned." Unknown values are ignored.
    if "none" in prompt and len(prompt & PROMPT_VALUES) > 1:
        raise InvalidRequest("prompt=none cannot be combined with other values")
    max_age = _max_age(params.get("max_age"))
    return AuthorizationRequest(
        client_id=client.client_id,
        redirect_uri=target.redirect_uri,
        scope=scope,
        code_challenge=code_challenge,
        state=state,
        nonce=nonce,
        prompt=prompt & PROMPT_VALUES,
        max_age=max_age,
        login_hint=params.get("login_hint"),
    )


def _max_age(value: str | None) -> int | None:
    if value is None:
        return None
    # OIDC Core §3.1.2.1: "Maximum Authentication Age. Specifies the allowable elapsed time in
    # seconds": a non-negative integer.
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise InvalidRequest("max_age must be a non-negative integer")
    return int(value)


def grant_scope(
    requested: Iterable[str], client_scopes: frozenset[str], user_scopes: frozenset[str]
) -> tuple[str, ...]:
    """The scope to grant: requested ∩ client's allowed ∩ the user's roles' scopes.

    Identity scopes (:data:`IDENTITY_SCOPES`) need no role: they are about the user, not a
    permission. The request's order is kept.
    """
    return tuple(
        token
        for token in requested
        if token in client_scopes and (token in IDENTITY_SCOPES or token in user_scopes)
    )


def required_interaction(
    request: AuthorizationRequest,
    *,
    auth_time: float | None,
    signed_in_for_request: bool,
    consent_covers: bool,
    consented_for_request: bool,
    first_party: bool,
    now: float,
    user_id: str | None = None,
) -> Interaction:
    """What must happen before a code is issued.

    Args:
        request: the validated request.
        auth_time: when the current session's user authenticated; ``None`` without a session.
        signed_in_for_request: the user authenticated during this very request (after a
            ``prompt=login`` or an expired ``max_age``).
        consent_covers: a remembered consent covers the scope to grant.
        consented_for_request: the user consented during this very request.
        first_party: the client is first-party (no consent screen).
        now: the current time.
        user_id: the signed-in user, compared with the request's ``hint_subject``.

    Raises:
        LoginRequired: ``prompt=none`` and the user must sign in (OIDC Core §3.1.2.6).
        ConsentRequired: ``prompt=none`` and the user must consent.
    """
    if signed_in_for_request:
        need_login = False
    else:
        # OIDC Core §3.1.2.1 prompt=login: "The Authorization Server SHOULD prompt the End-User
        # for reauthentication." max_age: "If the elapsed time is greater than this value, the
        # OP MUST attempt to actively re-authenticate the End-User ... Note that max_age=0 is
        # equivalent to prompt=login" (even within the second the user signed in).
        need_login = (
            auth_time is None
            or "login" in request.prompt
            or request.max_age == 0
            or (request.max_age is not None and now - auth_time > request.max_age)
            # id_token_hint: "If the End-User identified by the ID Token is logged in or is
            # logged in by the request, then the Authorization Server returns a positive
            # response; otherwise, it SHOULD return an error, such as login_required."
            or (request.hint_subject is not None and request.hint_subject != user_id)
        )
    if need_login:
        if "none" in request.prompt:
            raise LoginRequired("the user is not signed in")
        return Interaction.LOGIN
    if consented_for_request:
        return Interaction.NONE
    # prompt=consent: "The Authorization Server SHOULD prompt the End-User for consent before
    # returning information to the Client", first-party or not.
    if "consent" in request.prompt or (not first_party and not consent_covers):
        if "none" in request.prompt:
            raise ConsentRequired("the user has not consented to this client and scope")
        return Interaction.CONSENT
    return Interaction.NONE


def response_uri(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """``redirect_uri`` with ``params`` added to its query.

    RFC 6749 §3.1.2: the redirection URI "MAY include an "application/x-www-form-urlencoded"
    formatted query component, which MUST be retained when adding additional query parameters."
    """
    query = urlencode({name: value for name, value in params.items() if value is not None})
    if not query:
        return redirect_uri  # nothing to add: the registered URI exactly, without a bare "?"
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return f"{redirect_uri}{separator}{query}"


def code_response_uri(target: RedirectTarget, code: str, issuer: str) -> str:
    """The successful authorization response (RFC 6749 §4.1.2) with ``iss`` (RFC 9207 §2)."""
    return response_uri(target.redirect_uri, {"code": code, "state": target.state, "iss": issuer})


def error_response_uri(target: RedirectTarget, error: OAuthError, issuer: str) -> str:
    """The error response (RFC 6749 §4.1.2.1) with ``iss`` (RFC 9207 §2: "the authorization
    server MUST ... add the iss parameter" to error responses too)."""
    params: dict[str, str | None] = {"error": error.error}
    if error.description:
        params["error_description"] = error.description
    params["state"] = target.state
    params["iss"] = issuer
    return response_uri(target.redirect_uri, params)

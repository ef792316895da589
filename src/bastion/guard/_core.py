"""What every framework adapter shares: reading the bearer token, validating it, rendering refusals.

A service re-validates the token itself (zero trust): the gateway's identity headers
(``X-Bastion-Subject``, ``X-Bastion-Client``, ``X-Bastion-Scopes``) are never read as identity.
When ``X-Bastion-Subject`` is present it must agree with the token, or the request is refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final
from typing import Protocol

import orjson

from bastion.guard.policy import Refused
from bastion.tokens import Principal
from bastion.tokens import TokenError
from bastion.tokens import bearer_challenge

logger = logging.getLogger("bastion.guard")

#: RFC 6750 §2.1: ``b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="``.
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
PROBLEM_JSON: Final = "application/problem+json"
#: The header the gateway sets from the token it validated; read only to compare.
SUBJECT_HEADER: Final = "x-bastion-subject"


class TokenChecker(Protocol):
    """A :class:`~bastion.tokens.TokenValidator` (JWT) or an
    :class:`~bastion.tokens.Introspector` (opaque tokens): anything with a sync ``cached``."""

    def cached(self, token: str, audience: str | None = None) -> Principal | None:
        """The principal of a token verified earlier, else ``None``."""
        ...


class InvalidRequest(TokenError):
    """The request is malformed: a broken ``Bearer`` credential, two ``Authorization`` headers,
    or identity headers that contradict the token (RFC 6750 §3.1 ``invalid_request``, 400)."""

    error = "invalid_request"
    status_code = 400
    default_reason = "invalid_request"
    description = "The request is malformed"


class MissingToken(TokenError):
    """No bearer token at all: RFC 6750 §3.1 says the challenge SHOULD NOT carry an error code."""

    error = None
    status_code = 401
    default_reason = "missing_token"
    description = "An access token is required"

    def challenge(self, realm: str | None = None) -> str:
        """A bare challenge: ``Bearer`` or ``Bearer realm="…"`` (RFC 6750 §3)."""
        return bearer_challenge(realm)


def bearer_token(authorization: Iterable[str]) -> str:
    """The token of the request's ``Authorization`` header values (RFC 6750 §2.1).

    Args:
        authorization: Every ``Authorization`` header value of the request.

    Returns:
        The b64token after ``Bearer``.

    Raises:
        MissingToken: no ``Authorization`` header, or one of another scheme.
        InvalidRequest: more than one header, or a ``Bearer`` value that is not a b64token.
    """
    values = list(authorization)
    if not values:
        raise MissingToken()
    if len(values) > 1:
        raise InvalidRequest("more than one Authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("another authentication scheme")
    token = token.strip()
    if not _B64TOKEN.fullmatch(token):
        raise InvalidRequest("the Bearer credential is not a b64token")
    return token


async def check_token(checker: TokenChecker, token: str) -> Principal:
    """Validate ``token`` with a ``TokenValidator`` (``validate``) or ``Introspector``
    (``introspect``), trying the synchronous cache first."""
    principal = checker.cached(token)
    if principal is not None:
        return principal
    validate = getattr(checker, "validate", None) or checker.introspect  # type: ignore[attr-defined]
    result: Principal = await validate(token)
    return result


def check_identity_headers(principal: Principal, subjects: Collection[str]) -> None:
    """Refuse identity headers that disagree with the token's ``sub``.

    Raises:
        InvalidRequest: an ``X-Bastion-Subject`` header names someone else.
    """
    if subjects and any(subject != (principal.subject or "") for subject in subjects):
        raise InvalidRequest("X-Bastion-Subject disagrees with the access token")


def problem(status: int, detail: str) -> bytes:
    """An RFC 9457 problem-details body (``type`` ``about:blank``, ``title`` the status phrase)."""
    return orjson.dumps(
        {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    )


def refusal(error: TokenError | Refused, realm: str | None) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body answering a refused request.

    Token errors carry the RFC 6750 ``WWW-Authenticate`` challenge; object-level refusals
    (:class:`~bastion.guard.Refused`) are a bare 403 or 404, the token itself being fine.
    """
    headers = {"content-type": PROBLEM_JSON, "cache-control": "no-store"}
    if isinstance(error, TokenError):
        headers["www-authenticate"] = error.challenge(realm)
        if error.status_code >= 500:
            headers["retry-after"] = "1"
        log_token_refusal(error)
        return error.status_code, headers, problem(error.status_code, error.description)
    return error.status_code, headers, problem(error.status_code, error.description)


def log_token_refusal(error: TokenError) -> None:
    """Log why a token was refused: the reason label and the operator detail, never the token."""
    logger.info(
        "guard refused a token: %s",
        error.reason,
        extra={"event": "guard.token_refused", "reason": error.reason, "status": error.status_code},
    )

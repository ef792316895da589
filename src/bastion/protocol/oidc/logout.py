"""OpenID Connect RP-Initiated Logout 1.0.

https://openid.net/specs/openid-connect-rpinitiated-1_0.html

The relying party sends the user to ``end_session_endpoint`` with ``id_token_hint`` and/or
``client_id``, optionally ``post_logout_redirect_uri`` and ``state``. The redirect happens only to
a URI registered for the identified client; otherwise the user sees a "signed out" page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.protocol.errors import InvalidRequest
from bastion.protocol.jose import JOSEError
from bastion.protocol.jose import PublicKey
from bastion.protocol.jose import key_fits_alg
from bastion.protocol.jose import parse_compact
from bastion.protocol.jose import verify
from bastion.protocol.models import Client
from bastion.protocol.rfc6749.authorize import response_uri


@dataclass(frozen=True, slots=True)
class EndSessionRequest:
    """The parameters of a logout request (RP-Initiated Logout §2)."""

    id_token_hint: str | None
    client_id: str | None
    post_logout_redirect_uri: str | None
    state: str | None


def parse_end_session(params: Mapping[str, str]) -> EndSessionRequest:
    """Read a logout request's parameters (query or form)."""
    return EndSessionRequest(
        id_token_hint=params.get("id_token_hint") or None,
        client_id=params.get("client_id") or None,
        post_logout_redirect_uri=params.get("post_logout_redirect_uri") or None,
        state=params.get("state") or None,
    )


def verify_id_token_hint(
    token: str, *, issuer: str, keys: Mapping[str, PublicKey], algorithms: tuple[str, ...]
) -> dict[str, Any]:
    """The claims of an ID token this issuer signed, expired or not.

    RP-Initiated Logout §2: "The OP need not be listed as an audience of the ID Token when it is
    used as an id_token_hint value", and an expired ID token is still a valid hint
    (§4: "the OP SHOULD accept ID Tokens as id_token_hint values ... when its exp time has
    passed"). Signature and issuer are checked.

    Raises:
        InvalidRequest: not a well-formed ID token signed by one of ``keys`` for ``issuer``.
    """
    try:
        jws = parse_compact(token)
    except JOSEError as exc:
        raise InvalidRequest("id_token_hint is malformed") from exc
    alg = jws.header["alg"]
    # RFC 8725 §3.11: explicit typing keeps one kind of JWT from passing for another. An RFC 9068
    # access token (typ "at+jwt") signed with the same algorithm is not an ID token.
    typ = str(jws.header.get("typ", "JWT")).lower()
    if typ not in ("jwt", "application/jwt"):
        raise InvalidRequest("id_token_hint is not an ID token")
    key = keys.get(jws.header.get("kid", ""))
    if alg not in algorithms or key is None or not key_fits_alg(key, alg):
        raise InvalidRequest("id_token_hint was not signed by this issuer")
    if not verify(alg, key, jws.signing_input, jws.signature):
        raise InvalidRequest("id_token_hint was not signed by this issuer")
    try:
        claims = orjson.loads(jws.payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("id_token_hint is malformed") from exc
    if not isinstance(claims, dict) or claims.get("iss") != issuer or not isinstance(claims.get("aud"), str):
        raise InvalidRequest("id_token_hint was not issued by this issuer")
    return claims


def logout_redirect(
    request: EndSessionRequest, client: Client | None, hint_client_id: str | None
) -> str | None:
    """Where to send the user after logout, or ``None`` to show the "signed out" page.

    Args:
        request: the parsed logout request.
        client: the client identified by ``client_id`` or the hint's ``aud``, if any.
        hint_client_id: the ``aud`` of a verified ``id_token_hint``, if one was sent.

    Raises:
        InvalidRequest: ``client_id`` and the hint disagree (§2: "the OP MUST verify that the
            Client Identifier matches the one used when issuing the ID Token"), or a redirect
            was asked for a URI not registered for the client (§2: the URI "MUST have been
            previously registered with the OP").
    """
    if request.client_id and hint_client_id and request.client_id != hint_client_id:
        raise InvalidRequest("client_id does not match the id_token_hint")
    if request.post_logout_redirect_uri is None:
        return None
    if client is None or client.disabled:
        raise InvalidRequest("post_logout_redirect_uri needs client_id or id_token_hint")
    if request.post_logout_redirect_uri not in client.post_logout_redirect_uris:
        raise InvalidRequest("post_logout_redirect_uri is not registered for this client")
    return response_uri(request.post_logout_redirect_uri, {"state": request.state})

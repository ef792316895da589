"""The BFF's calls to the authorization server, over HTTP with one shared aiohttp session.

The BFF is a confidential client (RFC 6749 §2.1) and authenticates with ``client_secret_basic``
(§2.3.1). Every call has the session's explicit timeouts and follows no redirects; a failure
becomes :class:`UpstreamError` (the server is unreachable or answered garbage) or
:class:`GrantRefused` (it answered an RFC 6749 §5.2 error, e.g. ``invalid_grant``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

_MAX_BYTES = 256 * 1024


class UpstreamError(Exception):
    """The authorization server could not be reached or answered something unusable."""


class GrantRefused(Exception):
    """The token endpoint refused the grant (RFC 6749 §5.2); ``error`` is its code."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class TokenResponse:
    """A successful token response (RFC 6749 §5.1)."""

    access_token: str
    refresh_token: str | None
    expires_in: float
    id_token: str | None


def basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, joined by ``:``, base64-encoded."""
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def id_token_claims(id_token: str, *, issuer: str, client_id: str, nonce: str, now: float) -> dict[str, Any]:
    """The claims of an ID token received straight from the token endpoint.

    OpenID Connect Core §3.1.3.7: "If the ID Token is received via direct communication between
    the Client and the Token Endpoint ..., the TLS server validation MAY be used to validate the
    issuer in place of checking the token signature." The claims are still checked: ``iss``
    exactly, ``aud`` contains the client, ``exp`` in the future, and ``nonce`` equal to the one
    bound to this browser's pre-login cookie (§3.1.3.7 item 11), compared in constant time.

    Raises:
        UpstreamError: any check fails.
    """
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error) as exc:
        raise UpstreamError("the ID token is malformed") from exc
    if not isinstance(claims, dict):
        raise UpstreamError("the ID token is malformed")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if claims.get("iss") != issuer or client_id not in audiences:
        raise UpstreamError("the ID token is not from the issuer for this client")
    if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= now:
        raise UpstreamError("the ID token has expired")
    if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise UpstreamError("the ID token's nonce does not match this sign-in")
    return {k: v for k, v in claims.items() if k not in ("nonce", "at_hash", "c_hash")}


class AuthorizationServer:
    """The BFF's view of the authorization server: metadata, token, revocation."""

    def __init__(self, http: aiohttp.ClientSession, issuer: str, client_id: str, client_secret: str) -> None:
        self._http = http
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._auth = basic_auth(client_id, client_secret)
        self._metadata: dict[str, Any] | None = None

    async def _json(
        self, method: str, url: str, *, data: Mapping[str, str] | None = None, bearer: str | None = None
    ) -> tuple[int, Any]:
        headers = {"accept": "application/json"}
        if bearer is not None:
            headers["authorization"] = f"Bearer {bearer}"
        elif data is not None:
            headers["authorization"] = self._auth
        try:
            async with self._http.request(
                method, url, data=data, headers=headers, allow_redirects=False
            ) as response:
                body = await response.content.read(_MAX_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"{url}: {type(exc).__name__}") from exc
        if len(body) > _MAX_BYTES:
            raise UpstreamError(f"{url}: response too large")
        try:
            return status, json.loads(body) if body else None
        except ValueError as exc:
            raise UpstreamError(f"{url}: not JSON (status {status})") from exc

    async def metadata(self) -> dict[str, Any]:
        """OpenID Connect Discovery 1.0 metadata, fetched once."""
        if self._metadata is None:
            status, document = await self._json("GET", f"{self.issuer}/.well-known/openid-configuration")
            if status != 200 or not isinstance(document, dict) or document.get("issuer") != self.issuer:
                raise UpstreamError("the issuer's metadata is missing or names another issuer")
            self._metadata = document
        return self._metadata

    async def endpoint(self, name: str) -> str:
        """A metadata endpoint URL (``authorization_endpoint``, ``token_endpoint`` ...)."""
        value = (await self.metadata()).get(name)
        if not isinstance(value, str):
            raise UpstreamError(f"the issuer's metadata has no {name}")
        return value

    async def token(self, form: Mapping[str, str]) -> TokenResponse:
        """Call the token endpoint.

        Raises:
            GrantRefused: an RFC 6749 §5.2 error.
            UpstreamError: anything else went wrong.
        """
        status, body = await self._json("POST", await self.endpoint("token_endpoint"), data=form)
        if status == 400 and isinstance(body, dict) and isinstance(body.get("error"), str):
            raise GrantRefused(body["error"])
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise UpstreamError(f"token endpoint answered {status}")
        expires_in = body.get("expires_in")
        return TokenResponse(
            access_token=body["access_token"],
            refresh_token=body.get("refresh_token") if isinstance(body.get("refresh_token"), str) else None,
            expires_in=float(expires_in) if isinstance(expires_in, int | float) else 60.0,
            id_token=body.get("id_token") if isinstance(body.get("id_token"), str) else None,
        )

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """OpenID Connect Core §5.3: the user's claims (profile, email ...) for this client."""
        status, body = await self._json("GET", await self.endpoint("userinfo_endpoint"), bearer=access_token)
        if status != 200 or not isinstance(body, dict):
            raise UpstreamError(f"userinfo endpoint answered {status}")
        return body

    async def revoke(self, token: str, hint: str) -> None:
        """RFC 7009 §2.1: revoke ``token`` (the server answers 200 even for an unknown token)."""
        status, _ = await self._json(
            "POST", await self.endpoint("revocation_endpoint"), data={"token": token, "token_type_hint": hint}
        )
        if status != 200:
            raise UpstreamError(f"revocation endpoint answered {status}")

"""Client authentication at the token, introspection and revocation endpoints (RFC 6749 §2.3).

Supported: ``client_secret_basic`` (§2.3.1, HTTP Basic with form-urlencoded id and secret),
``client_secret_post`` (§2.3.1 body parameters), and ``none`` for public clients (§2.1), which
identify themselves with ``client_id`` only.

§2.3: "The client MUST NOT use more than one authentication method in each request."
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote_plus

from bastion.protocol.errors import InvalidClient
from bastion.protocol.errors import InvalidRequest


class AuthMethod(StrEnum):
    """How the client presented itself."""

    BASIC = "client_secret_basic"
    POST = "client_secret_post"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What the request claims; not yet checked against the client record."""

    client_id: str
    secret: str | None
    method: AuthMethod


def parse_basic(header: str) -> tuple[str, str]:
    """Decode ``Basic base64(urlencode(id) ":" urlencode(secret))`` (RFC 6749 §2.3.1).

    Raises:
        InvalidClient: the header is not well-formed Basic credentials.
    """
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        raise InvalidClient("unsupported authentication scheme", used_basic=True)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidClient("malformed Basic credentials", used_basic=True) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        raise InvalidClient("malformed Basic credentials", used_basic=True)
    return _form_decode(client_id), _form_decode(secret)


def _form_decode(value: str) -> str:
    # Most ids and secrets are plain URL-safe text: skip the decoder when nothing is encoded.
    return unquote_plus(value) if "%" in value or "+" in value else value


def extract_credentials(params: Mapping[str, str], authorization: str | None) -> ClientCredentials:
    """Work out which client the request names and how it authenticates.

    Raises:
        InvalidRequest: more than one method, or a ``client_id`` that contradicts the header.
        InvalidClient: no client identification at all, or a malformed header.
    """
    if authorization and authorization.strip().lower().startswith("basic"):
        client_id, secret = parse_basic(authorization)
        if "client_secret" in params:
            raise InvalidRequest("use exactly one client authentication method")
        if "client_id" in params and params["client_id"] != client_id:
            raise InvalidRequest("client_id does not match the authenticated client")
        return ClientCredentials(client_id, secret, AuthMethod.BASIC)
    if "client_secret" in params:
        if "client_id" not in params:
            raise InvalidRequest("client_secret requires client_id")
        return ClientCredentials(params["client_id"], params["client_secret"], AuthMethod.POST)
    if "client_id" in params:
        return ClientCredentials(params["client_id"], None, AuthMethod.NONE)
    raise InvalidClient("client authentication is required", used_basic=authorization is not None)

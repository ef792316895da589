"""Client credentials grant (RFC 6749 §4.4), with resource indicators (RFC 8707).

§4.4: "The client credentials grant type MUST only be used by confidential clients."
§4.4.3: "A refresh token SHOULD NOT be included."
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bastion.protocol.errors import InvalidTarget
from bastion.protocol.errors import UnauthorizedClient
from bastion.protocol.models import Client
from bastion.protocol.models import GrantType
from bastion.protocol.rfc6749.scope import narrow


@dataclass(frozen=True, slots=True)
class ClientCredentialsDecision:
    """What to issue: the scopes granted and the audience of the token."""

    scopes: list[str]
    audience: tuple[str, ...]


def resolve_audience(client: Client, resource: str | None, issuer: str) -> tuple[str, ...]:
    """The token audience: the ``resource`` asked for (RFC 8707 §2), which must be the client's
    registered audience, else that audience, else the issuer itself.

    Raises:
        InvalidTarget: a resource that is not absolute, has a fragment, or is not the client's.
    """
    default = client.audience or issuer
    if resource is None:
        return (default,)
    # RFC 8707 §2: "MUST be an absolute URI ... MUST NOT include a fragment component."
    if "#" in resource or "://" not in resource:
        raise InvalidTarget("resource must be an absolute URI without a fragment")
    if resource != default:
        raise InvalidTarget("this client may not request tokens for that resource")
    return (resource,)


def decide(client: Client, params: Mapping[str, str], issuer: str) -> ClientCredentialsDecision:
    """Validate a client_credentials request of an authenticated client.

    Raises:
        UnauthorizedClient: the client is public or not allowed this grant.
        InvalidScope: a requested scope exceeds the client's.
        InvalidTarget: see :func:`resolve_audience`.
    """
    if client.public or GrantType.CLIENT_CREDENTIALS not in client.grant_types:
        raise UnauthorizedClient("this client may not use the client_credentials grant")
    scopes = narrow(params.get("scope"), client.scopes)
    return ClientCredentialsDecision(
        scopes=scopes, audience=resolve_audience(client, params.get("resource"), issuer)
    )

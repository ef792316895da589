"""OpenID Connect Discovery 1.0 §3 and the authorization-endpoint part of RFC 8414 §2.

https://openid.net/specs/openid-connect-discovery-1_0.html#ProviderMetadata

Only what is implemented is advertised. :func:`authorization_metadata` holds the fields the
people-facing endpoints add to the RFC 8414 document; :func:`openid_configuration` builds the
OIDC document on top of the RFC 8414 one, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from bastion.protocol.oidc.userinfo import CLAIMS_SUPPORTED
from bastion.protocol.rfc6749.authorize import IDENTITY_SCOPES
from bastion.protocol.rfc6749.authorize import RESPONSE_MODES
from bastion.protocol.rfc6749.authorize import RESPONSE_TYPES
from bastion.protocol.rfc7636 import CODE_CHALLENGE_METHODS


def authorization_metadata(issuer: str) -> dict[str, Any]:
    """The RFC 8414 §2 fields for the authorization endpoint and the grants it starts."""
    return {
        "authorization_endpoint": f"{issuer}/authorize",
        "response_types_supported": list(RESPONSE_TYPES),
        "response_modes_supported": list(RESPONSE_MODES),
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": list(CODE_CHALLENGE_METHODS),
        # RFC 9207 §3: "authorization_response_iss_parameter_supported".
        "authorization_response_iss_parameter_supported": True,
    }


def openid_configuration(
    issuer: str,
    oauth_metadata: Mapping[str, Any],
    *,
    id_token_algorithms: Iterable[str],
    scopes: Iterable[str] = (),
) -> dict[str, Any]:
    """The ``/.well-known/openid-configuration`` document.

    Args:
        issuer: the issuer identifier; Discovery §3 requires it to equal ``iss`` in ID tokens.
        oauth_metadata: the RFC 8414 document (its fields are kept; lists are merged).
        id_token_algorithms: ``id_token_signing_alg_values_supported`` (Discovery §3: "The
            algorithm RS256 MUST be included").
        scopes: further scopes to advertise beside the OIDC ones.
    """
    document: dict[str, Any] = dict(oauth_metadata)
    document["issuer"] = issuer
    for name, value in authorization_metadata(issuer).items():
        existing = document.get(name)
        if isinstance(value, list) and isinstance(existing, list):
            document[name] = list(dict.fromkeys([*existing, *value]))
        else:
            document[name] = value
    advertised = list(
        dict.fromkeys([*document.get("scopes_supported", []), *sorted(IDENTITY_SCOPES), *scopes])
    )
    document.update(
        {
            "scopes_supported": advertised,
            "userinfo_endpoint": f"{issuer}/userinfo",
            "end_session_endpoint": f"{issuer}/logout",
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": list(dict.fromkeys(id_token_algorithms)),
            "claims_supported": list(CLAIMS_SUPPORTED),
            "prompt_values_supported": ["none", "login", "consent"],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
        }
    )
    return document

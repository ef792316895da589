"""OAuth 2.0 Authorization Server Metadata (RFC 8414), https://www.rfc-editor.org/rfc/rfc8414.

§3.3: "The issuer value returned MUST be identical to the authorization server's issuer
identifier value into which the well-known URI string was inserted." Only what is implemented
is advertised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def metadata(
    issuer: str,
    *,
    signing_algorithms: Iterable[str] = (),
    scopes: Iterable[str] = (),
    grant_types: Iterable[str] = ("client_credentials", "authorization_code", "refresh_token"),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata document for ``issuer``; ``extra`` adds the OIDC and interactive parts."""
    document: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks.json",
        "introspection_endpoint": f"{issuer}/introspect",
        "revocation_endpoint": f"{issuer}/revoke",
        "grant_types_supported": list(grant_types),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }
    scope_list = sorted(set(scopes))
    if scope_list:
        document["scopes_supported"] = scope_list
    document.update(extra or {})
    return document

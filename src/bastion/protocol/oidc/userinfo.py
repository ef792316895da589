"""OpenID Connect Core 1.0 §5.3 UserInfo and §5.4 scope-to-claims mapping.

https://openid.net/specs/openid-connect-core-1_0.html#UserInfo
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from typing import Final

from bastion.protocol.errors import InsufficientScope
from bastion.protocol.models import User

#: Claims each scope releases (OIDC Core §5.4), restricted to what Bastion stores.
SCOPE_CLAIMS: Final = {
    "profile": ("name", "preferred_username", "updated_at"),
    "email": ("email",),
}

#: Every claim the discovery document lists as ``claims_supported``.
CLAIMS_SUPPORTED: Final = (
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "at_hash",
    "sid",
    "name",
    "preferred_username",
    "updated_at",
    "email",
)


def userinfo_claims(user: User, scope: Iterable[str]) -> dict[str, Any]:
    """The UserInfo response for ``user`` given an access token's ``scope``.

    OIDC Core §5.3.2: "The sub (subject) Claim MUST always be returned in the UserInfo Response."
    Claims without a value are omitted (§5.3.2: "If a Claim is not returned, that Claim Name
    SHOULD be omitted from the JSON object").

    Raises:
        InsufficientScope: the token was not granted ``openid`` (§5.3: the UserInfo Endpoint
            returns claims for an access token obtained through an OpenID Connect request).
    """
    granted = set(scope)
    if "openid" not in granted:
        raise InsufficientScope("the access token lacks the openid scope")
    claims: dict[str, Any] = {"sub": user.user_id}
    values: dict[str, Any] = {
        "name": user.name,
        "preferred_username": user.username,
        "updated_at": int(user.updated_at) if user.updated_at else None,
        "email": user.email,
    }
    for token, names in SCOPE_CLAIMS.items():
        if token in granted:
            claims.update({name: values[name] for name in names if values[name] is not None})
    return claims

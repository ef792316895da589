"""OpenID Connect Core 1.0: the ID token (§2, §3.1.3.6).

https://openid.net/specs/openid-connect-core-1_0.html
"""

from __future__ import annotations

import hashlib
from typing import Any
from typing import Final

from bastion.protocol.jose import b64url_encode

#: Hash used for ``at_hash``/``c_hash`` per signing algorithm. OIDC Core §3.1.3.6: "the hash
#: algorithm used is the hash algorithm used in the alg Header Parameter of the ID Token's JOSE
#: Header". EdDSA with Ed25519 uses SHA-512 (as EdDSA itself hashes with SHA-512).
_HASHES: Final = {
    "RS256": hashlib.sha256,
    "PS256": hashlib.sha256,
    "ES256": hashlib.sha256,
    "ES384": hashlib.sha384,
    "EdDSA": hashlib.sha512,
}


def left_half_hash(value: str, alg: str) -> str:
    """``at_hash`` of ``value``: "the base64url encoding of the left-most half of the hash of the
    octets of the ASCII representation of the access_token value" (OIDC Core §3.1.3.6).

    Raises:
        KeyError: ``alg`` is not one Bastion signs with.
    """
    digest = _HASHES[alg](value.encode("ascii")).digest()
    return b64url_encode(digest[: len(digest) // 2])


def id_token_claims(
    *,
    issuer: str,
    subject: str,
    client_id: str,
    issued_at: int,
    ttl: int,
    auth_time: float,
    sid: str,
    alg: str,
    nonce: str | None = None,
    access_token: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The claims of an ID token (OIDC Core §2).

    ``aud`` is the client id alone, so ``azp`` is not needed (§2: "azp ... MAY be included even
    when the authorized party is the same as the sole audience").

    Args:
        issuer: ``iss``.
        subject: ``sub``, the user's stable id.
        client_id: ``aud``.
        issued_at: ``iat``.
        ttl: seconds until ``exp``.
        auth_time: when the user authenticated (§2: REQUIRED when ``max_age`` was requested;
            always sent here).
        sid: the login session id (OIDC Front-Channel Logout §3, also used by RP-initiated logout).
        alg: the signing algorithm, for ``at_hash``.
        nonce: echoed unchanged when the authorization request carried one (§3.1.3.6: "If a
            nonce value was sent in the Authentication Request, a nonce Claim MUST be present").
        access_token: the access token issued with it, for ``at_hash``.
        extra: further claims.
    """
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": client_id,
        "exp": issued_at + ttl,
        "iat": issued_at,
        "auth_time": int(auth_time),
        "sid": sid,
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if access_token is not None:
        claims["at_hash"] = left_half_hash(access_token, alg)
    if extra:
        claims.update({name: value for name, value in extra.items() if name not in claims})
    return claims

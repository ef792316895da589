"""Signing keys and pools of distinct RFC 9068 access tokens for the gateway suite.

For each algorithm: a fresh key, its public key as PEM (for HAProxy's ``jwt_verify``), a JWKS
with every public key (served as a static file for Bastion's gateway) and ``count`` distinct
tokens, one a line (read by ``lua/bearer_pool.lua``).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from bastion.protocol import jose

ISSUER = "https://issuer.bench.example"
AUDIENCE = "https://api.bench.example"
SCOPE = "read"


@dataclass(frozen=True, slots=True)
class TokenPool:
    """The files of one algorithm's pool."""

    alg: str
    kid: str
    tokens_file: Path
    public_pem: Path
    count: int
    #: Tokens every verifier must refuse, by reason (expired, wrong ``aud`` …).
    rejects: dict[str, str]


def make_pools(
    directory: Path, algs: tuple[str, ...] = ("RS256", "ES256"), count: int = 1000, lifetime: int = 3600
) -> tuple[dict[str, TokenPool], Path]:
    """Create keys and ``count`` tokens per algorithm under ``directory``.

    Tokens follow RFC 9068 §2: header ``typ: at+jwt`` with the key's ``kid``; claims ``iss``,
    ``aud``, ``sub``, ``client_id``, ``scope``, ``iat``, ``exp`` (``lifetime`` seconds ahead) and a
    unique ``jti``.

    Returns:
        The pools by algorithm and the path of the JWKS file holding all public keys.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pools: dict[str, TokenPool] = {}
    jwks: list[dict[str, str]] = []
    now = int(time.time())
    for alg in algs:
        key = jose.generate_private_key(alg)
        public = jose.public_jwk(key)
        kid = jose.thumbprint(public)
        jwks.append({**public, "kid": kid, "alg": alg, "use": "sig"})
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pem_path = directory / f"{alg.lower()}-public.pem"
        pem_path.write_bytes(pem)
        header = {"typ": "at+jwt", "kid": kid}

        def claims(i: int, **override: object) -> dict[str, object]:
            return {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": f"user-{i}",
                "client_id": f"client-{i % 10}",
                "scope": SCOPE,
                "iat": now,
                "exp": now + lifetime,
                "jti": secrets.token_urlsafe(16),
                **override,
            }

        lines = [jose.encode_jwt(alg, key, header, claims(i)) for i in range(count)]
        tokens_path = directory / f"{alg.lower()}-tokens.txt"
        tokens_path.write_text("\n".join(lines) + "\n")
        valid = lines[0]
        flipped = "A" if valid[-2] != "A" else "B"
        rejects = {
            "bad signature": valid[:-2] + flipped + valid[-1],
            "expired": jose.encode_jwt(alg, key, header, claims(0, iat=now - 7200, exp=now - 3600)),
            "wrong aud": jose.encode_jwt(alg, key, header, claims(0, aud="https://other.example")),
            "wrong iss": jose.encode_jwt(alg, key, header, claims(0, iss="https://evil.example")),
            "wrong typ": jose.encode_jwt(alg, key, {"typ": "JWT", "kid": kid}, claims(0)),
            "unknown key": jose.encode_jwt(
                alg, jose.generate_private_key(alg), {"typ": "at+jwt", "kid": kid}, claims(0)
            ),
        }
        pools[alg] = TokenPool(
            alg=alg, kid=kid, tokens_file=tokens_path, public_pem=pem_path, count=count, rejects=rejects
        )
    jwks_path = directory / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": jwks}))
    return pools, jwks_path

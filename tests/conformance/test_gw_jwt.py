"""JWT attacks, the jwt_tool way, against ``TokenValidator`` and through the gateway.

Every forged token below is refused with a :class:`TokenError` (never another exception), and
through the gateway with a 401 whose body names no internals, while the recording upstream
receives nothing. The real issuer's own tokens, in every legitimate variant, keep working.

Sources: RFC 8725 (JWT BCP: §2.1 ``alg: none``, §3.1 algorithm verification, §3.10 ``jku`` /
``x5u``, §3.11 explicit typing), RFC 9068 §4 (access-token validation), RFC 7515 §4.1.11
(``crit``), RFC 7797 (``b64``), RFC 7519 §7.2 (duplicate claim names), CVE-2015-9235 (HS256
with the RSA public key as the secret), CVE-2018-0114 (embedded ``jwk``), CVE-2022-21449
(psychic ECDSA signatures), ticarpi/jwt_tool's attack modes (``-X a/n/k/i/s/b``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bastion.protocol import jose
from bastion.tokens import KeySet
from bastion.tokens import StaticKeys
from bastion.tokens import TokenError
from bastion.tokens import TokenValidator
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import bearer
from tests.conformance.gw_attack import get
from tests.conformance.gw_attack import stack
from tests.gateway.policy.helpers import Issuer

__all__ = ["stack"]

ISS = "https://auth.example"
AUD = "https://api.example"
N_P256 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_json(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()


class Forge:
    """Builds tokens for one issuer: properly signed, or forged in the ways attackers do."""

    def __init__(self, issuer: str, key: jose.PrivateKey, kid: str, alg: str) -> None:
        self.issuer = issuer
        self.key = key
        self.kid = kid
        self.alg = alg

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": AUD,
            "sub": "alice",
            "client_id": "shop",
            "scope": "admin catalog:read",
            "iat": now,
            "exp": now + 300,
            "jti": f"j-{time.monotonic_ns()}",
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not _DROP}

    def header(self, **overrides: Any) -> dict[str, Any]:
        head = {"alg": self.alg, "typ": "at+jwt", "kid": self.kid}
        head.update(overrides)
        return {k: v for k, v in head.items() if v is not _DROP}

    def signed(
        self, header: Any = None, claims: Any = None, *, alg: str | None = None, key: Any = None
    ) -> str:
        """Signed with the issuer's key (or ``key``) over exactly the given JSON bytes."""
        signing_input = self._input(header, claims)
        signature = jose.sign(alg or self.alg, key or self.key, signing_input.encode())
        return signing_input + "." + b64(signature)

    def with_signature(self, signature: bytes, header: Any = None, claims: Any = None) -> str:
        return self._input(header, claims) + "." + b64(signature)

    def hmac(self, secret: bytes, header: Any = None, claims: Any = None) -> str:
        signing_input = self._input(header, claims)
        return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())

    def _input(self, header: Any, claims: Any) -> str:
        head = raw_json(header if header is not None else self.header())
        body = raw_json(claims if claims is not None else self.claims())
        return b64(head) + "." + b64(body)


_DROP = object()


def attacks(forge: Forge, others: dict[str, jose.PrivateKey]) -> dict[str, str]:
    """Forged or malformed tokens against ``forge``'s issuer; ``others`` are keys it also
    publishes (an RSA key ``r1``), and an attacker's key ``evil``."""
    evil = jose.generate_private_key("ES256")
    rsa = others["r1"]
    public = forge.key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    rsa_pem = rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_text = json.dumps(jose.public_jwk(forge.key)).encode()
    h = forge.header
    c = forge.claims
    good_input = forge._input(None, None)
    out: dict[str, str] = {}
    # alg none, every spelling (jwt_tool -X a)
    for spelling in ("none", "None", "NONE", "nOnE", ""):
        out[f"alg-{spelling or 'empty'}"] = forge._input(h(alg=spelling), None) + "."
        out[f"alg-{spelling or 'empty'}-with-sig"] = good_input + "." + good_input.rsplit(".", 1)[0][:10]
    out["alg-missing"] = forge.signed(h(alg=_DROP))
    out["alg-null"] = forge.signed(h(alg=None))
    out["alg-list"] = forge.signed(h(alg=["ES256"]))
    out["alg-lowercase"] = forge.signed(h(alg="es256"), alg="ES256")
    # HS256 with the public key as the secret (jwt_tool -X k), PEM and JWK, with and without newline
    for name, secret in (
        ("pem", pem),
        ("pem-stripped", pem.strip()),
        ("rsa-pem", rsa_pem),
        ("jwk", jwk_text),
        ("empty", b""),
        ("null", b"null"),
    ):
        for alg in ("HS256", "HS384", "HS512"):
            out[f"{alg}-{name}"] = forge.hmac(secret, h(alg=alg))
    # algorithm confusion between key types
    out["es256-header-rsa-kid"] = forge.signed(h(kid="r1"))
    out["rs256-header-ec-kid"] = forge.signed(h(alg="RS256"), alg="RS256", key=rsa)
    out["ps256-header-ec-kid"] = forge.signed(h(alg="PS256"), alg="PS256", key=rsa)
    out["es384-header-p256-kid"] = forge.with_signature(b"\x01" * 96, h(alg="ES384"))
    out["eddsa-header-ec-kid"] = forge.with_signature(b"\x01" * 64, h(alg="EdDSA"))
    # psychic signatures (CVE-2022-21449) and other degenerate ECDSA values
    zero = (0).to_bytes(32, "big")
    n = N_P256.to_bytes(32, "big")
    out["psychic-zero"] = forge.with_signature(zero + zero)
    out["psychic-n"] = forge.with_signature(n + n)
    out["psychic-r-zero"] = forge.with_signature(zero + (1).to_bytes(32, "big"))
    out["psychic-s-n"] = forge.with_signature((1).to_bytes(32, "big") + n)
    out["psychic-above-n"] = forge.with_signature((N_P256 + 1).to_bytes(32, "big") * 2)
    out["signature-empty"] = good_input + "."
    out["signature-der"] = forge.with_signature(encode_dss_signature(1, 1))
    out["signature-truncated"] = forge.signed()[:-8]
    out["signature-of-other-token"] = (
        forge.signed(claims=c(sub="admin")).rsplit(".", 1)[0] + "." + (forge.signed().rsplit(".", 1)[1])
    )
    # keys from the token itself (jwt_tool -X i / -X s), never trusted
    evil_jwk = jose.public_jwk(evil)
    out["embedded-jwk"] = forge.signed(h(jwk=evil_jwk, kid=_DROP), key=evil)
    out["embedded-jwk-with-kid"] = forge.signed(h(jwk={**evil_jwk, "kid": forge.kid}), key=evil)
    out["jku"] = forge.signed(h(jku="http://127.0.0.1:1/jwks.json", kid="evil"), key=evil)
    out["jku-same-kid"] = forge.signed(h(jku="http://127.0.0.1:1/jwks.json"), key=evil)
    out["x5u"] = forge.signed(h(x5u="http://127.0.0.1:1/cert.pem", kid="evil"), key=evil)
    out["x5c"] = forge.signed(h(x5c=["MIIBkTCB+wIJAKHHIG"], kid=_DROP), key=evil)
    # kid injection: path traversal, SQL, commands, absurd values
    for name, kid in (
        ("traversal", "../../../../../../dev/null"),
        ("traversal-win", "..\\..\\..\\windows\\win.ini"),
        ("sql", "x' UNION SELECT 'secret' --"),
        ("command", "key1|/usr/bin/id"),
        ("empty", ""),
        ("nul", "k1\x00"),
        ("long", "k" * 4000),
    ):
        out[f"kid-{name}"] = forge.hmac(b"", h(alg="HS256", kid=kid))
        out[f"kid-{name}-es256"] = forge.signed(h(kid=kid), key=evil)
    out["kid-number"] = forge.signed(h(kid=1))
    out["kid-list"] = forge.signed(h(kid=[forge.kid]))
    # typ (RFC 9068 §4, RFC 8725 §3.11)
    for name, typ in (
        ("JWT", "JWT"),
        ("jwt", "jwt"),
        ("id-token", "id_token+jwt"),
        ("empty", ""),
        ("number", 1),
    ):
        out[f"typ-{name}"] = forge.signed(h(typ=typ))
    out["typ-missing"] = forge.signed(h(typ=_DROP))
    # crit and b64 (RFC 7515 §4.1.11, RFC 7797)
    out["crit-exp"] = forge.signed(h(crit=["exp"], exp=1))
    out["crit-empty"] = forge.signed(h(crit=[]))
    out["crit-b64"] = forge.signed(h(crit=["b64"], b64=False))
    out["b64-false"] = forge.signed(h(b64=False))
    # duplicate names: any parser picking the first would see another identity
    head = raw_json(h())
    out["duplicate-header-alg"] = forge.signed(head[:-1] + b',"alg":"none"}')
    out["duplicate-header-kid"] = forge.signed(head[:-1] + b',"kid":"evil"}')
    body = raw_json(c(sub="admin"))
    out["duplicate-claim-sub"] = forge.signed(claims=body[:-1] + b',"sub":"alice"}')
    out["duplicate-claim-aud"] = forge.signed(
        claims=raw_json(c(aud="https://other.example"))[:-1] + b',"aud":"%s"}' % AUD.encode()
    )
    out["duplicate-claim-exp"] = forge.signed(
        claims=raw_json(c(exp=1))[:-1] + b',"exp":%d}' % (time.time() + 300)
    )
    out["duplicate-claim-iss"] = forge.signed(
        claims=raw_json(c(iss="https://evil.example"))[:-1] + b',"iss":"%s"}' % forge.issuer.encode()
    )
    # claims with the wrong type or value, signed by the real key
    for name, claims in {
        "exp-string": c(exp=str(int(time.time()) + 300)),
        "exp-null": c(exp=None),
        "exp-bool": c(exp=True),
        "exp-list": c(exp=[int(time.time()) + 300]),
        "exp-negative": c(exp=-1),
        "exp-zero": c(exp=0),
        "exp-missing": c(exp=_DROP),
        "exp-past": c(exp=int(time.time()) - 3600),
        "nbf-future": c(nbf=int(time.time()) + 3600),
        "nbf-string": c(nbf="0"),
        "iat-future": c(iat=int(time.time()) + 3600),
        "aud-nested": c(aud=[[AUD]]),
        "aud-object": c(aud={"aud": AUD}),
        "aud-empty-list": c(aud=[]),
        "aud-missing": c(aud=_DROP),
        "aud-prefix": c(aud=AUD + "/"),
        "aud-case": c(aud=AUD.upper()),
        "aud-mixed-list": c(aud=[AUD, 1]),
        "iss-trailing-slash": c(iss=forge.issuer + "/"),
        "iss-case": c(iss=forge.issuer.upper()),
        "iss-missing": c(iss=_DROP),
        "iss-list": c(iss=[forge.issuer]),
        "sub-number": c(sub=1),
        "sub-object": c(sub={"id": "admin"}),
        "scope-list": c(scope=["admin"]),
        "client-id-number": c(client_id=1),
        "jti-number": c(jti=1),
    }.items():
        out[f"claims-{name}"] = forge.signed(claims=claims)
    out["claims-array"] = forge.signed(claims=b"[]")
    out["claims-string"] = forge.signed(claims=b'"x"')
    out["claims-nested-jwt"] = forge.signed(h(cty="JWT"), claims=forge.signed().encode())
    out["claims-not-json"] = forge.signed(claims=b"{")
    out["claims-nan"] = forge.signed(claims=raw_json(c())[:-1] + b',"exp":NaN}')
    out["claims-infinity"] = forge.signed(claims=raw_json(c())[:-1] + b',"exp":1e400}')
    out["header-not-object"] = forge.signed(b"[]")
    out["header-bom"] = forge.signed(b"\xef\xbb\xbf" + raw_json(h()))
    # encodings and shapes
    good = forge.signed()
    out["jwe-compact"] = good + ".x.y"
    out["four-parts"] = good + ".x"
    out["two-parts"] = good.rsplit(".", 1)[0]
    out["leading-space"] = " " + good
    out["trailing-newline"] = good + "\n"
    out["inner-newline"] = good[:20] + "\n" + good[20:]
    out["inner-tab"] = good[:20] + "\t" + good[20:]
    out["padded"] = ".".join(part + "=" * (-len(part) % 4) for part in good.split("."))
    url_safe = next(
        token
        for token in (forge.signed(h(pad="?" * i + ">" * i)) for i in range(1, 30))
        if "-" in token.split(".")[0] and "_" in token.split(".")[0]
    )
    out["plus-slash"] = url_safe.replace("-", "+").replace("_", "/")
    out["non-canonical-base64"] = good[:-1] + chr(ord(good[-1]) + 1 if good[-1] not in "zZ9_-" else 65)
    out["unicode"] = good[:10] + "é" + good[10:]
    out["huge"] = forge.signed(h(pad="a" * 20_000))
    out["empty"] = ""
    out["dots"] = ".."
    return out


def _issuer_keys() -> tuple[Forge, KeySet, dict[str, jose.PrivateKey]]:
    ec = jose.generate_private_key("ES256")
    rsa = jose.generate_private_key("RS256")
    forge = Forge(ISS, ec, "k1", "ES256")
    return forge, KeySet.from_keys({"k1": ec, "r1": rsa}), {"r1": rsa}


FORGE, KEYS, OTHERS = _issuer_keys()
ATTACKS = attacks(FORGE, OTHERS)


@pytest.fixture
async def validator() -> AsyncIterator[TokenValidator]:
    async with TokenValidator(ISS, audience=AUD, key_source=StaticKeys(KEYS)) as built:
        yield built


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(ATTACKS))
async def test_forged_tokens_are_refused_by_the_validator(validator: TokenValidator, name: str) -> None:
    with pytest.raises(TokenError) as info:
        await validator.validate(ATTACKS[name])
    assert info.value.status_code == 401
    assert validator.cached(ATTACKS[name]) is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token",
    [
        pytest.param(FORGE.signed(), id="es256"),
        pytest.param(FORGE.signed(FORGE.header(typ="application/at+jwt")), id="typ-application"),
        pytest.param(FORGE.signed(FORGE.header(typ="AT+JWT")), id="typ-case"),
        pytest.param(FORGE.signed(claims=FORGE.claims(aud=["https://other.example", AUD])), id="aud-list"),
        pytest.param(FORGE.signed(claims=FORGE.claims(exp=time.time() + 300.5)), id="exp-float"),
        pytest.param(FORGE.signed(claims=FORGE.claims(nbf=int(time.time()) - 10)), id="nbf-past"),
        pytest.param(FORGE.signed(FORGE.header(x5t="abc", unknown="ignored")), id="unregistered-header"),
        pytest.param(FORGE.signed(FORGE.header(jku="https://evil.example/jwks")), id="jku-ignored"),
        pytest.param(
            FORGE.signed(FORGE.header(alg="RS256", kid="r1"), alg="RS256", key=OTHERS["r1"]),
            id="rs256-own-key",
        ),
        pytest.param(FORGE.signed(claims=FORGE.claims(extra={"nested": {"a": 1}})), id="nested-claim"),
    ],
)
async def test_the_issuers_own_tokens_pass(validator: TokenValidator, token: str) -> None:
    principal = await validator.validate(token)
    assert principal.subject == "alice"
    assert principal.issuer == ISS


# -- through the gateway -------------------------------------------------------------------------


@pytest.fixture
def gateway_attacks(stack: Stack) -> dict[str, str]:
    issuer = stack.issuer
    forge = Forge(issuer.issuer, issuer.key, issuer.kid, issuer.alg)
    return attacks(forge, {"r1": jose.generate_private_key("RS256")})


ATTACK_NAMES = sorted(ATTACKS)


@pytest.mark.anyio
async def test_forged_tokens_are_refused_by_the_gateway(
    stack: Stack, gateway_attacks: dict[str, str]
) -> None:
    """All of them in one test (one stack): each is 401 invalid_token and nothing reaches the
    upstream."""
    attacker = Issuer("https://evil.example")
    await attacker.start()
    try:
        client = await stack.client()
        try:
            for name, token in gateway_attacks.items():
                token = token.replace("http://127.0.0.1:1/", attacker.jwks_uri.rsplit("/", 1)[0] + "/")
                value = token.encode("utf-8")
                if b"\n" in value or b"\r" in value:
                    continue  # not expressible in a header field; the validator cases cover it
                if name == "leading-space":
                    continue  # "Bearer" 1*SP b64token (RFC 6750 §2.1): two spaces are fine
                reply = await client.request(
                    get(b"/admin/users", b"Authorization: Bearer " + value, close=False)
                )
                # RFC 6750 §3.1: a malformed, forged or otherwise invalid token is 401
                # invalid_token, whatever is wrong with it; no token at all is 401 without one.
                assert reply.status == 401, (name, reply.status)
                challenge = reply.header(b"www-authenticate") or b""
                if value.strip(b" "):
                    assert challenge.startswith(b'Bearer realm="shop", error="invalid_token"'), name
                else:
                    assert challenge == b'Bearer realm="shop"', name
                assert b"Traceback" not in reply.body
                if reply.header(b"connection") == b"close":
                    await client.aclose()
                    client = await stack.client()
        finally:
            await client.aclose()
    finally:
        await attacker.stop()
    assert stack.upstream.requests == []
    assert attacker.fetches == 0
    # The JWKS was fetched once at start-up, then never again: unknown kids are rate-limited.
    assert stack.issuer.fetches <= 2


@pytest.mark.anyio
async def test_the_real_token_still_passes_the_gateway(stack: Stack) -> None:
    reply = await stack.send(get(b"/admin/users", bearer(stack.token(scope="admin"))))
    assert reply.status == 200
    [received] = stack.upstream.requests
    assert received.header(b"x-bastion-subject") == [b"alice"]

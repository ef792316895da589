"""TokenValidator against a real issuer on 127.0.0.1: every rule, the JWKS cache, the token cache."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from bastion.protocol import jose
from bastion.tokens import RFC9068_REQUIRED_CLAIMS
from bastion.tokens import DisallowedAlgorithm
from bastion.tokens import InsufficientScope
from bastion.tokens import InvalidClaims
from bastion.tokens import InvalidSignature
from bastion.tokens import IssuerUnavailable
from bastion.tokens import KeySet
from bastion.tokens import MalformedToken
from bastion.tokens import StaticKeys
from bastion.tokens import TokenExpired
from bastion.tokens import TokenNotYetValid
from bastion.tokens import TokenRevoked
from bastion.tokens import TokenTooLarge
from bastion.tokens import TokenValidator
from bastion.tokens import UnknownKey
from bastion.tokens import UnsupportedHeader
from bastion.tokens import WrongAudience
from bastion.tokens import WrongIssuer
from bastion.tokens import WrongType
from tests.tokens.tokens_helpers import AUDIENCE
from tests.tokens.tokens_helpers import Attacker
from tests.tokens.tokens_helpers import Clock
from tests.tokens.tokens_helpers import Issuer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def validator(issuer: Issuer, clock: Clock) -> AsyncIterator[TokenValidator]:
    async with TokenValidator(issuer.url, audience=AUDIENCE, clock=clock) as v:
        yield v


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [
            jose.b64url_encode(orjson.dumps(header)),
            jose.b64url_encode(orjson.dumps(claims)),
            jose.b64url_encode(signature),
        ]
    )


def claims_of(token: str) -> dict[str, Any]:
    return orjson.loads(jose.b64url_decode(token.split(".")[1]))  # type: ignore[no-any-return]


# -- the happy path ---------------------------------------------------------------------------


async def test_valid_token_gives_principal_and_is_cached(issuer: Issuer, validator: TokenValidator) -> None:
    token = issuer.mint()
    assert validator.cached(token) is None
    principal = await validator.validate(token)
    assert principal.subject == "alice"
    assert principal.client_id == "shop"
    assert principal.scopes == frozenset({"orders:read", "orders:write"})
    assert principal.issuer == issuer.url
    assert principal.audience == AUDIENCE
    assert principal.token_id == claims_of(token)["jti"]
    assert principal.expires_at == claims_of(token)["exp"]
    assert principal.has_scopes("orders:read")
    assert not principal.has_scopes("orders:read", "admin")
    with pytest.raises(InsufficientScope) as info:
        principal.require_scopes("admin")
    assert 'scope="admin"' in info.value.challenge("api")
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.subject = "mallory"  # type: ignore[misc]
    with pytest.raises(TypeError):
        principal.claims["sub"] = "mallory"  # type: ignore[index]
    assert validator.cached(token) is principal
    assert await validator.validate(token) is principal
    assert issuer.hits == {"/.well-known/oauth-authorization-server": 1, "/jwks.json": 1}


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
async def test_default_algorithms(issuer: Issuer, validator: TokenValidator, alg: str) -> None:
    issuer.add_key("k-" + alg, alg)
    await validator.refresh_keys()  # within the cooldown: no refetch, the key is unknown
    with pytest.raises(UnknownKey):
        await validator.validate(issuer.mint("k-" + alg, alg))
    issuer.clock.advance(31)
    assert (await validator.validate(issuer.mint("k-" + alg, alg))).subject == "alice"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
async def test_typ_variants_accepted(issuer: Issuer, validator: TokenValidator, typ: str) -> None:
    await validator.validate(issuer.mint(header={"typ": typ}))


async def test_audience_array(issuer: Issuer, validator: TokenValidator) -> None:
    await validator.validate(issuer.mint(aud=["https://other.example", AUDIENCE]))
    with pytest.raises(WrongAudience):
        await validator.validate(issuer.mint(aud=["https://other.example"]))
    with pytest.raises(WrongAudience):
        await validator.validate(issuer.mint(aud=[]))


async def test_metadata_falls_back_to_openid_configuration(issuer: Issuer, clock: Clock) -> None:
    issuer.oauth_metadata = False
    async with TokenValidator(issuer.url, audience=AUDIENCE, clock=clock) as v:
        await v.validate(issuer.mint())
    assert issuer.hits["/.well-known/openid-configuration"] == 1


async def test_explicit_jwks_uri_skips_metadata(issuer: Issuer, clock: Clock) -> None:
    async with TokenValidator(
        issuer.url, audience=AUDIENCE, jwks_uri=issuer.url + "/jwks.json", clock=clock
    ) as v:
        await v.validate(issuer.mint())
    assert issuer.hits == {"/jwks.json": 1}


# -- algorithm rules (RFC 8725 §3.1) ----------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_any_case_is_refused(issuer: Issuer, validator: TokenValidator, alg: str) -> None:
    token = raw_token({"alg": alg, "typ": "at+jwt", "kid": "k1"}, claims_of(issuer.mint()))
    with pytest.raises(DisallowedAlgorithm) as info:
        await validator.validate(token)
    assert info.value.reason == "disallowed_alg"


@pytest.mark.parametrize("secret_form", ["pem", "der", "jwk_json"])
async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    issuer: Issuer, validator: TokenValidator, secret_form: str
) -> None:
    """The classic confusion: an HMAC keyed with the issuer's published RSA public key."""
    import hashlib
    import hmac

    rsa = issuer.add_key("rsa1", "RS256")
    public = rsa.public_key()
    secret = {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk_json": orjson.dumps({**jose.public_jwk(rsa), "kid": "rsa1"}),
    }[secret_form]
    head = jose.b64url_encode(orjson.dumps({"alg": "HS256", "typ": "at+jwt", "kid": "rsa1"}))
    body = jose.b64url_encode(orjson.dumps(claims_of(issuer.mint())))
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(DisallowedAlgorithm):
        await validator.validate(f"{head}.{body}.{jose.b64url_encode(mac)}")


async def test_algorithm_outside_allowlist_is_refused(issuer: Issuer, validator: TokenValidator) -> None:
    issuer.add_key("rsa1", "RS256")
    with pytest.raises(DisallowedAlgorithm):
        await validator.validate(issuer.mint("rsa1", "PS256"))


@pytest.mark.parametrize(
    "algorithms", [["HS256"], ["none"], ["NONE"], ["ES256", "hs512"], [], "ES256", ["ES999"]]
)
def test_unsafe_allowlists_are_configuration_errors(algorithms: Any) -> None:
    with pytest.raises(ValueError):
        TokenValidator("https://auth.example", algorithms=algorithms, key_source=StaticKeys(KeySet()))


async def test_zero_ecdsa_signature_is_refused(issuer: Issuer, validator: TokenValidator) -> None:
    """CVE-2022-21449 ("psychic signatures")."""
    head, body, _ = issuer.mint().split(".")
    with pytest.raises(InvalidSignature) as info:
        await validator.validate(f"{head}.{body}.{jose.b64url_encode(bytes(64))}")
    assert info.value.reason == "bad_signature"


async def test_key_type_must_fit_alg(issuer: Issuer, validator: TokenValidator) -> None:
    """An RS256 header naming the issuer's EC key is refused before any signature check."""
    rsa = jose.generate_private_key("RS256")
    with pytest.raises(UnknownKey) as info:
        await validator.validate(issuer.mint("k1", "RS256", key=rsa))
    assert info.value.reason == "key_mismatch"


async def test_jwk_own_alg_must_equal_header_alg(issuer: Issuer) -> None:
    key = jose.generate_private_key("RS256")
    jwks = {"keys": [{**jose.public_jwk(key), "kid": "r", "alg": "PS256"}]}
    validator = TokenValidator(
        issuer.url, audience=AUDIENCE, algorithms=["RS256", "PS256"], key_source=StaticKeys(jwks)
    )
    with pytest.raises(UnknownKey) as info:
        await validator.validate(issuer.mint("r", "RS256", key=key))
    assert info.value.reason == "key_mismatch"
    assert (await validator.validate(issuer.mint("r", "PS256", key=key))).subject == "alice"


async def test_keys_not_for_signatures_are_ignored(issuer: Issuer) -> None:
    key = jose.generate_private_key("ES256")
    jwks = {
        "keys": [
            {**jose.public_jwk(key), "kid": "enc", "use": "enc"},
            {**jose.public_jwk(key), "kid": "ops", "key_ops": ["encrypt"]},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        ]
    }
    validator = TokenValidator(issuer.url, audience=AUDIENCE, key_source=StaticKeys(jwks))
    for kid in ("enc", "ops", "hmac"):
        with pytest.raises(UnknownKey):
            await validator.validate(issuer.mint(kid, key=key))


# -- keys must never come from the token ------------------------------------------------------


async def test_embedded_jwk_header_is_never_used(
    issuer: Issuer, validator: TokenValidator, attacker: Attacker
) -> None:
    embedded = {**jose.public_jwk(attacker.key), "kid": "evil"}
    with pytest.raises(UnknownKey):
        await validator.validate(issuer.mint("evil", key=attacker.key, header={"jwk": embedded}))
    # Naming the issuer's kid does not help: the issuer's key decides, and it says no.
    with pytest.raises(InvalidSignature):
        await validator.validate(issuer.mint("k1", key=attacker.key, header={"jwk": embedded}))
    assert attacker.hits == 0


@pytest.mark.parametrize("member", ["jku", "x5u"])
async def test_jku_and_x5u_are_never_fetched(
    issuer: Issuer, validator: TokenValidator, attacker: Attacker, clock: Clock, member: str
) -> None:
    header = {member: attacker.url + "/jwks.json"}
    clock.advance(31)  # a refetch is allowed: it must go to the issuer, not the attacker
    jwks_before = issuer.hits["/jwks.json"]
    with pytest.raises(UnknownKey):
        await validator.validate(issuer.mint("evil", key=attacker.key, header=header))
    assert issuer.hits["/jwks.json"] == jwks_before + 1
    # A real issuer token carrying the header is verified by kid, the header ignored.
    assert (await validator.validate(issuer.mint("k1", header=header))).subject == "alice"
    x5c = {"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}
    with pytest.raises(UnknownKey):
        await validator.validate(issuer.mint("evil", key=attacker.key, header=x5c))
    assert attacker.hits == 0


# -- claims (RFC 9068 §4, RFC 7519 §4.1) -------------------------------------------------------


async def test_expired_token(issuer: Issuer, validator: TokenValidator, clock: Clock) -> None:
    with pytest.raises(TokenExpired) as info:
        await validator.validate(issuer.mint(exp=int(clock()) - 61))
    assert info.value.reason == "expired"
    assert "expired" in info.value.challenge("api")


async def test_leeway_accepts_but_does_not_cache(
    issuer: Issuer, validator: TokenValidator, clock: Clock
) -> None:
    token = issuer.mint(exp=int(clock()) - 30)
    await validator.validate(token)
    assert validator.cached(token) is None
    assert validator.cache_size == 0


async def test_not_yet_valid_and_future_iat(issuer: Issuer, validator: TokenValidator, clock: Clock) -> None:
    now = int(clock())
    with pytest.raises(TokenNotYetValid):
        await validator.validate(issuer.mint(nbf=now + 120))
    await validator.validate(issuer.mint(nbf=now + 30))
    with pytest.raises(TokenNotYetValid) as info:
        await validator.validate(issuer.mint(iat=now + 120))
    assert info.value.reason == "issued_in_future"


async def test_wrong_issuer(issuer: Issuer, validator: TokenValidator) -> None:
    for iss in ("https://evil.example", issuer.url + "/", issuer.url.upper(), None):
        with pytest.raises(WrongIssuer):
            await validator.validate(issuer.mint(iss=iss))


async def test_wrong_audience(issuer: Issuer, validator: TokenValidator) -> None:
    for aud in ("https://other.example", None, 5, [5]):
        with pytest.raises(WrongAudience):
            await validator.validate(issuer.mint(aud=aud))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt2", "application/jwt", None, 5])
async def test_wrong_typ(issuer: Issuer, validator: TokenValidator, typ: Any) -> None:
    header = {"typ": typ} if typ is not None else {}
    token = issuer.mint(header=header)
    if typ is None:  # drop typ entirely
        head = orjson.loads(jose.b64url_decode(token.split(".")[0]))
        head.pop("typ")
        signing_input = jose.b64url_encode(orjson.dumps(head)) + "." + token.split(".")[1]
        sig = jose.sign("ES256", issuer.keys["k1"], signing_input.encode())
        token = signing_input + "." + jose.b64url_encode(sig)
    with pytest.raises((WrongType, MalformedToken)):
        await validator.validate(token)


async def test_claim_shapes(issuer: Issuer, validator: TokenValidator, clock: Clock) -> None:
    with pytest.raises(InvalidClaims) as info:
        await validator.validate(issuer.mint(exp=None))
    assert info.value.reason == "missing_claim"
    for bad in ({"exp": "soon"}, {"exp": True}, {"sub": 5}, {"scope": ["a"]}, {"nbf": "x"}):
        with pytest.raises(InvalidClaims):
            await validator.validate(issuer.mint(**bad))
    array_payload = jose.encode_jwt("ES256", issuer.keys["k1"], {"typ": "at+jwt", "kid": "k1"}, {})
    head, _, _ = array_payload.split(".")
    signing_input = head + "." + jose.b64url_encode(b"[1,2]")
    sig = jose.b64url_encode(jose.sign("ES256", issuer.keys["k1"], signing_input.encode()))
    with pytest.raises(MalformedToken):
        await validator.validate(signing_input + "." + sig)


async def test_required_claims_option(issuer: Issuer, clock: Clock) -> None:
    async with TokenValidator(
        issuer.url, audience=AUDIENCE, clock=clock, required_claims=RFC9068_REQUIRED_CLAIMS
    ) as v:
        await v.validate(issuer.mint())
        with pytest.raises(InvalidClaims):
            await v.validate(issuer.mint(jti=None))


async def test_crit_is_refused(issuer: Issuer, validator: TokenValidator) -> None:
    with pytest.raises(UnsupportedHeader) as info:
        await validator.validate(issuer.mint(header={"crit": ["exp"], "exp": 1}))
    assert info.value.reason == "crit"


async def test_oversize_token_refused_before_parsing(validator: TokenValidator, issuer: Issuer) -> None:
    with pytest.raises(TokenTooLarge) as info:
        await validator.validate("a" * 8193)  # not even a JWS: size is checked first
    assert info.value.reason == "too_large"
    with pytest.raises(TokenTooLarge):
        await validator.validate(issuer.mint(padding="x" * 8200))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b.c.d", "é.é.é", "eyJ9.e30.", "\n"])
async def test_malformed_tokens(validator: TokenValidator, token: str) -> None:
    with pytest.raises(MalformedToken):
        await validator.validate(token)


async def test_kid_required_with_several_keys(issuer: Issuer, clock: Clock) -> None:
    one = TokenValidator(issuer.url, audience=AUDIENCE, clock=clock, key_source=StaticKeys(issuer.jwks()))
    assert (await one.validate(issuer.mint(kid=None))).subject == "alice"
    issuer.add_key("k2")
    two = TokenValidator(issuer.url, audience=AUDIENCE, clock=clock, key_source=StaticKeys(issuer.jwks()))
    with pytest.raises(UnknownKey) as info:
        await two.validate(issuer.mint(kid=None))
    assert info.value.reason == "kid_required"


# -- JWKS fetching: bounded refetch, rotation, outages -----------------------------------------


async def test_unknown_kid_flood_costs_one_fetch_per_cooldown(
    issuer: Issuer, validator: TokenValidator, attacker: Attacker, clock: Clock
) -> None:
    def bogus() -> str:
        return issuer.mint(secrets.token_hex(8), key=attacker.key)

    clock.advance(31)
    before = issuer.hits["/jwks.json"]
    results = await asyncio.gather(
        *(validator.validate(bogus()) for _ in range(1000)), return_exceptions=True
    )
    assert all(isinstance(result, UnknownKey) for result in results)
    assert issuer.hits["/jwks.json"] == before + 1
    # Still within the cooldown: another wave costs nothing.
    clock.advance(29)
    results = await asyncio.gather(*(validator.validate(bogus()) for _ in range(200)), return_exceptions=True)
    assert all(isinstance(result, UnknownKey) for result in results)
    assert issuer.hits["/jwks.json"] == before + 1
    clock.advance(2)
    results = await asyncio.gather(*(validator.validate(bogus()) for _ in range(200)), return_exceptions=True)
    assert issuer.hits["/jwks.json"] == before + 2
    assert attacker.hits == 0


async def test_key_rotation_is_picked_up(issuer: Issuer, validator: TokenValidator, clock: Clock) -> None:
    await validator.validate(issuer.mint())
    issuer.add_key("k2")
    clock.advance(30)
    assert (await validator.validate(issuer.mint("k2"))).subject == "alice"
    assert issuer.hits["/jwks.json"] == 2


async def test_stale_keys_refresh_in_background(
    issuer: Issuer, validator: TokenValidator, clock: Clock
) -> None:
    clock.advance(601)
    await validator.validate(issuer.mint())  # answered from the stale set, refresh started
    for _ in range(50):
        if issuer.hits["/jwks.json"] == 2:
            break
        await asyncio.sleep(0.01)
    assert issuer.hits["/jwks.json"] == 2


@pytest.mark.parametrize(
    ("cache_control", "stale_after"), [("public, max-age=40", 40), ("max-age=9000", 600), ("max-age=2", 2)]
)
async def test_jwks_max_age_bounds_freshness(
    issuer: Issuer, clock: Clock, cache_control: str, stale_after: float
) -> None:
    # An issuer publishes a new key for max-age seconds before signing with it: refreshing
    # no later than that means its first token with the new key is already known here.
    issuer.jwks_cache_control = cache_control
    async with TokenValidator(issuer.url, audience=AUDIENCE, clock=clock) as validator:
        await validator.validate(issuer.mint())
        clock.advance(stale_after - 1)
        await validator.validate(issuer.mint(jti="fresh"))
        await asyncio.sleep(0.05)
        assert issuer.hits["/jwks.json"] == 1
        clock.advance(2)
        await validator.validate(issuer.mint(jti="stale"))
        for _ in range(50):
            if issuer.hits["/jwks.json"] == 2:
                break
            await asyncio.sleep(0.01)
        assert issuer.hits["/jwks.json"] == 2


async def test_issuer_down_keeps_cached_keys(issuer: Issuer, validator: TokenValidator, clock: Clock) -> None:
    await issuer.stop()
    clock.advance(3600)  # keys long stale, refetches allowed: all of them fail
    for _ in range(3):
        assert (await validator.validate(issuer.mint())).subject == "alice"
        with pytest.raises(UnknownKey):
            await validator.validate(issuer.mint("k9", key=jose.generate_private_key("ES256")))
        clock.advance(31)


async def test_issuer_down_from_the_start(issuer: Issuer, clock: Clock) -> None:
    url = issuer.url
    token = issuer.mint()
    await issuer.stop()
    validator = TokenValidator(url, audience=AUDIENCE, clock=clock)
    try:
        with pytest.raises(IssuerUnavailable) as info:
            await validator.validate(token)
        assert info.value.status_code == 503
        assert "error=" not in info.value.challenge("api")  # not the client's fault
        with pytest.raises(IssuerUnavailable):  # within the cooldown: no new attempt
            await validator.validate(token)
    finally:
        await validator.close()


# -- the verified-token cache -----------------------------------------------------------------


async def test_cache_hit_after_exp_is_a_miss(issuer: Issuer, validator: TokenValidator, clock: Clock) -> None:
    token = issuer.mint(exp=int(clock()) + 100)
    await validator.validate(token)
    assert validator.cached(token) is not None
    clock.advance(100)
    assert validator.cached(token) is None
    clock.advance(61)
    with pytest.raises(TokenExpired):
        await validator.validate(token)


async def test_cache_is_per_audience_and_issuer(issuer: Issuer, clock: Clock) -> None:
    keys = StaticKeys(issuer.jwks())
    mine = TokenValidator(issuer.url, audience=AUDIENCE, key_source=keys, clock=clock)
    other_issuer = TokenValidator(
        "https://other-issuer.example", audience=AUDIENCE, key_source=keys, clock=clock
    )
    token = issuer.mint()
    await mine.validate(token)
    assert mine.cached(token) is not None
    assert mine.cached(token, "https://other.example") is None
    with pytest.raises(WrongAudience):
        await mine.validate(token, audience="https://other.example")
    assert other_issuer.cached(token) is None
    with pytest.raises(WrongIssuer):
        await other_issuer.validate(token)


async def test_the_cache_stays_within_its_size(issuer: Issuer, clock: Clock) -> None:
    validator = TokenValidator(
        issuer.url, audience=AUDIENCE, key_source=StaticKeys(issuer.jwks()), cache_size=3, clock=clock
    )
    tokens = [issuer.mint(jti=f"t{i}") for i in range(20)]
    for token in tokens:
        await validator.validate(token)
        assert validator.cache_size <= 3
    assert validator.cache_size == 3
    assert sum(validator.cached(token) is not None for token in tokens) == 3


async def test_cache_flushed_when_a_key_leaves_the_jwks(
    issuer: Issuer, validator: TokenValidator, clock: Clock
) -> None:
    issuer.add_key("k2")
    clock.advance(31)
    await validator.refresh_keys()
    first, second = issuer.mint("k1"), issuer.mint("k2")
    await validator.validate(first)
    await validator.validate(second)
    del issuer.keys["k1"]
    clock.advance(31)
    await validator.refresh_keys()
    assert validator.cached(first) is None
    assert validator.cached(second) is not None
    with pytest.raises(UnknownKey):
        await validator.validate(first)


async def test_static_keys_replacement_flushes_on_next_miss(issuer: Issuer, clock: Clock) -> None:
    keys = StaticKeys(issuer.jwks())
    validator = TokenValidator(issuer.url, audience=AUDIENCE, key_source=keys, clock=clock)
    token = issuer.mint()
    await validator.validate(token)
    issuer.add_key("k2")
    del issuer.keys["k1"]
    keys.replace(issuer.jwks())
    await validator.validate(issuer.mint("k2"))
    assert validator.cached(token) is None
    with pytest.raises(UnknownKey):
        await validator.validate(token)


async def test_revoke_flushes_and_refuses(issuer: Issuer, validator: TokenValidator, clock: Clock) -> None:
    token, other = issuer.mint(jti="gone"), issuer.mint(jti="kept")
    await validator.validate(token)
    await validator.validate(other)
    validator.revoke("gone", exp=claims_of(token)["exp"])
    assert validator.cached(token) is None
    assert validator.cached(other) is not None
    with pytest.raises(TokenRevoked) as info:
        await validator.validate(token)
    assert info.value.reason == "revoked"


class SetRevocations:
    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.calls = 0
        self.fail = False

    async def is_revoked(self, jti: str) -> bool:
        self.calls += 1
        if self.fail:
            raise ConnectionError("feed down")
        return jti in self.revoked


async def test_revocation_source_is_consulted_on_misses(issuer: Issuer, clock: Clock) -> None:
    source = SetRevocations()
    validator = TokenValidator(
        issuer.url, audience=AUDIENCE, key_source=StaticKeys(issuer.jwks()), revocation=source, clock=clock
    )
    token = issuer.mint(jti="a")
    await validator.validate(token)
    await validator.validate(token)
    assert source.calls == 1  # the hit did not ask
    source.revoked.add("b")
    with pytest.raises(TokenRevoked):
        await validator.validate(issuer.mint(jti="b"))
    source.fail = True
    with pytest.raises(IssuerUnavailable) as info:
        await validator.validate(issuer.mint(jti="c"))
    assert info.value.reason == "revocation_unavailable"


async def test_untrusted_cache_rechecks_hits_and_fails_closed(issuer: Issuer, clock: Clock) -> None:
    source = SetRevocations()
    validator = TokenValidator(
        issuer.url, audience=AUDIENCE, key_source=StaticKeys(issuer.jwks()), revocation=source, clock=clock
    )
    token = issuer.mint(jti="a")
    await validator.validate(token)
    validator.cache_trusted = False  # the feed is down
    assert validator.cached(token) is None
    await validator.validate(token)
    assert source.calls == 2, "the hit was re-checked against the source"
    source.revoked.add("a")
    with pytest.raises(TokenRevoked):
        await validator.validate(token)
    source.revoked.clear()
    source.fail = True
    with pytest.raises(IssuerUnavailable) as info:
        await validator.validate(token)
    assert info.value.status_code == 503
    validator.cache_trusted = True
    assert validator.cached(token) is not None


async def test_revoke_client_refuses_tokens_issued_before(
    issuer: Issuer, validator: TokenValidator, clock: Clock
) -> None:
    old, other = issuer.mint(jti="old", client_id="shop"), issuer.mint(jti="other", client_id="bank")
    await validator.validate(old)
    await validator.validate(other)
    validator.revoke_client("shop", issued_before=clock() + 1, until=clock() + 1000)
    assert validator.cached(old) is None
    assert validator.cached(other) is not None
    with pytest.raises(TokenRevoked):
        await validator.validate(old)
    clock.advance(5)
    await validator.validate(issuer.mint(jti="new", client_id="shop"))  # issued after the disable


async def test_forget_key_refuses_it_even_while_a_stale_jwks_lists_it(
    issuer: Issuer, validator: TokenValidator, clock: Clock
) -> None:
    token = issuer.mint(jti="t1")
    await validator.validate(token)
    assert validator.forget_key("k1") == 1
    assert validator.cached(token) is None
    with pytest.raises(UnknownKey) as info:
        await validator.validate(token)  # the JWKS (stale) still lists k1
    assert info.value.reason == "key_revoked"
    with pytest.raises(UnknownKey):
        await validator.validate(issuer.mint(jti="t2"))
    # A fetched JWKS that no longer lists it ends the ban (nothing left to refuse); the old
    # tokens stay refused, as unknown.
    issuer.keys.pop("k1")
    issuer.add_key("k2")
    clock.advance(60)
    await validator.refresh_keys()
    assert validator.forget_key("k2") == 0
    with pytest.raises(UnknownKey) as info:
        await validator.validate(issuer.mint(kid="k2", jti="t3"))
    assert info.value.reason == "key_revoked"
    with pytest.raises(UnknownKey) as info:
        await validator.validate(token)
    assert info.value.reason == "unknown_kid"


async def test_audience_is_required(issuer: Issuer) -> None:
    validator = TokenValidator(issuer.url, key_source=StaticKeys(issuer.jwks()))
    with pytest.raises(ValueError):
        await validator.validate(issuer.mint())
    assert (await validator.validate(issuer.mint(), audience=AUDIENCE)).subject == "alice"


async def test_metadata_for_another_issuer_is_refused(issuer: Issuer, clock: Clock) -> None:
    """RFC 8414 §3.3: the metadata's issuer must be the one we asked about."""
    issuer.advertised_issuer = "https://evil.example"
    validator = TokenValidator(issuer.url, audience=AUDIENCE, clock=clock)
    try:
        with pytest.raises(IssuerUnavailable):
            await validator.validate(issuer.mint())
    finally:
        await validator.close()
    assert issuer.hits["/jwks.json"] == 0


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(issuer: Issuer, clock: Clock) -> None:
    issuer.jwks_gate = asyncio.Event()
    validator = TokenValidator(issuer.url, audience=AUDIENCE, clock=clock)
    try:
        first = asyncio.ensure_future(validator.validate(issuer.mint()))
        second = asyncio.ensure_future(validator.validate(issuer.mint()))
        while issuer.hits["/jwks.json"] == 0:
            await asyncio.sleep(0.005)
        first.cancel()
        issuer.jwks_gate.set()
        assert (await second).subject == "alice"
        assert first.cancelled()
        assert issuer.hits["/jwks.json"] == 1
    finally:
        await validator.close()

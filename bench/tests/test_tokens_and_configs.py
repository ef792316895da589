"""Token pools, the HAProxy configuration, soak verdicts and profile summaries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from peers import haproxy_config
from profiling import summarise
from soak import MIB
from soak import is_flat
from token_pool import AUDIENCE
from token_pool import ISSUER
from token_pool import make_pools

from bastion.protocol import jose


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    return make_pools(tmp_path_factory.mktemp("tokens"), ("RS256", "ES256"), count=20)


def public_key(jwks_path: Path, kid: str) -> jose.PublicKey:
    jwk = next(j for j in json.loads(jwks_path.read_text())["keys"] if j["kid"] == kid)
    return jose.load_public_jwk({k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")})


def test_pool_tokens_are_distinct_rfc9068_and_verify(pools) -> None:
    by_alg, jwks_path = pools
    for alg, pool in by_alg.items():
        key = public_key(jwks_path, pool.kid)
        tokens = pool.tokens_file.read_text().split()
        assert len(tokens) == len(set(tokens)) == 20
        for token in tokens[:3]:
            jws = jose.parse_compact(token)
            assert jws.header == {"typ": "at+jwt", "kid": pool.kid, "alg": alg}
            assert jose.verify(alg, key, jws.signing_input, jws.signature)
            claims = json.loads(jws.payload)
            assert claims["iss"] == ISSUER
            assert claims["aud"] == AUDIENCE
            assert {"sub", "client_id", "scope", "jti", "iat"} <= claims.keys()
            assert claims["exp"] > time.time() + 3000


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_rejects_fail_exactly_one_check(pools, alg: str) -> None:
    by_alg, jwks_path = pools
    pool = by_alg[alg]
    key = public_key(jwks_path, pool.kid)
    for reason, token in pool.rejects.items():
        jws = jose.parse_compact(token)
        signed = jose.verify(alg, key, jws.signing_input, jws.signature)
        claims = json.loads(jws.payload)
        assert signed is (reason not in ("bad signature", "unknown key")), reason
        assert (claims["exp"] < time.time()) is (reason == "expired")
        assert (claims["aud"] != AUDIENCE) is (reason == "wrong aud")
        assert (claims["iss"] != ISSUER) is (reason == "wrong iss")
        assert (jws.header["typ"] != "at+jwt") is (reason == "wrong typ")


def test_haproxy_config_checks_every_claim(pools) -> None:
    by_alg, _ = pools
    config = haproxy_config(8000, 9000, by_alg["RS256"])
    assert "nbthread 1" in config
    assert f'jwt_verify("RS256","{by_alg["RS256"].public_pem}") -m int 1' in config
    for check in (
        "'$.alg') -m str RS256",
        "'$.typ') -m str at+jwt",
        f"-m str {ISSUER}",
        f"-m str {AUDIENCE}",
        "sub(txn.now) -m int gt 0",
    ):
        assert check in config
    assert "ssl crt" not in config
    assert "ssl crt /x.pem" in haproxy_config(8000, 9000, by_alg["RS256"], tls_pem=Path("/x.pem"))


def test_soak_verdict() -> None:
    flat = [100 * MIB] * 10 + [140 * MIB] * 10 + [141 * MIB] * 20
    assert is_flat(flat)[0]
    growing = [100 * MIB + i * 4 * MIB for i in range(40)]
    assert not is_flat(growing)[0]


def test_profile_summary_counts_self_total_and_files() -> None:
    raw = (
        'process 1:"python";main (bastion/cli/main.py:1);loop (bastion/gateway/server.py:2);'
        "verify (bastion/protocol/jose.py:3) 30\n"
        'process 1:"python";main (bastion/cli/main.py:1);loop (bastion/gateway/server.py:2) 10\n'
        "bad line\n"
    )
    summary = summarise(raw)
    assert summary["samples"] == 40
    assert summary["self_pct"][0] == ("verify (bastion/protocol/jose.py:3)", 75.0)
    totals = dict(summary["total_pct"])
    assert totals["loop (bastion/gateway/server.py:2)"] == 100.0
    assert "main (bastion/cli/main.py:1)" not in totals
    assert dict(summary["self_by_file_pct"]) == {
        "bastion/protocol/jose.py": 75.0,
        "bastion/gateway/server.py": 25.0,
    }

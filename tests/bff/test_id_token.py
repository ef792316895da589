"""The ID token's claims checks at the callback (OpenID Connect Core §3.1.3.7)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bastion.bff.oidc import UpstreamError
from bastion.bff.oidc import id_token_claims

ISSUER = "https://auth.example"
NOW = 1_800_000_000.0


def _token(**claims: Any) -> str:
    body = {
        "iss": ISSUER,
        "aud": "bff",
        "sub": "u1",
        "exp": NOW + 60,
        "nonce": "n-1",
        "at_hash": "h",
        **claims,
    }
    encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{encoded}.c2ln"


def test_good_claims_are_returned_without_the_nonce() -> None:
    claims = id_token_claims(
        _token(aud=["bff", "other"]), issuer=ISSUER, client_id="bff", nonce="n-1", now=NOW
    )
    assert claims == {"iss": ISSUER, "aud": ["bff", "other"], "sub": "u1", "exp": NOW + 60}


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (_token(nonce="n-2"), "nonce"),
        (_token(nonce=None), "nonce"),
        (_token(iss="https://evil.example"), "issuer"),
        (_token(aud="someone-else"), "issuer"),
        (_token(exp=NOW), "expired"),
        (_token(exp="soon"), "expired"),
        ("not-a-jwt", "malformed"),
        ("a.!!!.c", "malformed"),
    ],
)
def test_bad_claims_are_refused(token: str, message: str) -> None:
    with pytest.raises(UpstreamError, match=message):
        id_token_claims(token, issuer=ISSUER, client_id="bff", nonce="n-1", now=NOW)

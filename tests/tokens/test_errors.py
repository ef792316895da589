"""Error reasons and the RFC 6750 ``WWW-Authenticate`` challenge."""

from __future__ import annotations

import pytest

import bastion.tokens as tokens
from bastion.tokens import InsufficientScope
from bastion.tokens import IssuerUnavailable
from bastion.tokens import TokenError
from bastion.tokens import TokenExpired
from bastion.tokens import bearer_challenge


def test_rfc6750_examples() -> None:
    # RFC 6750 §3 examples.
    assert bearer_challenge("example") == 'Bearer realm="example"'
    assert (
        bearer_challenge("example", error="invalid_token", description="The access token expired")
        == 'Bearer realm="example", error="invalid_token", error_description="The access token expired"'
    )
    assert bearer_challenge() == "Bearer"


def test_insufficient_scope_carries_scope() -> None:
    error = InsufficientScope(["orders:write", "admin"])
    assert error.status_code == 403
    assert error.challenge("api") == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="The access token lacks a required scope", scope="orders:write admin"'
    )


def test_values_are_escaped_and_cannot_inject_headers() -> None:
    value = bearer_challenge('a"b\\c\r\nSet-Cookie: x=1', description='say "hi"\r\n\\ é')
    assert "\r" not in value
    assert "\n" not in value
    assert value.startswith('Bearer realm="a\\"b\\\\c??Set-Cookie: x=1"')
    assert 'error_description="say ?hi???? ?"' in value


@pytest.mark.parametrize(
    ("error", "scope"), [('bad"code', None), ("x\r\n", None), (None, 'a"b'), (None, "a  b")]
)
def test_invalid_codes_and_scopes_are_refused(error: str | None, scope: str | None) -> None:
    with pytest.raises(ValueError):
        bearer_challenge("r", error=error, scope=scope)


def test_every_error_has_a_reason_and_status() -> None:
    classes = [
        value for value in vars(tokens).values() if isinstance(value, type) and issubclass(value, TokenError)
    ]
    assert len(classes) >= 15
    for cls in classes:
        assert cls.default_reason
        assert cls.status_code in (401, 403, 503)
        assert cls.description
    assert TokenExpired().reason == "expired"
    assert TokenExpired("detail", reason="custom").reason == "custom"
    assert IssuerUnavailable.error is None
    assert "error=" not in IssuerUnavailable().challenge("api")
    assert TokenExpired("exp 5 <= now 10").detail == "exp 5 <= now 10"

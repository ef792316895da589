"""Pure protocol rules: form parsing, client authentication, scope, client credentials."""

from __future__ import annotations

import base64

import pytest

from bastion.protocol.errors import InvalidClient
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.errors import InvalidScope
from bastion.protocol.errors import InvalidTarget
from bastion.protocol.errors import OAuthError
from bastion.protocol.errors import UnauthorizedClient
from bastion.protocol.models import Client
from bastion.protocol.requests import is_form_content_type
from bastion.protocol.requests import parse_form
from bastion.protocol.rfc6749.client_auth import AuthMethod
from bastion.protocol.rfc6749.client_auth import extract_credentials
from bastion.protocol.rfc6749.client_auth import parse_basic
from bastion.protocol.rfc6749.grants.client_credentials import decide
from bastion.protocol.rfc6749.scope import narrow
from bastion.protocol.rfc6749.scope import parse_scope


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_form_refuses_repeated_parameters() -> None:
    # RFC 6749 §3.2: parameters MUST NOT be included more than once.
    with pytest.raises(InvalidRequest):
        parse_form(b"grant_type=client_credentials&grant_type=password")


def test_form_treats_empty_values_as_omitted_and_decodes() -> None:
    assert parse_form(b"a=&b=x%20y&c=1+2") == {"b": "x y", "c": "1 2"}


def test_form_refuses_invalid_utf8() -> None:
    with pytest.raises(InvalidRequest):
        parse_form(b"a=%ff%fe")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/x-www-form-urlencoded", True),
        ("Application/X-WWW-Form-Urlencoded; charset=UTF-8", True),
        ("application/json", False),
        (None, False),
    ],
)
def test_form_content_type(value: str | None, expected: bool) -> None:
    assert is_form_content_type(value) is expected


def test_basic_credentials_are_form_urlencoded() -> None:
    # RFC 6749 §2.3.1: id and secret are encoded with application/x-www-form-urlencoded.
    assert parse_basic(basic("my%20client", "s%3Acret+x")) == ("my client", "s:cret x")


@pytest.mark.parametrize(
    "header", ["Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Bearer x"]
)
def test_malformed_basic_is_invalid_client(header: str) -> None:
    with pytest.raises(InvalidClient):
        parse_basic(header)


def test_exactly_one_authentication_method() -> None:
    with pytest.raises(InvalidRequest):
        extract_credentials({"client_secret": "x", "client_id": "a"}, basic("a", "b"))
    with pytest.raises(InvalidRequest):
        extract_credentials({"client_id": "other"}, basic("a", "b"))
    creds = extract_credentials({"client_id": "a"}, basic("a", "b"))
    assert creds.method is AuthMethod.BASIC
    assert extract_credentials({"client_id": "a", "client_secret": "s"}, None).method is AuthMethod.POST
    assert extract_credentials({"client_id": "a"}, None).method is AuthMethod.NONE
    with pytest.raises(InvalidClient):
        extract_credentials({}, None)


@pytest.mark.parametrize("bad", ["a  b", " a", "a\tb", 'a"b', "a\\b", "é", "a\n", "a b\n"])
def test_scope_syntax(bad: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scope(bad)


def test_scope_narrowing() -> None:
    assert narrow("b a b", {"a", "b", "c"}) == ["b", "a"]
    assert narrow(None, {"a", "b"}) == ["a", "b"]
    with pytest.raises(InvalidScope):
        narrow("a admin", {"a"})


CLIENT = Client(
    client_id="svc",
    name="svc",
    public=False,
    grant_types=frozenset({"client_credentials"}),
    scopes=frozenset({"read", "write"}),
    audience="https://api.example",
)


def test_client_credentials_decision() -> None:
    decision = decide(CLIENT, {"scope": "read"}, "https://issuer")
    assert decision.scopes == ["read"]
    assert decision.audience == ("https://api.example",)
    assert decide(CLIENT, {"resource": "https://api.example"}, "https://issuer").audience == (
        "https://api.example",
    )


@pytest.mark.parametrize("resource", ["https://other.example", "relative/path", "https://api.example#frag"])
def test_client_credentials_refuses_foreign_resources(resource: str) -> None:
    with pytest.raises(InvalidTarget):
        decide(CLIENT, {"resource": resource}, "https://issuer")


def test_client_credentials_needs_the_grant_and_a_confidential_client() -> None:
    import dataclasses

    with pytest.raises(UnauthorizedClient):
        decide(dataclasses.replace(CLIENT, grant_types=frozenset()), {}, "https://issuer")
    with pytest.raises(UnauthorizedClient):
        decide(dataclasses.replace(CLIENT, public=True), {}, "https://issuer")


def test_error_descriptions_stay_within_rfc_characters() -> None:
    error = OAuthError('bad "quote" and \\ backslash é')
    assert error.to_dict()["error_description"] == "bad quote and  backslash "


@pytest.mark.parametrize("description", ["parameter a\nb is repeated", "line\n", "\n", "tab\there\r\n"])
def test_error_descriptions_drop_line_breaks(description: str) -> None:
    # A newline at the end of a string satisfies ``$``: each character is checked whole.
    body = OAuthError(description).to_dict()
    assert "\n" not in body.get("error_description", "")
    assert "\r" not in body.get("error_description", "")
    assert "\t" not in body.get("error_description", "")


@pytest.mark.parametrize(
    ("redirect_uri", "params", "expected"),
    [
        ("https://app.example/cb", {"code": "c", "state": None}, "https://app.example/cb?code=c"),
        ("https://app.example/cb?x=1", {"code": "c"}, "https://app.example/cb?x=1&code=c"),  # §3.1.2 kept
        ("https://app.example/", {"state": None}, "https://app.example/"),  # nothing added: no bare "?"
        ("https://app.example/?x=1", {}, "https://app.example/?x=1"),
    ],
)
def test_response_uri_adds_only_what_there_is(
    redirect_uri: str, params: dict[str, str | None], expected: str
) -> None:
    from bastion.protocol.rfc6749.authorize import response_uri

    assert response_uri(redirect_uri, params) == expected

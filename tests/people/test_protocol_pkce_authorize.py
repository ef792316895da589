"""Pure rules of PKCE (RFC 7636) and the authorization endpoint (RFC 6749 §4.1, OIDC, RFC 8252)."""

from __future__ import annotations

from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest

from bastion.protocol.errors import ConsentRequired
from bastion.protocol.errors import InvalidClient
from bastion.protocol.errors import InvalidGrant
from bastion.protocol.errors import InvalidRequest
from bastion.protocol.errors import InvalidScope
from bastion.protocol.errors import LoginRequired
from bastion.protocol.errors import UnauthorizedClient
from bastion.protocol.errors import UnsupportedResponseType
from bastion.protocol.models import Client
from bastion.protocol.rfc6749 import authorize as az
from bastion.protocol.rfc7636 import s256
from bastion.protocol.rfc7636 import validate_code_challenge
from bastion.protocol.rfc7636 import verify_code_verifier

# RFC 7636 Appendix B example.
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"

CLIENT = Client(
    client_id="web",
    name="Web",
    public=True,
    grant_types=frozenset({"authorization_code", "refresh_token"}),
    scopes=frozenset({"openid", "profile", "email", "offline_access", "orders:read", "orders:write"}),
    redirect_uris=("https://app.example/cb", "http://127.0.0.1/native", "http://[::1]/native?x=1"),
)


def test_s256_matches_rfc_7636_appendix_b() -> None:
    assert s256(VERIFIER) == CHALLENGE
    verify_code_verifier(VERIFIER, CHALLENGE)


@pytest.mark.parametrize(
    ("challenge", "method"),
    [
        (None, "S256"),
        (CHALLENGE, None),  # defaults to plain, which is refused
        (CHALLENGE, "plain"),
        (CHALLENGE, "s256"),
        (CHALLENGE[:-1], "S256"),
        (CHALLENGE[:-1] + "=", "S256"),
        (CHALLENGE[:-1] + "+", "S256"),
    ],
)
def test_code_challenge_refused(challenge: str | None, method: str | None) -> None:
    with pytest.raises(InvalidRequest):
        validate_code_challenge(challenge, method)


@pytest.mark.parametrize(
    "verifier",
    [None, "", VERIFIER[:42], "a" * 129, VERIFIER[:-1] + "!", "x" * 43],
)
def test_code_verifier_refused(verifier: str | None) -> None:
    with pytest.raises(InvalidGrant):
        verify_code_verifier(verifier, CHALLENGE)


def test_code_verifier_bounds_accepted() -> None:
    for verifier in ("a" * 43, "~._-" * 32):
        verify_code_verifier(verifier, s256(verifier))


@pytest.mark.parametrize(
    ("requested", "ok"),
    [
        ("https://app.example/cb", True),
        ("https://app.example/cb/", False),
        ("https://app.example/cb?x=1", False),
        ("https://APP.example/cb", False),
        ("https://app.example:443/cb", False),
        ("http://app.example/cb", False),
        ("http://127.0.0.1/native", True),
        ("http://127.0.0.1:51234/native", True),  # RFC 8252 §7.3: any port on loopback
        ("http://127.0.0.1:51234/other", False),
        ("http://127.0.0.1:51234/native?x=1", False),
        ("http://127.0.0.1:51234/native#f", False),
        ("http://user@127.0.0.1:51234/native", False),
        ("https://127.0.0.1:51234/native", False),
        ("http://localhost:51234/native", False),
        ("http://127.0.0.2:51234/native", False),
        ("http://[::1]:8080/native?x=1", True),
        ("http://[::1]:8080/native", False),
        ("http://127.0.0.1:99999/native", False),
    ],
)
def test_redirect_uri_matching(requested: str, ok: bool) -> None:
    assert (az.match_redirect_uri(CLIENT.redirect_uris, requested) is not None) is ok


def test_port_variation_only_for_loopback_registrations() -> None:
    assert az.match_redirect_uri(("https://app.example:8443/cb",), "https://app.example:9443/cb") is None
    assert az.match_redirect_uri(("http://localhost/cb",), "http://localhost:1234/cb") is None


def _params(**overrides: str | None) -> dict[str, str]:
    base: dict[str, str | None] = {
        "client_id": "web",
        "redirect_uri": "https://app.example/cb",
        "response_type": "code",
        "scope": "openid orders:read",
        "state": "xyz",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "nonce": "n-0S6",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _validate(params: dict[str, str], repeated: frozenset[str] = frozenset()) -> az.AuthorizationRequest:
    target = az.check_redirect_target(params, repeated, CLIENT)
    return az.validate_authorization_request(params, repeated, CLIENT, target)


def test_valid_request_round_trips() -> None:
    request = _validate(_params(prompt="login consent", max_age="300", login_hint="alice"))
    assert request.scope == ("openid", "orders:read")
    assert request.prompt == frozenset({"login", "consent"})
    assert request.max_age == 300
    assert az.AuthorizationRequest.from_dict(request.to_dict()) == request


@pytest.mark.parametrize(
    ("params", "client", "message"),
    [
        (_params(client_id=None), CLIENT, "client_id is required"),
        (_params(client_id="other"), None, "unknown client"),
        (
            _params(),
            Client(**{**{f: getattr(CLIENT, f) for f in CLIENT.__slots__}, "disabled": True}),
            "unknown",
        ),
        (_params(redirect_uri=None), CLIENT, "redirect_uri is required"),
        (_params(redirect_uri="https://evil.example/cb"), CLIENT, "not registered"),
    ],
)
def test_page_errors_never_redirect(params: dict[str, str], client: Client | None, message: str) -> None:
    with pytest.raises(az.AuthorizationPageError) as info:
        az.check_redirect_target(params, frozenset(), client)
    assert message in str(info.value)


def test_unknown_client_is_invalid_client_page() -> None:
    with pytest.raises(az.AuthorizationPageError) as info:
        az.check_redirect_target(_params(), frozenset(), None)
    assert isinstance(info.value.error, InvalidClient)


@pytest.mark.parametrize("name", ["client_id", "redirect_uri"])
def test_repeated_target_params_are_page_errors(name: str) -> None:
    with pytest.raises(az.AuthorizationPageError):
        az.check_redirect_target(_params(), frozenset({name}), CLIENT)


def test_collect_params_reports_repeats_and_drops_empty_values() -> None:
    params, repeated = az.collect_params([("a", "1"), ("b", ""), ("a", "2"), ("c", "3")])
    assert params == {"a": "2", "c": "3"}
    assert repeated == frozenset({"a"})


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"response_type": None}, InvalidRequest),
        ({"response_type": "token"}, UnsupportedResponseType),
        ({"response_type": "id_token"}, UnsupportedResponseType),
        ({"response_type": "code id_token"}, UnsupportedResponseType),
        ({"response_mode": "fragment"}, InvalidRequest),
        ({"code_challenge": None}, InvalidRequest),
        ({"code_challenge_method": "plain"}, InvalidRequest),
        ({"code_challenge_method": None}, InvalidRequest),
        ({"scope": None}, InvalidScope),
        ({"scope": "openid admin"}, InvalidScope),
        ({"scope": "openid  profile"}, InvalidScope),
        ({"prompt": "none login"}, InvalidRequest),
        ({"max_age": "-1"}, InvalidRequest),
        ({"max_age": "1e3"}, InvalidRequest),
        ({"nonce": "n" * 513}, InvalidRequest),
        ({"request": "eyJ..."}, az.RequestNotSupported),
        ({"request_uri": "urn:x"}, az.RequestUriNotSupported),
    ],
)
def test_redirectable_errors(overrides: dict[str, str | None], error: type[Exception]) -> None:
    with pytest.raises(error):
        _validate(_params(**overrides))


def test_repeated_other_param_is_redirectable_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        _validate(_params(), frozenset({"scope"}))


def test_client_without_code_grant_is_unauthorized() -> None:
    client = Client(
        client_id="web",
        name="Web",
        public=False,
        grant_types=frozenset({"client_credentials"}),
        scopes=frozenset({"openid"}),
        redirect_uris=("https://app.example/cb",),
    )
    params = _params(scope="openid")
    target = az.check_redirect_target(params, frozenset(), client)
    with pytest.raises(UnauthorizedClient):
        az.validate_authorization_request(params, frozenset(), client, target)


def test_overlong_state_is_not_echoed() -> None:
    params = _params(state="s" * 3000)
    target = az.check_redirect_target(params, frozenset(), CLIENT)
    assert target.state is None
    with pytest.raises(InvalidRequest):
        az.validate_authorization_request(params, frozenset(), CLIENT, target)


def test_grant_scope_is_intersection_with_roles_for_api_scopes() -> None:
    requested = ("openid", "email", "orders:read", "orders:write", "offline_access")
    granted = az.grant_scope(requested, CLIENT.scopes, frozenset({"orders:read"}))
    assert granted == ("openid", "email", "orders:read", "offline_access")
    assert az.grant_scope(("admin",), frozenset({"admin"}), frozenset()) == ()
    assert az.grant_scope(("orders:read",), frozenset(), frozenset({"orders:read"})) == ()


def test_response_uris_carry_state_and_iss_and_keep_query() -> None:
    target = az.RedirectTarget("web", "https://app.example/cb?tenant=a", "st&te")
    uri = az.code_response_uri(target, "CODE", "https://as.example")
    parts = urlsplit(uri)
    assert parse_qs(parts.query) == {
        "tenant": ["a"],
        "code": ["CODE"],
        "state": ["st&te"],
        "iss": ["https://as.example"],
    }
    error = az.error_response_uri(
        az.RedirectTarget("web", "https://app.example/cb", None),
        InvalidScope("no"),
        "https://as.example",
    )
    assert parse_qs(urlsplit(error).query) == {
        "error": ["invalid_scope"],
        "error_description": ["no"],
        "iss": ["https://as.example"],
    }


REQUEST = az.AuthorizationRequest(
    client_id="web", redirect_uri="https://app.example/cb", scope=("openid",), code_challenge=CHALLENGE
)


def _decide(request: az.AuthorizationRequest = REQUEST, **kwargs: object) -> az.Interaction:
    args: dict[str, object] = {
        "auth_time": 1000.0,
        "signed_in_for_request": False,
        "consent_covers": True,
        "consented_for_request": False,
        "first_party": False,
        "now": 1100.0,
    }
    args.update(kwargs)
    return az.required_interaction(request, **args)  # type: ignore[arg-type]


def _with(**changes: object) -> az.AuthorizationRequest:
    return az.AuthorizationRequest.from_dict({**REQUEST.to_dict(), **changes})


def test_interaction_rules() -> None:
    assert _decide() is az.Interaction.NONE
    assert _decide(auth_time=None) is az.Interaction.LOGIN
    assert _decide(consent_covers=False) is az.Interaction.CONSENT
    assert _decide(consent_covers=False, first_party=True) is az.Interaction.NONE
    assert _decide(consent_covers=False, consented_for_request=True) is az.Interaction.NONE
    # prompt=login forces a login until the user signed in during this request.
    assert _decide(_with(prompt=["login"])) is az.Interaction.LOGIN
    assert _decide(_with(prompt=["login"]), signed_in_for_request=True) is az.Interaction.NONE
    # prompt=consent forces the screen, even for first-party clients.
    assert _decide(_with(prompt=["consent"]), first_party=True) is az.Interaction.CONSENT
    # max_age: elapsed time greater than max_age means a fresh login.
    assert _decide(_with(max_age=100)) is az.Interaction.NONE
    assert _decide(_with(max_age=99)) is az.Interaction.LOGIN
    assert _decide(_with(max_age=0), signed_in_for_request=True) is az.Interaction.NONE


def test_prompt_none_never_interacts() -> None:
    none = _with(prompt=["none"])
    assert _decide(none) is az.Interaction.NONE
    with pytest.raises(LoginRequired):
        _decide(none, auth_time=None)
    with pytest.raises(LoginRequired):
        _decide(_with(prompt=["none"], max_age=10))
    with pytest.raises(ConsentRequired):
        _decide(none, consent_covers=False)

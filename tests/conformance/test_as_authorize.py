"""The authorization endpoint against RFC 6749 §4.1, RFC 7636, RFC 8252 §7.3, RFC 9207,
RFC 9700 §2.1 and OIDC Core §3.1.2, through the whole ASGI app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx2 as httpx
import pytest

from bastion.protocol.rfc7636 import s256
from tests.conformance.test_as_harness import ClockedHarness
from tests.conformance.test_as_harness import make_clocked_harness
from tests.people.flows import query
from tests.people.test_endpoints import ISSUER
from tests.people.test_endpoints import assert_page_headers
from tests.people.test_endpoints import authorize_url
from tests.people.test_endpoints import code_for
from tests.people.test_endpoints import exchange
from tests.people.test_endpoints import form_fields
from tests.people.test_endpoints import login


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ClockedHarness]:
    yield from make_clocked_harness(tmp_path)


def _redirected_error(harness: ClockedHarness, url: str) -> dict[str, str]:
    response = harness.client.get(url)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith("https://app.example/cb?"), location
    params = query(location)
    assert "code" not in params
    assert params["state"] == "st"
    assert params["iss"] == ISSUER
    return params


def _page_error(harness: ClockedHarness, url: str) -> None:
    response = harness.client.get(url)
    assert response.status_code in (400, 401), response.status_code
    assert "location" not in response.headers
    assert_page_headers(response)


def _signed_in(harness: ClockedHarness) -> None:
    """Sign alice in and consent once, so later requests need no interaction."""
    exchange(harness, code_for(harness))


# -- response_type (OAuth 2.1 §4.1.1: code only) ----------------------------------------------


@pytest.mark.parametrize("response_type", ["token", "id_token", "code id_token", "code token", "none"])
def test_response_types_other_than_code_are_refused(harness: ClockedHarness, response_type: str) -> None:
    _signed_in(harness)  # a signed-in user must not get a code or a token through another type
    params = _redirected_error(harness, authorize_url(response_type=response_type))
    assert params["error"] == "unsupported_response_type"
    assert "access_token" not in params
    assert "id_token" not in params


def test_missing_or_empty_response_type_is_invalid_request(harness: ClockedHarness) -> None:
    url = "/authorize?" + urlencode(
        {
            "client_id": "web",
            "redirect_uri": "https://app.example/cb",
            "scope": "openid",
            "state": "st",
            "code_challenge": s256("v" * 43),
            "code_challenge_method": "S256",
        }
    )
    assert _redirected_error(harness, url)["error"] == "invalid_request"
    assert _redirected_error(harness, authorize_url(response_type=""))["error"] == "invalid_request"


def test_repeated_parameters_are_refused(harness: ClockedHarness) -> None:
    # RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
    params = _redirected_error(harness, authorize_url() + "&response_type=token")
    assert params["error"] == "invalid_request"
    params = _redirected_error(harness, authorize_url() + "&scope=openid")
    assert params["error"] == "invalid_request"
    # A repeated client_id or redirect_uri leaves no trusted place to redirect to.
    _page_error(harness, authorize_url() + "&redirect_uri=https%3A%2F%2Fevil.example%2Fcb")
    _page_error(harness, authorize_url() + "&client_id=web")


# -- PKCE (RFC 7636, RFC 9700 §2.1.1: S256 for every client) ------------------------------------


@pytest.mark.parametrize(
    ("challenge", "method"),
    [
        (None, None),  # no PKCE at all
        (None, "S256"),
        (s256("v" * 43), None),  # the method would default to plain
        (s256("v" * 43), "plain"),
        ("v" * 43, "plain"),
        (s256("v" * 43), "s256"),
        (s256("v" * 43)[:42], "S256"),  # too short
        ("a" * 129, "S256"),  # too long
        (s256("v" * 43)[:42] + "+", "S256"),  # outside the unreserved set
        (s256("v" * 43)[:42] + "=", "S256"),
        (s256("v" * 43)[:42] + "%", "S256"),
        (s256("v" * 43)[:42] + " ", "S256"),
    ],
)
def test_pkce_missing_plain_or_malformed_is_invalid_request(
    harness: ClockedHarness, challenge: str | None, method: str | None
) -> None:
    url = "/authorize?" + urlencode(
        {
            key: value
            for key, value in {
                "response_type": "code",
                "client_id": "web",
                "redirect_uri": "https://app.example/cb",
                "scope": "openid",
                "state": "st",
                "code_challenge": challenge,
                "code_challenge_method": method,
            }.items()
            if value is not None
        }
    )
    # RFC 7636 §4.4.1: the error is "invalid_request".
    assert _redirected_error(harness, url)["error"] == "invalid_request"


def test_pkce_is_required_of_confidential_clients_too(harness: ClockedHarness) -> None:
    harness.confidential_client()
    response = harness.client.get(
        "/authorize?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": "conf",
                "redirect_uri": "https://conf.example/cb",
                "scope": "openid",
                "state": "st",
            }
        )
    )
    assert response.status_code == 302
    assert query(response.headers["location"])["error"] == "invalid_request"


# -- redirect_uri (RFC 9700 §2.1 exact matching, RFC 6749 §4.1.2.1 no redirect when invalid) ---


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/cb",
        "https://app.example/cb/",  # suffix
        "https://app.example/cbx",
        "https://app.example/c",  # prefix
        "https://app.example/",
        "https://app.example",
        "https://APP.example/cb",  # case in host
        "https://app.example/CB",  # case in path
        "HTTPS://app.example/cb",
        "https://app.example/cb?x=1",  # extra query
        "https://app.example/cb?",
        "https://app.example/cb#frag",  # fragment
        "https://app.example/cb#",
        "https://app.example@evil.example/cb",  # userinfo
        "https://app.example:443@evil.example/cb",
        "https://evil.example@app.example/cb",
        "https://app.example.evil.example/cb",
        "https://app.example/cb/../x",  # path traversal
        "https://app.example/cb/..",
        "https://app.example/x/../cb",
        "https://app.example/%63b",  # percent-encoded variant
        "https://app.example:443/cb",  # explicit default port
        "https://app.example:8443/cb",
        "http://app.example/cb",  # scheme downgrade
        "//app.example/cb",
        "/cb",
        "https://app.example/cb\\@evil.example",
        "https://app.example\\@evil.example/cb",
        " https://app.example/cb",
        "https://app.example/cb ",
        "https://app.example/cb\t",
        "https://app.example/c\nb",
        "https://app.example/cb\x00",
        "javascript:alert(1)//https://app.example/cb",
    ],
)
def test_unregistered_redirect_uri_variants_get_an_error_page(
    harness: ClockedHarness, redirect_uri: str
) -> None:
    _page_error(harness, authorize_url(redirect_uri=redirect_uri))


def test_missing_redirect_uri_and_unknown_client_get_an_error_page(harness: ClockedHarness) -> None:
    url = authorize_url()
    _page_error(harness, url.replace("redirect_uri=", "redirect_urx="))
    _page_error(harness, authorize_url(client_id="nobody"))
    _page_error(harness, authorize_url(client_id=""))
    _page_error(harness, authorize_url(client_id="web\x00"))
    _page_error(harness, authorize_url(client_id="w" * 5000))


def test_a_disabled_client_gets_an_error_page(harness: ClockedHarness) -> None:
    harness.run(harness.services.clients.set_disabled, "web")
    _page_error(harness, authorize_url())


def _loopback_client(harness: ClockedHarness, *uris: str) -> None:
    harness.run(
        harness.services.clients.create,
        name="Native",
        public=True,
        grant_types=["authorization_code"],
        scopes=["openid"],
        redirect_uris=list(uris),
        client_id="native",
    )


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        ("http://127.0.0.1/cb", True),
        ("http://127.0.0.1:49152/cb", True),  # RFC 8252 §7.3: any port
        ("http://127.0.0.1:1/cb", True),
        ("http://[::1]:49152/cb", True),
        ("http://127.0.0.1:49152/cb/", False),
        ("http://127.0.0.1:49152/other", False),
        ("http://127.0.0.1:49152/cb?x=1", False),
        ("http://127.0.0.1:49152/cb#x", False),
        ("http://127.0.0.1:49152/cb#", False),
        ("https://127.0.0.1:49152/cb", False),
        ("http://127.0.0.2:49152/cb", False),
        ("http://localhost:49152/cb", False),  # §8.3: localhost names get no port freedom
        ("http://user@127.0.0.1:49152/cb", False),
        ("http://127.0.0.1:49152@evil.example/cb", False),
        ("http://127.0.0.1:49152\\@evil.example/cb", False),
        ("http://127.0.0.1:65536/cb", False),
        ("http://127.0.0.1:49\t152/cb", False),  # urlsplit drops tabs and newlines
        ("http://127.0.0.1:49152/c\nb", False),
        ("http://127.0.0.1:49152/cb\r", False),
        ("http://127.0.0.1:+80/cb", False),
        ("http://127.0.0.1:0x50/cb", False),
    ],
)
def test_loopback_redirect_port_variation(harness: ClockedHarness, requested: str, allowed: bool) -> None:
    _loopback_client(harness, "http://127.0.0.1/cb", "http://[::1]/cb", "http://localhost/cb")
    url = authorize_url(client_id="native", redirect_uri=requested, scope="openid")
    response = harness.client.get(url)
    if not allowed:
        assert response.status_code in (400, 401), response.headers.get("location")
        assert "location" not in response.headers
        return
    assert response.status_code == 302
    assert response.headers["location"].startswith("/login?tx=")


def test_port_variation_is_not_granted_to_non_loopback_registrations(harness: ClockedHarness) -> None:
    _loopback_client(harness, "http://localhost:8080/cb", "https://app.example:8443/cb")
    for requested in ("http://localhost:9090/cb", "http://localhost/cb", "https://app.example:9443/cb"):
        _page_error(harness, authorize_url(client_id="native", redirect_uri=requested, scope="openid"))


# -- state and iss (RFC 6749 §4.1.2, RFC 9207 §2) --------------------------------------------


def test_state_and_iss_on_success(harness: ClockedHarness) -> None:
    response = login(harness, authorize_url(state="a b&c=d/é"))
    response = harness.client.get(response.headers["location"])
    if response.headers["location"].startswith("/consent"):
        from tests.people.test_endpoints import consent

        response = consent(harness, response.headers["location"])
    # A redirect carrying a code is never stored by a cache (RFC 6749 §10.5 short-lived, one use).
    assert response.headers["cache-control"] == "no-store"
    params = query(response.headers["location"])
    assert params["state"] == "a b&c=d/é"
    assert params["iss"] == ISSUER
    assert set(params) == {"code", "state", "iss"}


def test_no_state_is_invented(harness: ClockedHarness) -> None:
    url = authorize_url(response_type="token").replace("state=st&", "")
    response = harness.client.get(url)
    params = query(response.headers["location"])
    assert "state" not in params
    assert params["iss"] == ISSUER


def test_registered_query_is_kept_in_responses(harness: ClockedHarness) -> None:
    _loopback_client(harness, "https://native.example/cb?tenant=1")
    response = harness.client.get(
        authorize_url(
            client_id="native",
            redirect_uri="https://native.example/cb?tenant=1",
            scope="openid",
            prompt="none",
        )
    )
    location = response.headers["location"]
    assert location.startswith("https://native.example/cb?tenant=1&")
    assert query(location)["error"] == "login_required"


# -- request objects (OIDC Core §6, §3.1.2.6) ---------------------------------------------------


def test_request_and_request_uri_are_not_supported(harness: ClockedHarness) -> None:
    params = _redirected_error(harness, authorize_url(request="eyJhbGciOiJub25lIn0.e30."))
    assert params["error"] == "request_not_supported"
    params = _redirected_error(harness, authorize_url(request_uri="https://evil.example/r"))
    assert params["error"] == "request_uri_not_supported"


# -- prompt, max_age (OIDC Core §3.1.2.1) --------------------------------------------------------


def test_prompt_none_without_a_session_is_login_required(harness: ClockedHarness) -> None:
    assert _redirected_error(harness, authorize_url(prompt="none"))["error"] == "login_required"
    params = _redirected_error(harness, authorize_url(prompt="none login"))
    assert params["error"] == "invalid_request"


def test_prompt_none_with_a_session_and_consent_issues_a_code(harness: ClockedHarness) -> None:
    _signed_in(harness)
    response = harness.client.get(authorize_url(prompt="none"))
    params = query(response.headers["location"])
    assert set(params) == {"code", "state", "iss"}


def test_prompt_login_forces_a_new_sign_in(harness: ClockedHarness) -> None:
    _signed_in(harness)
    response = harness.client.get(authorize_url(prompt="login"))
    assert response.headers["location"].startswith("/login?tx=")


def test_max_age_zero_forces_a_new_sign_in_even_at_once(harness: ClockedHarness) -> None:
    # OIDC Core §3.1.2.1: "Note that max_age=0 is equivalent to prompt=login."
    _signed_in(harness)
    response = harness.client.get(authorize_url(max_age="0"))
    assert response.headers["location"].startswith("/login?tx=")
    response = harness.client.get(authorize_url(max_age="0", prompt="none"))
    assert query(response.headers["location"])["error"] == "login_required"
    # Signing in again for the request completes it (no loop back to the login page).
    response = login(harness, authorize_url(max_age="0"))
    response = harness.client.get(response.headers["location"])
    assert set(query(response.headers["location"])) == {"code", "state", "iss"}


def test_max_age_elapsed_forces_a_new_sign_in_and_auth_time_follows(harness: ClockedHarness) -> None:
    _signed_in(harness)
    first_auth = int(harness.clock.now)
    harness.tick(100)
    response = harness.client.get(authorize_url(max_age="200"))
    params = query(response.headers["location"])
    assert "code" in params
    from tests.conformance.test_as_harness import claims_of

    assert claims_of(exchange(harness, params["code"])["id_token"])["auth_time"] == first_auth
    response = harness.client.get(authorize_url(max_age="50"))
    assert response.headers["location"].startswith("/login?tx=")


@pytest.mark.parametrize("max_age", ["-1", "abc", "1.5", "99999999999", "١٢"])
def test_malformed_max_age_is_invalid_request(harness: ClockedHarness, max_age: str) -> None:
    assert _redirected_error(harness, authorize_url(max_age=max_age))["error"] == "invalid_request"


# -- scope ------------------------------------------------------------------------------------


def test_unknown_scope_is_invalid_scope(harness: ClockedHarness) -> None:
    assert _redirected_error(harness, authorize_url(scope="openid admin"))["error"] == "invalid_scope"
    assert _redirected_error(harness, authorize_url(scope="openid  profile"))["error"] == "invalid_scope"
    assert _redirected_error(harness, authorize_url(scope='openid "x'))["error"] == "invalid_scope"


def test_scope_without_openid_gets_no_id_token(harness: ClockedHarness) -> None:
    tokens = exchange(harness, code_for(harness, authorize_url(scope="orders:read offline_access")))
    assert "id_token" not in tokens
    assert tokens["scope"] == "orders:read offline_access"
    refreshed = harness.client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "web"},
    )
    assert refreshed.status_code == 200
    assert "id_token" not in refreshed.json()


def test_client_without_the_code_grant_is_unauthorized(harness: ClockedHarness) -> None:
    harness.run(
        harness.services.clients.create,
        name="Odd",
        public=True,
        grant_types=["refresh_token"],
        scopes=["openid"],
        redirect_uris=["https://odd.example/cb"],
        client_id="odd",
    )
    response = harness.client.get(authorize_url(client_id="odd", redirect_uri="https://odd.example/cb"))
    assert query(response.headers["location"])["error"] == "unauthorized_client"


def test_post_to_authorize_follows_the_same_rules(harness: ClockedHarness) -> None:
    # OIDC Core §3.1.2.1: the authorization endpoint MUST support POST.
    response = harness.client.post(
        "/authorize",
        data={
            "response_type": "code",
            "client_id": "web",
            "redirect_uri": "https://evil.example/cb",
            "scope": "openid",
            "code_challenge": s256("v" * 43),
            "code_challenge_method": "S256",
        },
    )
    assert response.status_code == 400
    assert "location" not in response.headers
    response = harness.client.post(
        "/authorize",
        data={
            "response_type": "code",
            "client_id": "web",
            "redirect_uri": "https://app.example/cb",
            "scope": "openid",
            "state": "st",
            "prompt": "none",
            "code_challenge": s256("v" * 43),
            "code_challenge_method": "S256",
        },
    )
    assert query(response.headers["location"])["error"] == "login_required"


def test_loopback_registered_with_a_port_accepts_the_default_port(harness: ClockedHarness) -> None:
    # RFC 8252 §7.3: "MUST allow any port to be specified at the time of the request for
    # loopback IP redirect URIs": port 80 written implicitly is a port too.
    _loopback_client(harness, "http://127.0.0.1:8080/cb")
    for requested in ("http://127.0.0.1/cb", "http://127.0.0.1:80/cb", "http://127.0.0.1:9090/cb"):
        response = harness.client.get(
            authorize_url(client_id="native", redirect_uri=requested, scope="openid")
        )
        assert response.status_code == 302, requested
        assert response.headers["location"].startswith("/login?tx="), requested


@pytest.mark.parametrize(
    "uri",
    [
        "javascript:alert(document.domain)",
        "JavaScript://app.example/%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
    ],
)
def test_script_and_local_schemes_cannot_be_registered(harness: ClockedHarness, uri: str) -> None:
    from bastion.services.clients import ClientError

    for field in ("redirect_uris", "post_logout_redirect_uris"):
        with pytest.raises(ClientError):
            harness.run(
                harness.services.clients.create,
                name="Bad",
                public=True,
                grant_types=["authorization_code"],
                scopes=["openid"],
                **{"redirect_uris": ["https://bad.example/cb"], field: [uri]},
            )


# -- id_token_hint (OIDC Core §3.1.2.1) -----------------------------------------------------------


def _bob(harness: ClockedHarness) -> None:
    from bastion.services.users import create_user
    from tests.people.support import CHEAP_PASSWORDS

    harness.run(create_user, harness.services, "bob", "bob's long password", passwords=CHEAP_PASSWORDS)


def test_id_token_hint_of_the_signed_in_user_is_honoured(harness: ClockedHarness) -> None:
    tokens = exchange(harness, code_for(harness))
    response = harness.client.get(authorize_url(prompt="none", id_token_hint=tokens["id_token"]))
    assert set(query(response.headers["location"])) == {"code", "state", "iss"}


def test_id_token_hint_of_another_user_is_not_answered_with_the_session_user(harness: ClockedHarness) -> None:
    # OIDC Core §3.1.2.1: "If the End-User identified by the ID Token is logged in or is logged
    # in by the request, then the Authorization Server returns a positive response; otherwise, it
    # SHOULD return an error, such as login_required."
    alice_tokens = exchange(harness, code_for(harness))
    _bob(harness)
    harness.client.cookies.clear()
    response = login_as(harness, "bob", "bob's long password")
    assert response.status_code == 303
    # Bob's browser, Alice's hint: no silent code for Bob.
    hinted = harness.client.get(authorize_url(prompt="none", id_token_hint=alice_tokens["id_token"]))
    assert query(hinted.headers["location"])["error"] == "login_required"
    # Without prompt=none the user is asked to sign in.
    hinted = harness.client.get(authorize_url(id_token_hint=alice_tokens["id_token"]))
    assert hinted.headers["location"].startswith("/login?tx=")


def test_a_forged_or_foreign_id_token_hint_is_refused(harness: ClockedHarness) -> None:
    from bastion.protocol import jose

    tokens = exchange(harness, code_for(harness))
    forged = jose.encode_jwt(
        "RS256",
        jose.generate_private_key("RS256"),
        {"typ": "JWT", "kid": "x"},
        {"iss": ISSUER, "aud": "web", "sub": "someone", "exp": 9_999_999_999, "iat": 1},
    )
    for hint in (forged, "garbage", tokens["access_token"]):
        response = harness.client.get(authorize_url(prompt="none", id_token_hint=hint))
        assert query(response.headers["location"])["error"] in ("invalid_request", "login_required"), hint
        assert "code" not in query(response.headers["location"])


def login_as(harness: ClockedHarness, username: str, password: str) -> httpx.Response:
    """Start an authorization request and sign in as ``username`` on its login page."""
    response = harness.client.get(authorize_url())
    page = harness.client.get(response.headers["location"])
    csrf, tx = form_fields(page.text)
    return harness.client.post(
        "/login", data={"csrf_token": csrf, "tx": tx, "username": username, "password": password}
    )

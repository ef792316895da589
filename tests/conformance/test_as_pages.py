"""The login, consent and logout pages as an attacker sees them: CSRF, session fixation, open
redirects, framing, user enumeration, throttling, and OpenID Connect RP-Initiated Logout 1.0."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2 as httpx
import pytest

from bastion.protocol import jose
from bastion.services.users import set_disabled
from tests.conformance.test_as_harness import ClockedHarness
from tests.conformance.test_as_harness import make_clocked_harness
from tests.conformance.test_as_harness import obtain_code
from tests.people.flows import PASSWORD
from tests.people.flows import query
from tests.people.test_endpoints import CSRF_RE
from tests.people.test_endpoints import assert_page_headers
from tests.people.test_endpoints import authorize_url
from tests.people.test_endpoints import exchange
from tests.people.test_endpoints import form_fields
from tests.people.test_endpoints import login

COOKIE = "bastion_session"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ClockedHarness]:
    yield from make_clocked_harness(tmp_path)


def login_page(harness: ClockedHarness) -> httpx.Response:
    response = harness.client.get(authorize_url())
    page = harness.client.get(response.headers["location"])
    assert page.status_code == 200
    return page


def post_login(harness: ClockedHarness, page: httpx.Response, **fields: str) -> httpx.Response:
    csrf, tx = form_fields(page.text)
    data = {"csrf_token": csrf, "tx": tx, "username": "alice", "password": PASSWORD}
    data.update(fields)
    return harness.client.post("/login", data={k: v for k, v in data.items() if v is not None})


# -- CSRF -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("csrf", [None, "", "forged", "x" * 5000])
def test_login_without_the_sessions_csrf_token_is_refused(harness: ClockedHarness, csrf: str | None) -> None:
    page = login_page(harness)
    _, tx = form_fields(page.text)
    data = {"tx": tx, "username": "alice", "password": PASSWORD}
    if csrf is not None:
        data["csrf_token"] = csrf
    response = harness.client.post("/login", data=data)
    assert response.status_code in (400, 403)
    assert "location" not in response.headers
    assert "set-cookie" not in response.headers


def test_csrf_token_of_another_session_is_refused(harness: ClockedHarness) -> None:
    page = login_page(harness)
    attacker_csrf, _ = form_fields(page.text)
    harness.client.cookies.clear()
    victim_page = login_page(harness)
    _, tx = form_fields(victim_page.text)
    response = harness.client.post(
        "/login", data={"csrf_token": attacker_csrf, "tx": tx, "username": "alice", "password": PASSWORD}
    )
    assert response.status_code in (400, 403)


def test_consent_needs_the_csrf_token(harness: ClockedHarness) -> None:
    response = login(harness)
    consent_location = harness.client.get(response.headers["location"]).headers["location"]
    page = harness.client.get(consent_location)
    csrf, tx = form_fields(page.text)
    for data in (
        {"tx": tx, "decision": "allow"},
        {"csrf_token": "forged", "tx": tx, "decision": "allow"},
        {"csrf_token": csrf, "tx": tx, "decision": "maybe"},
        {"csrf_token": csrf, "tx": "other", "decision": "allow"},
    ):
        refused = harness.client.post("/consent", data=data)
        assert refused.status_code in (400, 403)
        assert "location" not in refused.headers
    allowed = harness.client.post("/consent", data={"csrf_token": csrf, "tx": tx, "decision": "allow"})
    assert allowed.status_code == 303
    assert "code" in query(allowed.headers["location"])


def test_a_pending_request_belongs_to_its_browser(harness: ClockedHarness) -> None:
    response = harness.client.get(authorize_url())
    tx_location = response.headers["location"]
    harness.client.cookies.clear()
    # Another browser (the victim, lured to the attacker's tx) gets no login form for it.
    stolen = harness.client.get(tx_location)
    assert stolen.status_code == 400
    assert "csrf_token" not in stolen.text


# -- session fixation -------------------------------------------------------------------------------


def test_session_id_rotates_at_sign_in(harness: ClockedHarness) -> None:
    page = login_page(harness)
    before = harness.client.cookies.get(COOKIE)
    assert before
    response = post_login(harness, page)
    assert response.status_code == 303
    after = response.cookies.get(COOKIE)
    assert after
    assert after != before
    # The pre-login cookie (which an attacker could have planted) is worth nothing afterwards.
    harness.client.cookies.clear()
    harness.client.cookies.set(COOKIE, before)
    response = harness.client.get(authorize_url(prompt="none"))
    assert query(response.headers["location"])["error"] == "login_required"


def test_a_planted_unknown_session_id_is_replaced(harness: ClockedHarness) -> None:
    harness.client.cookies.set(COOKIE, "attacker-chosen-value")
    response = harness.client.get(authorize_url())
    cookie = response.cookies.get(COOKIE)
    assert cookie
    assert cookie != "attacker-chosen-value"


# -- open redirects and framing -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["next", "return_to", "redirect", "redirect_uri", "continue", "url", "rd"])
def test_no_parameter_of_the_login_page_redirects_elsewhere(harness: ClockedHarness, name: str) -> None:
    page = login_page(harness)
    csrf, tx = form_fields(page.text)
    response = harness.client.post(
        f"/login?{name}=https://evil.example/",
        data={
            "csrf_token": csrf,
            "tx": tx,
            "username": "alice",
            "password": PASSWORD,
            name: "//evil.example",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/authorize/resume?tx=")
    final = harness.client.get(response.headers["location"] + f"&{name}=https://evil.example/")
    location = final.headers["location"]
    assert location.startswith(("/consent?", "https://app.example/cb?")), location


def test_pages_refuse_framing(harness: ClockedHarness) -> None:
    page = login_page(harness)
    assert_page_headers(page)
    error = harness.client.get(authorize_url(client_id="ghost"))
    assert_page_headers(error)
    logout = harness.client.get("/logout")
    assert_page_headers(logout)


# -- enumeration and throttling --------------------------------------------------------------------------


def _error_text(response: httpx.Response) -> str:
    found = re.search(r'<p class="error"[^>]*>([^<]*)</p>', response.text)
    assert found is not None, response.text
    return found.group(1)


def test_unknown_user_wrong_password_and_disabled_account_look_the_same(harness: ClockedHarness) -> None:
    page = login_page(harness)
    unknown = post_login(harness, page, username="mallory", password="whatever whatever")
    wrong = post_login(harness, unknown, username="alice", password="whatever whatever")
    harness.run(set_disabled, harness.services, "alice")
    disabled = post_login(harness, wrong, username="alice", password=PASSWORD)
    assert unknown.status_code == wrong.status_code == disabled.status_code == 400
    assert _error_text(unknown) == _error_text(wrong) == _error_text(disabled)
    assert "set-cookie" not in disabled.headers


def test_throttled_login_is_429_with_retry_after(harness: ClockedHarness) -> None:
    page = login_page(harness)
    statuses = []
    for _ in range(5):  # lockout_after=4 in the harness
        page = post_login(harness, page, password="not the password")
        statuses.append(page.status_code)
    assert statuses[-1] == 429
    assert int(page.headers["retry-after"]) >= 1
    # While locked, even the right password is refused.
    right = post_login(harness, page)
    assert right.status_code == 429


# -- RP-Initiated Logout 1.0 ----------------------------------------------------------------------------


def hidden_fields(page: httpx.Response) -> dict[str, str]:
    """The hidden inputs of a page's form, unescaped as a browser would submit them."""
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
    return {html.unescape(name): html.unescape(value) for name, value in found}


def _signed_in_tokens(harness: ClockedHarness) -> dict[str, Any]:
    return exchange(harness, obtain_code(harness))


def _prompt_none(harness: ClockedHarness) -> dict[str, str]:
    return query(harness.client.get(authorize_url(prompt="none")).headers["location"])


def test_logout_redirects_only_to_registered_uris_with_state(harness: ClockedHarness) -> None:
    tokens = _signed_in_tokens(harness)
    for uri in (
        "https://evil.example/",
        "https://app.example/bye/",
        "https://app.example/bye?x=1",
        "https://app.example/cb",
    ):
        response = harness.client.get(
            "/logout?" + urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": uri})
        )
        assert response.status_code == 400, uri
        assert "location" not in response.headers
    page = harness.client.get(
        "/logout?"
        + urlencode(
            {
                "id_token_hint": tokens["id_token"],
                "post_logout_redirect_uri": "https://app.example/bye",
                "state": "s&1",
            }
        )
    )
    assert page.status_code == 200
    fields = hidden_fields(page)
    done = harness.client.post("/logout", data=fields)
    assert done.status_code == 303
    assert done.headers["location"] == "https://app.example/bye?state=s%261"
    assert _prompt_none(harness)["error"] == "login_required"


def test_logout_needs_a_client_to_redirect(harness: ClockedHarness) -> None:
    response = harness.client.get(
        "/logout?" + urlencode({"post_logout_redirect_uri": "https://app.example/bye"})
    )
    assert response.status_code == 400
    assert "location" not in response.headers


def test_id_token_hint_is_verified(harness: ClockedHarness) -> None:
    tokens = _signed_in_tokens(harness)
    header, payload, signature = tokens["id_token"].split(".")
    other_key = jose.generate_private_key("RS256")
    forged_claims = {"iss": "http://127.0.0.1:8000", "aud": "web", "sub": "x", "exp": 9999999999}
    forged = jose.encode_jwt("RS256", other_key, {"typ": "JWT", "kid": "nope"}, forged_claims)
    unsigned = jose.b64url_encode(b'{"alg":"none"}') + "." + payload + "."
    for hint in (
        header + "." + payload + "." + signature[:-4] + "AAAA",
        forged,
        unsigned,
        "not-a-jwt",
        tokens["access_token"],  # signed by this issuer, but not an ID token
    ):
        response = harness.client.get(
            "/logout?"
            + urlencode({"id_token_hint": hint, "post_logout_redirect_uri": "https://app.example/bye"})
        )
        assert response.status_code == 400, hint
        assert "location" not in response.headers
    # The hint names "web": another client_id contradicts it (§2).
    response = harness.client.get(
        "/logout?" + urlencode({"id_token_hint": tokens["id_token"], "client_id": "conf"})
    )
    assert response.status_code == 400


def test_logout_by_post_from_the_relying_party(harness: ClockedHarness) -> None:
    # RP-Initiated Logout §2: "OPs MUST support the use of the HTTP GET and POST methods at the
    # Logout Endpoint." A relying party's form post carries no CSRF token of ours: it must lead
    # to the same confirmation a GET does, not to an error.
    tokens = _signed_in_tokens(harness)
    data = {
        "id_token_hint": tokens["id_token"],
        "post_logout_redirect_uri": "https://app.example/bye",
        "state": "s1",
    }
    page = harness.client.post("/logout", data=data)
    assert page.status_code == 200, page.text
    assert CSRF_RE.search(page.text) is not None
    assert "code" in _prompt_none(harness), "a POST alone must not sign the user out"
    fields = hidden_fields(page)
    done = harness.client.post("/logout", data=fields)
    assert done.status_code == 303
    assert done.headers["location"] == "https://app.example/bye?state=s1"
    assert _prompt_none(harness)["error"] == "login_required"
    # Without a session there is nothing to confirm: straight back to the relying party.
    harness.client.cookies.clear()
    gone = harness.client.post("/logout", data=data)
    assert gone.status_code == 303
    assert gone.headers["location"] == "https://app.example/bye?state=s1"


def test_logout_confirmation_with_a_wrong_csrf_token_keeps_the_session(harness: ClockedHarness) -> None:
    tokens = _signed_in_tokens(harness)
    page = harness.client.get("/logout?" + urlencode({"id_token_hint": tokens["id_token"]}))
    fields = hidden_fields(page)
    fields["csrf_token"] = "forged"
    response = harness.client.post("/logout", data=fields)
    assert response.status_code == 400
    assert "code" in _prompt_none(harness)


def test_an_access_token_is_not_an_id_token_hint_even_with_one_algorithm(tmp_path: Path) -> None:
    # RFC 8725 §3.11 (explicit typing): with access and ID tokens signed by the same algorithm,
    # an RFC 9068 access token ("typ": "at+jwt") must not pass for an ID token.
    for harness in make_clocked_harness(tmp_path, access_token_algorithm="RS256", id_token_algorithm="RS256"):
        tokens = _signed_in_tokens(harness)
        assert jose.parse_compact(tokens["access_token"]).header["alg"] == "RS256"
        response = harness.client.get("/logout?" + urlencode({"id_token_hint": tokens["access_token"]}))
        assert response.status_code == 400
        response = harness.client.get("/logout?" + urlencode({"id_token_hint": tokens["id_token"]}))
        assert response.status_code == 200


def test_error_pages_are_not_401_without_a_challenge(harness: ClockedHarness) -> None:
    # RFC 9110 §15.5.2: "The server generating a 401 response MUST send a WWW-Authenticate
    # header field". An HTML page has no scheme to offer: an unknown client is a 400.
    for url in (authorize_url(client_id="ghost"), authorize_url(client_id="")):
        response = harness.client.get(url)
        assert response.status_code == 400 or "www-authenticate" in response.headers
        assert "location" not in response.headers

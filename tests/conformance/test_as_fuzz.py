"""No input makes the authorization server fail: random forms, queries, headers, huge values,
unicode and NULs at every endpoint get a 2xx-4xx answer (the test client re-raises any
exception the app lets escape, so an unhandled error fails the example outright)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.conformance.test_as_harness import ClockedHarness
from tests.conformance.test_as_harness import make_clocked_harness
from tests.people.test_endpoints import authorize_url
from tests.people.test_endpoints import form_fields

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NAMES = [
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "client_id",
    "client_secret",
    "refresh_token",
    "scope",
    "token",
    "token_type_hint",
    "resource",
    "response_type",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "request",
    "request_uri",
    "response_mode",
    "login_hint",
    "id_token_hint",
    "post_logout_redirect_uri",
    "csrf_token",
    "tx",
    "username",
    "password",
    "decision",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "web",
            "code",
            "S256",
            "https://app.example/cb",
            "none",
            "0",
            "-1",
            "a.b.c",
            "eyJhbGciOiJub25lIn0.e30.",
            "eyJhbGciOiJSUzI1NiIsImtpZCI6W119.e30.AA",
            "\x00",
            "é" * 3,
            "\ud7ff",
            "x" * 12_000,
            "%00",
            "%ff",
            "allow",
            "openid profile",
        ]
    ),
    st.text(max_size=40),
)
PAIRS = st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.text(max_size=10)), VALUES), max_size=8)


def _encode(pairs: list[tuple[str, str]]) -> bytes:
    def part(value: str) -> str:
        return quote(value.encode("utf-8", "surrogatepass"), safe="")

    return "&".join(f"{part(k)}={part(v)}" for k, v in pairs).encode()


HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "Basic d2ViOg==",
            "Basic " + "A" * 9000,
            "Basic !!",
            "Basic",
            "Bearer",
            "Bearer a.b.c",
            "Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IngifQ.e30.AA",
            "Bearer " + "x" * 9000,
            "bearer  x",
            "DPoP x",
            "Basic d2ViOjpwYXNzd29yZDp4Og==",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/json",
        "multipart/form-data; boundary=x",
        "text/plain",
        "",
    ]
)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ClockedHarness]:
    yield from make_clocked_harness(tmp_path)


def _ok(status: int) -> None:
    assert 200 <= status < 500, status


@FUZZ
@given(
    path=st.sampled_from(["/token", "/introspect", "/revoke"]),
    pairs=PAIRS,
    authorization=st.one_of(st.none(), HEADER_VALUES),
    content_type=CONTENT_TYPES,
)
def test_machine_endpoints_never_fail(
    harness: ClockedHarness,
    path: str,
    pairs: list[tuple[str, str]],
    authorization: str | None,
    content_type: str,
) -> None:
    headers = {b"content-type": content_type.encode()}
    if authorization is not None:
        headers[b"authorization"] = authorization.encode("latin-1")
    response = harness.client.post(path, content=_encode(pairs), headers=headers)
    _ok(response.status_code)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert "error" in response.json() or response.status_code == 200


@FUZZ
@given(
    path=st.sampled_from(["/authorize", "/logout", "/login", "/consent", "/authorize/resume"]), pairs=PAIRS
)
def test_browser_endpoints_never_fail_on_queries(
    harness: ClockedHarness, path: str, pairs: list[tuple[str, str]]
) -> None:
    response = harness.client.get(path + "?" + _encode(pairs).decode())
    _ok(response.status_code)
    location = response.headers.get("location")
    if location is not None and not location.startswith("/"):
        assert location.startswith("https://app.example/cb?"), location


@FUZZ
@given(path=st.sampled_from(["/authorize", "/logout", "/login", "/consent", "/userinfo"]), pairs=PAIRS)
def test_browser_endpoints_never_fail_on_forms(
    harness: ClockedHarness, path: str, pairs: list[tuple[str, str]]
) -> None:
    response = harness.client.post(
        path, content=_encode(pairs), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    _ok(response.status_code)


@FUZZ
@given(pairs=PAIRS)
def test_login_and_consent_with_a_live_session_never_fail(
    harness: ClockedHarness, pairs: list[tuple[str, str]]
) -> None:
    page = harness.client.get(harness.client.get(authorize_url()).headers["location"])
    csrf, tx = form_fields(page.text)
    for path in ("/login", "/consent"):
        fields = [("csrf_token", csrf), ("tx", tx), *pairs]
        response = harness.client.post(
            path, content=_encode(fields), headers={"content-type": "application/x-www-form-urlencoded"}
        )
        _ok(response.status_code)


@FUZZ
@given(authorization=HEADER_VALUES, cookie=st.text(max_size=80))
def test_userinfo_never_fails_on_headers(harness: ClockedHarness, authorization: str, cookie: str) -> None:
    headers = {b"authorization": authorization.encode("latin-1")}
    with contextlib.suppress(UnicodeEncodeError):
        headers[b"cookie"] = cookie.encode("latin-1")
    response = harness.client.get("/userinfo", headers=headers)
    _ok(response.status_code)
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_oversized_and_odd_bodies(harness: ClockedHarness) -> None:
    huge = harness.client.post(
        "/token",
        content=b"grant_type=" + b"x" * 200_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    assert huge.json()["error"] == "invalid_request"
    many = "&".join(f"f{i}=v" for i in range(500))
    for path in ("/authorize", "/login", "/consent", "/logout"):
        response = harness.client.post(
            path, content=many.encode(), headers={"content-type": "application/x-www-form-urlencoded"}
        )
        _ok(response.status_code)
        with_file = harness.client.post(path, files={"username": ("a.txt", b"alice")})
        _ok(with_file.status_code)
    bad_utf8 = harness.client.post(
        "/token", content=b"grant_type=%ff%fe", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert bad_utf8.status_code == 400


@pytest.fixture(params=["sqlite", "postgres"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClockedHarness]:
    postgres = request.getfixturevalue("postgres_schema") if request.param == "postgres" else None
    yield from make_clocked_harness(tmp_path, postgres=postgres)


@pytest.mark.parametrize("value", ["web\x00", "\x00", "web\x01", "w\u00e9b", "web\x7f"])
def test_identifiers_outside_vschar_are_unknown_not_storage_failures(
    any_backend: ClockedHarness, value: str
) -> None:
    # RFC 6749 Appendix A.1: client-id = *VSCHAR (%x20-7E). PostgreSQL refuses NUL in text, so
    # such an id must never reach the database as a query parameter (a 500 or 503 otherwise).
    harness = any_backend
    page = harness.client.get(authorize_url(client_id=value))
    assert page.status_code in (400, 401)
    assert "location" not in page.headers
    for path in ("/token", "/introspect", "/revoke"):
        response = harness.client.post(
            path,
            data={"grant_type": "client_credentials", "client_id": value, "token": "t", "client_secret": "s"},
        )
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"] == "invalid_client"
    response = harness.client.get(
        "/logout", params={"client_id": value, "post_logout_redirect_uri": "https://x/"}
    )
    assert response.status_code == 400
    login_page = harness.client.get(harness.client.get(authorize_url()).headers["location"])
    csrf, tx = form_fields(login_page.text)
    response = harness.client.post(
        "/login",
        data={"csrf_token": csrf, "tx": tx, "username": "alice" + value, "password": "whatever whatever"},
    )
    assert response.status_code == 400  # the same answer as a wrong password
    assert "Incorrect username or password." in response.text

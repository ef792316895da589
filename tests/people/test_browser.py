"""Real headless Chromium through the login and consent pages, ending at the client's redirect.

Screenshots of each page go to ``test-artifacts/people/``.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from bastion.protocol.rfc7636 import s256

from .flows import PASSWORD
from .flows import VERIFIER
from .flows import query
from .live import live_server

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    path = request.config.rootpath / "test-artifacts" / "people"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_login_and_consent_in_chromium(tmp_path: Path, artifacts: Path) -> None:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
        if os.environ.get("BASTION_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (BASTION_REQUIRE_SERVICES=1; .ci/run installs it)")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with live_server(tmp_path) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            csp_violations: list[str] = []
            page.on(
                "console",
                lambda msg: (
                    csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
                ),
            )
            authorize = (
                live.issuer
                + "/authorize?"
                + urlencode(
                    {
                        "response_type": "code",
                        "client_id": "web",
                        "redirect_uri": live.callback,
                        "scope": "openid profile orders:read",
                        "state": "browser-state",
                        "nonce": "browser-nonce",
                        "code_challenge": s256(VERIFIER),
                        "code_challenge_method": "S256",
                    }
                )
            )
            page.goto(authorize)
            page.wait_for_selector("h1:has-text('Sign in')")
            assert page.locator("strong").first.inner_text() == "Shop"
            page.screenshot(path=str(artifacts / "01-login.png"), full_page=True)

            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill("wrong password")
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_selector("#login-error")
            assert page.locator("#login-error").inner_text() == "Incorrect username or password."
            page.screenshot(path=str(artifacts / "02-login-error.png"), full_page=True)

            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_selector("h1:has-text('Allow access?')")
            assert "orders:read" in page.locator("ul.scopes").inner_text()
            page.screenshot(path=str(artifacts / "03-consent.png"), full_page=True)

            with page.expect_navigation(url=f"{live.callback}**"):
                page.get_by_role("button", name="Allow").click()
            page.screenshot(path=str(artifacts / "04-client-redirect.png"), full_page=True)
            params = query(page.url)
            assert params["state"] == "browser-state"
            assert params["iss"] == live.issuer
            assert len(params["code"]) >= 43
            assert csp_violations == [], csp_violations

            cookies = {c["name"]: c for c in page.context.cookies(live.issuer)}
            assert cookies["bastion_session"]["httpOnly"] is True
            assert cookies["bastion_session"]["sameSite"] == "Lax"
        finally:
            browser.close()


def _chromium_or_skip() -> None:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
        if os.environ.get("BASTION_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (BASTION_REQUIRE_SERVICES=1; .ci/run installs it)")
        pytest.skip(message)


class _Page(BaseHTTPRequestHandler):
    """A blank page on an origin no client registered."""

    def do_GET(self) -> None:
        body = b"<!doctype html><title>Elsewhere</title><h1>Another site</h1>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


_EXCHANGE = """async ([url, form]) => {
  try {
    const r = await fetch(url, {method: "POST", body: new URLSearchParams(form)});
    return {status: r.status, body: await r.json()};
  } catch (e) {
    return {failed: String(e)};
  }
}"""


def test_a_single_page_app_exchanges_its_code_from_script_across_origins(tmp_path: Path) -> None:
    """The public client's page (its redirect origin) POSTs to /token on the authorization
    server's origin with fetch(): the PKCE exchange succeeds and the page reads the tokens. The
    same call from an origin no client registered is blocked by the browser."""
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    try:
        with live_server(tmp_path) as live, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page()
                authorize = (
                    live.issuer
                    + "/authorize?"
                    + urlencode(
                        {
                            "response_type": "code",
                            "client_id": "web",
                            "redirect_uri": live.callback,
                            "scope": "openid orders:read",
                            "state": "spa-state",
                            "code_challenge": s256(VERIFIER),
                            "code_challenge_method": "S256",
                        }
                    )
                )
                page.goto(authorize)
                page.get_by_label("Username").fill("alice")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_selector("h1:has-text('Allow access?')")
                with page.expect_navigation(url=f"{live.callback}**"):
                    page.get_by_role("button", name="Allow").click()
                code = query(page.url)["code"]
                form = {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": live.callback,
                    "code_verifier": VERIFIER,
                    "client_id": "web",
                }
                token_url = live.issuer + "/token"

                # On the client's own origin (http://127.0.0.1:<callback port>), from script.
                answer = page.evaluate(_EXCHANGE, [token_url, form])
                assert answer.get("status") == 200, answer
                assert answer["body"]["token_type"] == "Bearer"
                assert answer["body"]["access_token"].count(".") == 2

                # Another origin: the server answers, the browser keeps the answer from the page.
                page.goto(f"http://127.0.0.1:{elsewhere.server_address[1]}/")
                blocked = page.evaluate(_EXCHANGE, [token_url, {**form, "code": "another-code"}])
                assert "failed" in blocked, blocked
                assert "Failed to fetch" in blocked["failed"]
            finally:
                browser.close()
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()

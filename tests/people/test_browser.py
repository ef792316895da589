"""Real headless Chromium through the login and consent pages, ending at the client's redirect.

Screenshots of each page go to ``test-artifacts/people/``.
"""

from __future__ import annotations

import os
from pathlib import Path
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

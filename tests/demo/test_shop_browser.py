"""The shop in real headless Chromium (Debian's package, driven by Playwright), against a real
``bastion demo``: shop → sign in → consent → add to cart → order → my orders → break-in
attempts → sign out, with no token ever within the page's reach.

Screenshots of each step go to ``test-artifacts/demo/``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bastion.bff.sessions import SessionStore
from bastion.storage.fast.sqlite import SQLiteState
from tests.people.test_browser import ARGS
from tests.people.test_browser import CHROMIUM
from tests.people.test_browser import _chromium_or_skip

from .harness import DemoRun
from .harness import Shopper
from .harness import running_demo

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

#: Any JWT (header and payload are base64url JSON objects: "eyJ").
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")

_STORAGE = """() => JSON.stringify({
  cookie: document.cookie,
  local: Object.entries(localStorage),
  session: Object.entries(sessionStorage),
})"""


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    path = request.config.rootpath / "test-artifacts" / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoRun]:
    _chromium_or_skip()
    with running_demo(tmp_path / "data") as run:
        yield run


def session_tokens(demo: DemoRun, sid: str) -> list[str]:
    """The access, refresh and ID tokens the BFF holds for session ``sid``."""

    async def load() -> list[str]:
        state = SQLiteState(demo.data_dir / "state.db")
        try:
            store = SessionStore(state, idle=60, absolute=60, login_ttl=60, clock=lambda: 0.0)
            tokens = await store.load_tokens(sid)
        finally:
            await state.close()
        assert tokens is not None, "the BFF holds no tokens for this session"
        return [t for t in (tokens.access_token, tokens.refresh_token, tokens.id_token) if t]

    # A loop of its own, in a thread: Playwright's sync API runs one in this thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, load()).result()


def test_the_shop_in_chromium_never_lets_a_token_reach_the_page(demo: DemoRun, artifacts: Path) -> None:
    from playwright.sync_api import Route
    from playwright.sync_api import sync_playwright

    # carol has an order alice will try to open by guessing its id.
    carols = Shopper(demo, "carol").send("POST", "/orders", {"items": [{"sku": "tee", "quantity": 1}]})
    assert carols.status_code == 201, carols.text
    carols_order = carols.json()["order"]["id"]

    seen: list[str] = []  # every body the BFF sent the browser
    pages: list[str] = []  # every page's rendered content, script-visible state
    console: list[str] = []

    def record(route: Route) -> None:
        response = route.fetch(max_redirects=0)
        seen.append(f"{route.request.method} {route.request.url}\n{response.headers}\n{response.text()}")
        route.fulfill(response=response)

    def snapshot(page: Any, name: str) -> None:
        page.screenshot(path=str(artifacts / name), full_page=True)
        pages.append(page.content())
        pages.append(page.evaluate(_STORAGE))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.on("console", lambda msg: console.append(msg.text))
            page.route(re.compile(re.escape(demo.shop) + r"/.*"), record)

            page.goto(demo.shop + "/")
            page.wait_for_selector("article.product")
            assert page.get_by_test_id("user").inner_text() == "Not signed in"
            snapshot(page, "01-shop.png")

            page.get_by_role("link", name="Sign in").click()
            page.wait_for_selector("h1:has-text('Sign in')")
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill(demo.password("alice"))
            snapshot(page, "02-sign-in.png")
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_selector("h1:has-text('Allow access?')")
            assert "orders:write" in page.locator("ul.scopes").inner_text()
            snapshot(page, "03-consent.png")
            with page.expect_navigation(url=f"{demo.shop}/"):
                page.get_by_role("button", name="Allow").click()
            page.wait_for_selector("text=Signed in as alice")

            cookies = {c["name"]: c for c in context.cookies(demo.shop)}
            session = cookies["bastion-bff"]
            assert session["httpOnly"] is True
            assert session["sameSite"] == "Lax"
            assert "bastion-bff" not in page.evaluate("document.cookie")
            tokens = session_tokens(demo, session["value"])
            assert len(tokens) == 3

            page.locator("article[data-sku=mug] button.add").click()
            page.locator("article[data-sku=mug] button.add").click()
            page.locator("article[data-sku=stickers] button.add").click()
            assert page.get_by_test_id("cart").inner_text().splitlines() == [
                "2 × Bastion mug",
                "1 × Sticker pack",
            ]
            snapshot(page, "04-cart.png")

            page.get_by_role("button", name="Place order").click()
            page.wait_for_selector("#orders tbody tr")
            log = page.get_by_test_id("log")
            placed = log.locator("li", has_text="Place an order").first.inner_text()
            assert "allowed by the gateway, then by the orders service" in placed
            assert "inventory: scope inventory:reserve (a service token)" in placed
            assert "payments: scope payments:write (a service token)" in placed
            rows = page.locator("#orders tbody tr")
            assert rows.count() == 1
            assert "2× mug, 1× stickers" in rows.first.inner_text()
            assert "28.00 €" in rows.first.inner_text()
            mine = rows.first.get_attribute("data-order")

            page.get_by_role("button", name="Show my orders").click()
            log.locator("li", has_text="List my orders").nth(1).wait_for()  # placing listed them once
            assert [r.get_attribute("data-order") for r in page.locator("#orders tbody tr").all()] == [mine]

            page.locator("#peek-id").fill(carols_order)
            page.get_by_role("button", name="Open").click()
            refused = log.locator("li", has_text=f"Open order #{carols_order}").first
            refused.wait_for()
            assert "refused by the orders service (404" in refused.inner_text()

            page.get_by_role("button", name="Pay without ordering").click()
            direct = log.locator("li", has_text="Pay without ordering").first
            direct.wait_for()
            assert "refused by the gateway (403" in direct.inner_text()
            assert 'scope="payments:write"' in direct.inner_text()

            page.get_by_role("button", name="Order without the CSRF token").click()
            forged = log.locator("li", has_text="Order without the CSRF token").first
            forged.wait_for()
            assert "refused by the BFF (403: missing or wrong X-CSRF-Token)" in forged.inner_text()
            snapshot(page, "05-orders-and-refusals.png")
            tokens += session_tokens(demo, session["value"])  # in case a refresh rotated them

            page.get_by_role("button", name="Sign out").click()
            page.wait_for_selector("h1:has-text('Sign out?')")
            snapshot(page, "06-sign-out.png")
            with page.expect_navigation(url=f"{demo.shop}/"):
                page.get_by_role("button", name="Sign out").click()
            page.wait_for_selector("text=Not signed in")
            snapshot(page, "07-signed-out.png")
        finally:
            browser.close()

    # The old cookie, replayed, finds nothing.
    replay = requests.get(demo.shop + "/bff/me", cookies={"bastion-bff": session["value"]}, timeout=5)
    assert replay.status_code == 401
    again = requests.get(demo.shop + "/bff/api/orders", cookies={"bastion-bff": session["value"]}, timeout=5)
    assert again.status_code == 401

    assert [line for line in console if "Content Security Policy" in line] == []
    assert len(seen) > 10
    everything = "\n".join(seen + pages)
    for token in tokens:
        assert token not in everything
    assert JWT_RE.search(everything) is None, JWT_RE.search(everything)

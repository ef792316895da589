"""``anonymous_paths`` (safe calls forwarded without a session and without any token) and
``static_dir`` (the single-page app served beside ``/bff/*`` under a strict policy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.storage.protocols import FastState

from .harness import ORIGIN
from .harness import AuthServer
from .harness import bff_settings
from .harness import recording_upstream
from .harness import serve_bff

pytestmark = pytest.mark.anyio


async def test_anonymous_paths_are_forwarded_without_a_token_for_safe_methods_only(
    server: AuthServer, state: FastState
) -> None:
    settings = bff_settings(server.issuer, anonymous_paths=("catalog/", "status"))
    with recording_upstream() as (gateway, seen):
        settings = settings.model_copy(update={"gateway_url": gateway})
        async with serve_bff(settings, state, server.client_secret) as (browser, _):
            allowed = [
                await browser.request("GET", "/bff/api/catalog/products?page=2"),
                await browser.request("GET", "/bff/api/catalog/"),
                await browser.request("GET", "/bff/api/status", headers={"authorization": "Bearer mine"}),
            ]
            refused = [
                await browser.request("POST", "/bff/api/catalog/products", headers={"origin": ORIGIN}),
                await browser.request("GET", "/bff/api/status/more"),  # exact path only
                await browser.request("GET", "/bff/api/catalogue"),
                await browser.request("GET", "/bff/api/orders"),
                await browser.request("GET", "/bff/api/catalog/../orders"),
            ]
    assert [status for status, _, _ in allowed] == [200, 200, 200]
    assert [status for status, _, _ in refused] == [401, 401, 401, 401, 401]
    assert [entry["target"] for entry in seen] == ["/catalog/products?page=2", "/catalog/", "/status"]
    for entry in seen:
        names = {name for name, _ in entry["headers"]}
        assert "authorization" not in names  # not even the page's own
        assert "cookie" not in names


async def test_static_pages_are_served_under_a_strict_policy(
    server: AuthServer, state: FastState, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>Shop</title>")
    (tmp_path / "app.js").write_text("console.log('shop')")
    settings = bff_settings(server.issuer, static_dir=str(tmp_path))
    async with serve_bff(settings, state, server.client_secret) as (browser, _):
        index, headers, body = await browser.request("GET", "/")
        script, script_headers, _ = await browser.request("GET", "/app.js")
        missing, _, _ = await browser.request("GET", "/nothing.html")
        me, _, me_body = await browser.request("GET", "/bff/me")  # /bff/* still the BFF's
        escape, _, _ = await browser.request("GET", "/..%2f..%2fetc/passwd")
    assert index == 200
    assert body == b"<!doctype html><title>Shop</title>"
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert script == 200
    assert script_headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert missing == 404
    assert me == 401
    assert json.loads(me_body)["detail"] == "no session: sign in at /bff/login"
    assert escape == 404


async def test_without_static_dir_nothing_but_bff_is_served(server: AuthServer, state: FastState) -> None:
    async with serve_bff(bff_settings(server.issuer), state, server.client_secret) as (browser, _):
        status, _, _ = await browser.request("GET", "/")
    assert status == 404

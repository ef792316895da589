"""``bastion serve`` with ``[bff]`` and ``[gateway]``: the BFF starts beside the authorization
server and the gateway, reads its client secret from the environment, signs a user in, calls
the API through the real gateway (which validates the session's access token) without the
browser's cookies, and a logged-out cookie replays to nothing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.bff.harness import GOODBYE
from tests.bff.harness import ORIGIN
from tests.bff.harness import REDIRECT_URI
from tests.bff.harness import Browser
from tests.bff.harness import recording_upstream
from tests.people.flows import PASSWORD

from .gw_stack import AUDIENCE
from .gw_stack import gateway_toml
from .harness import BASTION
from .harness import Bastion
from .harness import free_port

pytestmark = pytest.mark.anyio
SESSION = "__Host-bastion-bff"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Bastion, str, list[dict[str, object]]]]:
    with recording_upstream() as (upstream, seen):
        port = free_port()
        gateway_port = free_port()
        gateway = f"http://127.0.0.1:{gateway_port}"
        bff = f"""
[bff]
listen = "127.0.0.1:{port}"
client_id = "bff"
client_secret_env = "SHOP_BFF_SECRET"
redirect_uri = "{REDIRECT_URI}"
gateway_url = "{gateway}"
scopes = ["openid", "profile", "offline_access"]
post_logout_redirect_uri = "{GOODBYE}"
"""
        bastion = Bastion(tmp_path, extra_config="")
        routes = '[[gateway.routes]]\nprefix = "/orders"\nupstream = "app"\n'
        upstream_port = int(upstream.rpartition(":")[2])
        gateway_section = gateway_toml(bastion.issuer, gateway_port, free_port(), upstream_port, routes)
        bastion.config.write_text(
            bastion.config.read_text()
            + bff.replace("[bff]", f'[bff]\nissuer = "{bastion.issuer}"')
            + gateway_section
            + "[gateway.bans]\nenabled = false\n"
        )
        created = bastion.cli_json(
            "clients", "create", "--name", "Shop", "--client-id", "bff",
            "--grant-type", "authorization_code", "--grant-type", "refresh_token",
            "--scope", "openid profile offline_access",
            "--redirect-uri", REDIRECT_URI, "--post-logout-redirect-uri", GOODBYE, "--first-party",
            "--audience", AUDIENCE,
        )  # fmt: skip
        result = subprocess.run(
            [*BASTION, "--config", str(bastion.config), "users", "create", "alice", "--password-stdin"],
            input=PASSWORD.encode() + b"\n",
            env=bastion.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        bastion.env["SHOP_BFF_SECRET"] = created["client_secret"]
        bastion.start()
        try:
            yield bastion, f"http://127.0.0.1:{port}", seen
        finally:
            bastion.stop()


async def test_serve_runs_the_bff(stack: tuple[Bastion, str, list[dict[str, object]]]) -> None:
    bastion, base, seen = stack
    assert "BFF on 127.0.0.1:" in bastion.log_text()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        browser = Browser(base, http)
        status, headers = await browser.sign_in("/orders")
        assert status == 303
        assert headers["location"] == "/orders"
        status, _, body = await browser.request("GET", "/bff/me")
        assert status == 200
        csrf = json.loads(body)["csrf_token"]
        status, _, _ = await browser.request(
            "POST", "/bff/api/orders", headers={"origin": ORIGIN, "x-csrf-token": csrf}
        )
        assert status == 200
        status, _, _ = await browser.request("GET", "/bff/api/orders/7?page=2")
        assert status == 200
        # Through the gateway, which checked the access token and says whose it is.
        first, second = seen
        assert first["method"] == "POST"
        assert second["target"] == "/orders/7?page=2"
        claims = json.loads(body)["claims"]
        for entry in seen:
            headers = dict(entry["headers"])  # type: ignore[call-overload]
            assert "cookie" not in headers
            assert headers["x-bastion-subject"] == claims["sub"]
            assert browser.cookies[SESSION] not in json.dumps(entry)
        old = browser.cookies[SESSION]
        status, _, _ = await browser.request(
            "POST", "/bff/logout", headers={"origin": ORIGIN, "x-csrf-token": csrf}
        )
        assert status == 200
        browser.cookies[SESSION] = old
        status, _, _ = await browser.request("GET", "/bff/me")
        assert status == 401


def test_serve_refuses_a_bff_without_its_secret(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path)
    bastion.config.write_text(
        bastion.config.read_text()
        + f'\n[bff]\nlisten = "127.0.0.1:{free_port()}"\nclient_secret_env = "NOT_SET_ANYWHERE"\n'
    )
    bastion.env.pop("NOT_SET_ANYWHERE", None)
    result = subprocess.run(
        [*BASTION, "--config", str(bastion.config), "serve"],
        env=bastion.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "environment variable NOT_SET_ANYWHERE is not set" in result.stderr.decode()

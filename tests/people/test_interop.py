"""Interoperability with Authlib (a client we did not write): authorization code + PKCE, login
and consent forms over HTTP, ID-token validation with Authlib's OIDC claims checks, UserInfo,
refresh rotation.

Runs against ``bastion serve`` in a subprocess, and against the same app served in-process on
a real socket (so a regression is caught even where the CLI is not at hand).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from tests.e2e.harness import stop_process

from .flows import PASSWORD
from .live import live_server
from .support import CHEAP_PASSWORDS

with warnings.catch_warnings():
    # authlib.oauth2/oidc import authlib.jose, which warns that it is deprecated.
    warnings.simplefilter("ignore")
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.integrations.requests_client import OAuthError
    from authlib.oidc.core import CodeIDToken

KEK = "interop-" + "k" * 48
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
TX_RE = re.compile(r'name="tx" value="([^"]+)"')
SCOPE = "openid profile email offline_access orders:read"


def _fields(html: str) -> dict[str, str]:
    csrf = CSRF_RE.search(html)
    tx = TX_RE.search(html)
    assert csrf is not None, html
    assert tx is not None, html
    return {"csrf_token": csrf.group(1), "tx": tx.group(1)}


def _browse_to_callback(browser: requests.Session, issuer: str, url: str, redirect_uri: str) -> str:
    """Play the user: submit the login and consent forms; return the client's redirect URL."""
    page = browser.get(url, timeout=10)
    assert page.status_code == 200, page.text
    assert "Sign in" in page.text
    response = browser.post(
        f"{issuer}/login",
        data={**_fields(page.text), "username": "alice", "password": PASSWORD},
        allow_redirects=False,
        timeout=10,
    )
    for _ in range(5):
        assert response.status_code in (302, 303), response.text
        location = response.headers["location"]
        if location.startswith(redirect_uri):
            return location
        target = location if location.startswith("http") else issuer + location
        if target.startswith(f"{issuer}/consent"):
            page = browser.get(target, timeout=10)
            assert "Allow access?" in page.text
            response = browser.post(
                f"{issuer}/consent",
                data={**_fields(page.text), "decision": "allow"},
                allow_redirects=False,
                timeout=10,
            )
        else:
            response = browser.get(target, allow_redirects=False, timeout=10)
    raise AssertionError("never reached the client's redirect URI")


def authlib_flow(issuer: str, redirect_uri: str) -> None:
    meta = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == issuer
    client = OAuth2Session(
        "web",
        scope=SCOPE,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, state = client.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    callback = _browse_to_callback(requests.Session(), issuer, url, redirect_uri)
    assert f"iss={requests.utils.quote(issuer, safe='')}" in callback  # RFC 9207
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        token = client.fetch_token(
            meta["token_endpoint"], authorization_response=callback, code_verifier=verifier, state=state
        )
    assert token["token_type"] == "Bearer"
    assert set(token["scope"].split()) == set(SCOPE.split())

    # The ID token: signature with joserfc against our JWKS, claims with Authlib's OIDC checks.
    keys = KeySet.import_key_set(requests.get(meta["jwks_uri"], timeout=10).json())
    decoded = jose_jwt.decode(
        token["id_token"], keys, algorithms=meta["id_token_signing_alg_values_supported"]
    )
    claims = CodeIDToken(
        decoded.claims,
        decoded.header,
        options={"iss": {"essential": True, "value": issuer}, "aud": {"essential": True, "values": ["web"]}},
        params={"nonce": nonce, "client_id": "web", "access_token": token["access_token"]},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        claims.validate()
    assert claims["at_hash"]

    info = client.get(meta["userinfo_endpoint"], timeout=10)
    assert info.status_code == 200, info.text
    assert info.json()["sub"] == claims["sub"]
    assert info.json()["email"] == "alice@example.com"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        renewed = client.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
        assert renewed["refresh_token"] != token["refresh_token"]
        # Presenting the rotated token again is reuse (RFC 9700 §4.14.2): refused, and the
        # family with it, so the renewed refresh token is refused too.
        for presented in (token["refresh_token"], renewed["refresh_token"]):
            with pytest.raises(OAuthError) as refused:
                client.refresh_token(meta["token_endpoint"], refresh_token=presented)
            assert refused.value.error == "invalid_grant"


def test_authlib_against_the_app_on_a_socket(tmp_path: Path) -> None:
    with live_server(tmp_path) as live:
        authlib_flow(live.issuer, live.callback)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bastion_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``bastion serve`` in a subprocess, seeded with the client ``web`` and the user ``alice``."""
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    config = tmp_path / "bastion.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        "[storage]\n"
        f'database_url = "sqlite:///{data / "bastion.db"}"\n'
        f'state_url = "sqlite:///{data / "state.db"}"\n'
        "[authorization_server]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'issuer = "{issuer}"\n'
        "[logging]\n"
        f'audit_log = "{tmp_path / "audit.log"}"\n'
    )
    monkeypatch.setenv("BASTION_KEK", KEK)
    asyncio.run(_seed_serve(str(config)))
    bastion = Path(sys.executable).parent / "bastion"
    env = {**os.environ, "BASTION_KEK": KEK}
    process = subprocess.Popen(
        [str(bastion), "--config", str(config), "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"bastion serve exited with {process.returncode}:\n{output}")
            try:
                if requests.get(f"{issuer}/healthz", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # a loaded machine may be slow to answer
                pass
            if time.monotonic() > deadline:
                pytest.fail("bastion serve did not become healthy in 30 s")
            time.sleep(0.1)
        yield issuer
    finally:
        stop_process(process, 15)
        if process.stdout:
            process.stdout.close()


async def _seed_serve(config: str) -> None:
    from bastion.cli.config import load_settings
    from bastion.cli.context import open_services
    from bastion.services.users import create_role
    from bastion.services.users import create_user

    from .support import web_client

    settings, _ = load_settings(config)
    async with open_services(settings) as services:
        await web_client(services, redirect_uris=["http://127.0.0.1/cb"])
        await create_role(services, "reader", ["orders:read"])
        await create_user(
            services,
            "alice",
            PASSWORD,
            roles=["reader"],
            email="alice@example.com",
            passwords=CHEAP_PASSWORDS,
        )


@pytest.mark.slow
def test_authlib_against_bastion_serve(bastion_serve: str) -> None:
    discovery = requests.get(f"{bastion_serve}/.well-known/openid-configuration", timeout=10)
    assert discovery.status_code == 200
    # Loopback redirect: any port may be used at request time (RFC 8252 §7.3).
    authlib_flow(bastion_serve, f"http://127.0.0.1:{_free_port()}/cb")

"""Server-side refresh, single-flight per session: many requests at expiry, one refresh grant at
the authorization server (a second would present a rotated refresh token, which the server
treats as theft and answers by revoking the whole family)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion.bff.sessions import SessionStore
from bastion.storage.fast.redis import RedisState
from bastion.storage.protocols import FastState

from .harness import AuthServer
from .harness import Browser
from .harness import Clock
from .harness import bff_settings
from .harness import recording_upstream
from .harness import serve_bff
from .test_signin import SESSION
from .test_signin import assert_no_token_leaked

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]


def _bearers(seen: list[dict[str, Any]]) -> list[str]:
    return [v for entry in seen for k, v in entry["headers"] if k == "authorization"]


async def test_twenty_parallel_calls_at_expiry_make_one_refresh(
    server: AuthServer, any_state: FastState
) -> None:
    state = any_state
    clock = Clock()
    with recording_upstream() as (gateway, seen):
        async with serve_bff(bff_settings(server.issuer, gateway), state, server.client_secret, clock) as (
            browser,
            _,
        ):
            await browser.sign_in()
            store = SessionStore(state, idle=3600, absolute=3600, login_ttl=60, clock=clock)
            before = await store.load_tokens(browser.cookies[SESSION])
            assert before is not None
            assert server.refreshes() == 0
            clock.offset = before.expires_at - time.time() - 5  # inside the 30 s refresh margin
            results = await asyncio.gather(
                *(browser.request("GET", f"/bff/api/orders/{i}") for i in range(20))
            )
            after = await store.load_tokens(browser.cookies[SESSION])
            assert after is not None
            # Fresh tokens now: more calls need no refresh.
            status, _, _ = await browser.request("GET", "/bff/api/orders")
            assert status == 200
    assert [status for status, _, _ in results] == [200] * 20
    assert server.refreshes() == 1
    assert server.named("refresh_token.reuse_detected") == []
    assert after.access_token != before.access_token
    assert after.refresh_token != before.refresh_token
    assert _bearers(seen) == [f"Bearer {after.access_token}"] * 21
    assert_no_token_leaked(browser, [before.access_token, after.access_token, str(after.refresh_token)])


async def test_a_refused_refresh_ends_the_session(server: AuthServer, state: FastState) -> None:
    clock = Clock()
    with recording_upstream() as (gateway, seen):
        async with serve_bff(bff_settings(server.issuer, gateway), state, server.client_secret, clock) as (
            browser,
            _,
        ):
            await browser.sign_in()
            store = SessionStore(state, idle=3600, absolute=3600, login_ttl=60, clock=clock)
            sid = browser.cookies[SESSION]
            tokens = await store.load_tokens(sid)
            session = await store.load(sid)
            assert tokens is not None
            assert session is not None
            await store.save_tokens(
                sid, session, dataclasses.replace(tokens, refresh_token="not-a-refresh-token")
            )
            clock.offset = tokens.expires_at - time.time() + 1
            status, _, body = await browser.request("GET", "/bff/api/orders")
            assert status == 401
            assert json.loads(body)["status"] == 401
            assert SESSION not in browser.cookies
            browser.cookies[SESSION] = sid
            status, _, _ = await browser.request("GET", "/bff/me")
            assert status == 401
    assert seen == []


class _Process:
    def __init__(
        self, tmp: Path, name: str, settings: dict[str, Any], redis_url: str, prefix: str, secret: str
    ) -> None:
        port_file = tmp / f"{name}.port"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bff.bff_process",
                json.dumps(settings),
                redis_url,
                prefix,
                str(port_file),
            ],
            cwd=REPO,
            env={**os.environ, "BFF_SECRET": secret},
        )
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text():
            assert self.process.poll() is None, "the BFF process exited"
            assert time.monotonic() < deadline, "the BFF process did not start"
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{port_file.read_text()}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def test_two_bff_processes_sharing_redis_still_refresh_once(
    server: AuthServer, tmp_path: Path, redis_url: str
) -> None:
    prefix = f"test:{secrets.token_hex(6)}:"
    with recording_upstream() as (gateway, seen):
        settings = bff_settings(server.issuer, gateway).model_dump(mode="json")
        first = _Process(tmp_path, "a", settings, redis_url, prefix, server.client_secret)
        second = _Process(tmp_path, "b", settings, redis_url, prefix, server.client_secret)
        state = RedisState(redis_url, prefix=prefix)
        try:
            timeout = aiohttp.ClientTimeout(total=20)
            async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
                a = Browser(first.base, http)
                await a.sign_in()
                b = Browser(second.base, http, cookies=dict(a.cookies))
                # The token nears its end: rewrite the stored expiry, as time passing would.
                store = SessionStore(state, idle=3600, absolute=3600, login_ttl=60, clock=time.time)
                sid = a.cookies[SESSION]
                session = await store.load(sid)
                before = await store.load_tokens(sid)
                assert session is not None
                assert before is not None
                await store.save_tokens(sid, session, dataclasses.replace(before, expires_at=time.time() + 1))
                calls = [
                    browser.request("GET", f"/bff/api/orders/{i}") for i in range(10) for browser in (a, b)
                ]
                results = await asyncio.gather(*calls)
                after = await store.load_tokens(sid)
        finally:
            first.stop()
            second.stop()
            await state.close()
    assert [status for status, _, _ in results] == [200] * 20
    assert server.refreshes() == 1
    assert server.named("refresh_token.reuse_detected") == []
    assert after is not None
    assert after.access_token != before.access_token
    assert _bearers(seen) == [f"Bearer {after.access_token}"] * 20


async def test_the_lease_is_renewed_while_the_refresh_runs(state: FastState) -> None:
    from bastion.bff.refresh import Refresher

    store = SessionStore(state, idle=60, absolute=60, login_ttl=60, clock=time.time)
    refresher = Refresher(state, store, None, clock=time.time, margin=30, lease=0.3)  # type: ignore[arg-type]
    assert await state.add("bff:refresh:x", b"me", 0.3)
    renewer = asyncio.create_task(refresher._renew("bff:refresh:x", "me"))
    await asyncio.sleep(0.9)  # three leases long
    assert await state.get("bff:refresh:x") == b"me"
    renewer.cancel()
    # A lock taken over by someone else is left alone.
    await state.set("bff:refresh:x", b"other", 0.3)
    await asyncio.wait_for(refresher._renew("bff:refresh:x", "me"), 1)  # returns: not ours any more
    await asyncio.sleep(0.4)
    assert await state.get("bff:refresh:x") is None


async def test_a_lapsed_lease_lets_the_next_request_refresh(server: AuthServer, state: FastState) -> None:
    """A process that died holding the lock does not wedge the session: its lease runs out."""
    clock = Clock()
    with recording_upstream() as (gateway, _):
        async with serve_bff(bff_settings(server.issuer, gateway), state, server.client_secret, clock) as (
            browser,
            _,
        ):
            await browser.sign_in()
            sid = browser.cookies[SESSION]
            store = SessionStore(state, idle=3600, absolute=3600, login_ttl=60, clock=clock)
            tokens = await store.load_tokens(sid)
            assert tokens is not None
            lock = "bff:refresh:" + store.key(sid).rpartition(":")[2]
            assert await state.add(lock, b"a-process-that-died", 0.5)
            clock.offset = tokens.expires_at - time.time() + 1
            started = time.monotonic()
            status, _, _ = await browser.request("GET", "/bff/api/orders")
            waited = time.monotonic() - started
    assert status == 200
    assert waited >= 0.3
    assert server.refreshes() == 1

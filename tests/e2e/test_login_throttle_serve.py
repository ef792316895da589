"""`bastion serve --workers 4`: 200 concurrent wrong passwords for one account, on the embedded
default fast state (a SQLite file shared by the workers) and on Redis. The throttle counts each
attempt before checking it, so at most ``lockout_after`` (plus one per worker, the allowance
the design leaves) are answered "wrong password"; the rest are 429 with Retry-After, none 500.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
import requests

from bastion.protocol.rfc7636 import s256
from tests.e2e.harness import BASTION
from tests.e2e.harness import Bastion
from tests.e2e.harness import free_port

pytestmark = pytest.mark.slow

WORKERS = 4
GUESSES = 200
LOCKOUT_AFTER = 10
PASSWORD = "correct horse battery"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
TX_RE = re.compile(r'name="tx" value="([^"]+)"')


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own: the server's keys have no per-test prefix."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not listen in 10 s"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def _start(tmp_path: Path, state_url: str) -> Bastion:
    storage = f'[storage]\nstate_url = "{state_url}"\n' if state_url else ""
    bastion = Bastion(
        tmp_path,
        # No delays (they are not what is measured) and a loose address limit: the account's counts.
        extra_config=(
            "[authorization_server.login_throttle]\n"
            f"lockout_after = {LOCKOUT_AFTER}\nfree_attempts = {LOCKOUT_AFTER}\nip_factor = 100\n"
        ),
        gateway_config=storage,
    )
    bastion.cli(
        "clients",
        "create",
        "--name",
        "shop",
        "--public",
        "--grant-type",
        "authorization_code",
        "--scope",
        "openid",
        "--redirect-uri",
        "https://app.example/cb",
        "--client-id",
        "web",
    )
    created = subprocess.run(
        [*BASTION, "--config", str(bastion.config), "users", "create", "alice", "--password-stdin"],
        input=PASSWORD.encode() + b"\n",
        env=bastion.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr.decode()
    bastion.start("--workers", str(WORKERS))
    return bastion


def _login_form(bastion: Bastion) -> tuple[dict[str, str], dict[str, str]]:
    """The session cookie and the login form's fields, as a browser holds them."""
    browser = requests.Session()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": "web",
            "redirect_uri": "https://app.example/cb",
            "scope": "openid",
            "state": "st",
            "code_challenge": s256("verifier-" + "x" * 50),
            "code_challenge_method": "S256",
        }
    )
    page = browser.get(f"{bastion.issuer}/authorize?{query}", timeout=10)
    assert page.status_code == 200, page.text
    csrf = CSRF_RE.search(page.text)
    tx = TX_RE.search(page.text)
    assert csrf is not None
    assert tx is not None
    return browser.cookies.get_dict(), {"csrf_token": csrf.group(1), "tx": tx.group(1)}


async def _guess_all(
    bastion: Bastion, cookies: dict[str, str], form: dict[str, str]
) -> list[tuple[int, str]]:
    connector = aiohttp.TCPConnector(limit=GUESSES)
    async with aiohttp.ClientSession(
        connector=connector, cookies=cookies, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def guess(n: int) -> tuple[int, str]:
            data = {**form, "username": "alice", "password": f"wrong guess {n}"}
            async with session.post(f"{bastion.issuer}/login", data=data, allow_redirects=False) as response:
                await response.read()
                return response.status, response.headers.get("retry-after", "")

        return await asyncio.gather(*(guess(n) for n in range(GUESSES)))


def _brute_force(tmp_path: Path, state_url: str) -> None:
    bastion = _start(tmp_path, state_url)
    try:
        cookies, form = _login_form(bastion)
        # One at a time first: the third wrong password on the embedded default was once a 500.
        sequential = [
            requests.post(
                f"{bastion.issuer}/login",
                data={**form, "username": "bob", "password": "wrong guess"},
                cookies=cookies,
                allow_redirects=False,
                timeout=10,
            ).status_code
            for _ in range(LOCKOUT_AFTER + 2)
        ]
        assert sequential == [400] * LOCKOUT_AFTER + [429] * 2
        answers = asyncio.run(_guess_all(bastion, cookies, form))
        statuses = [status for status, _ in answers]
        assert set(statuses) <= {400, 429}, f"only wrong-password and throttled answers: {statuses}"
        wrong = statuses.count(400)
        assert 1 <= wrong <= LOCKOUT_AFTER + WORKERS, f"{wrong} guesses reached the password check"
        refused = [retry_after for status, retry_after in answers if status == 429]
        assert len(refused) == GUESSES - wrong
        assert all(value.isdigit() and int(value) >= 1 for value in refused), refused
        # Locked now, even with the right password.
        right = requests.post(
            f"{bastion.issuer}/login",
            data={**form, "username": "alice", "password": PASSWORD},
            cookies=cookies,
            allow_redirects=False,
            timeout=10,
        )
        assert right.status_code == 429
        assert int(right.headers["retry-after"]) >= 1
    finally:
        bastion.stop()
    assert "Traceback" not in bastion.log_text()


def test_workers_on_the_embedded_default_let_at_most_lockout_after_guesses_through(tmp_path: Path) -> None:
    _brute_force(tmp_path, "")


def test_workers_on_redis_let_at_most_lockout_after_guesses_through(
    tmp_path: Path, private_redis: str
) -> None:
    _brute_force(tmp_path, private_redis)

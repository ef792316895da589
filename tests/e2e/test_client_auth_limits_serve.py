"""`bastion serve --workers 2` on the embedded default (the SQLite state file shared by the
workers): 200 concurrent wrong secrets for one client from one address reach the secret check
at most ``per_client_address`` times for the whole server; the rest are 429 with Retry-After,
none 500. The client keeps working from another address, and each client's request rate at
introspection holds for the server, not per worker."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.harness import Bastion

pytestmark = pytest.mark.slow

WORKERS = 2
GUESSES = 200
PER_PAIR = 10
BURST = 30


async def _post(
    bastion: Bastion, path: str, auth: tuple[str, str], count: int, local: str = "127.0.0.1"
) -> list[tuple[int, dict[str, str], str]]:
    form = {"grant_type": "client_credentials"} if path == "/token" else {"token": "not-a-token"}
    # RFC 6749 §2.3.1 form-encodes id and secret first; these (a UUID, URL-safe text) need none.
    headers = {"authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()}
    connector = aiohttp.TCPConnector(limit=count, local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one() -> tuple[int, dict[str, str], str]:
            async with session.post(f"{bastion.issuer}{path}", data=form, headers=headers) as response:
                return response.status, dict(response.headers), await response.text()

        return await asyncio.gather(*(one() for _ in range(count)))


def test_two_workers_on_the_embedded_default_hold_one_limit_for_the_server(tmp_path: Path) -> None:
    bastion = Bastion(
        tmp_path,
        extra_config=(
            "[authorization_server.client_auth_throttle]\n"
            f"per_client_address = {PER_PAIR}\n"
            "[authorization_server.client_rate_limit]\n"
            f"requests = 1\nper = 60\nburst = {BURST}\n"
        ),
    )
    billing = bastion.cli_json("clients", "create", "--name", "billing", "--scope", "read")
    api = bastion.cli_json("clients", "create", "--name", "api", "--scope", "read")
    bastion.start("--workers", str(WORKERS))
    try:
        guesses = asyncio.run(_post(bastion, "/token", (billing["client_id"], "wrong"), GUESSES))
        statuses = [status for status, _, _ in guesses]
        assert set(statuses) <= {401, 429}, statuses
        assert statuses.count(401) == PER_PAIR, "counted first: exactly the limit reached the check"
        for status, headers, body in guesses:
            if status == 401:
                assert '"invalid_client"' in body
                assert headers["WWW-Authenticate"].startswith("Basic realm=")
            else:
                assert '"temporarily_unavailable"' in body
                assert 1 <= int(headers["Retry-After"]) <= 900
        right = (billing["client_id"], billing["client_secret"])
        [(locked, _, _)] = asyncio.run(_post(bastion, "/token", right, 1))
        assert locked == 429, "locked from that address, even with the right secret"
        [(elsewhere, _, _)] = asyncio.run(_post(bastion, "/token", right, 1, local="127.0.0.2"))
        assert elsewhere == 200, "the client keeps working from another address"

        # The request rate: a burst of BURST for the whole server, whichever worker serves.
        api_auth = (api["client_id"], api["client_secret"])
        answers = asyncio.run(_post(bastion, "/introspect", api_auth, 2 * BURST, local="127.0.0.3"))
        codes = [status for status, _, _ in answers]
        assert codes.count(200) == BURST, codes
        assert codes.count(429) == BURST
    finally:
        bastion.stop()
    assert "Traceback" not in bastion.log_text()

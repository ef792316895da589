"""End to end: ``bastion keys check`` against a running server and gateway, and offline.

It exits 0 with nothing to say when all is well, and 1 with one line per finding, naming the
key: a signing key overdue or due soon, a published key missing from the served JWKS, a key a
gateway has not picked up (read from ``/keys`` on the gateway's admin listener).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gw_stack import GatewayStack
from tests.e2e.gw_stack import get
from tests.e2e.harness import BASTION
from tests.e2e.harness import Bastion

pytestmark = pytest.mark.slow


def check(bastion: Bastion, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [*BASTION, "--config", str(bastion.config), "keys", "check", *args],
        env=bastion.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[GatewayStack]:
    running = GatewayStack(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def empty_jwks() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"keys": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()


def test_a_healthy_stack_passes_and_a_lagging_gateway_is_named(stack: GatewayStack, empty_jwks: str) -> None:
    bastion = stack.bastion
    admin = f"http://127.0.0.1:{stack.admin_port}"
    with urllib.request.urlopen(f"{admin}/keys", timeout=5) as response:
        held = json.load(response)
    published = {k["kid"] for k in bastion.cli_json("keys", "list") if k["state"] != "expired"}
    assert set(held["issuers"][stack.issuer]["kids"]) == published

    assert check(bastion, "--gateway", admin) == (0, "")

    new = bastion.cli("keys", "rotate", "--alg", "ES256").split()[3].rstrip(":")  # "new ES256 key <kid>: ..."
    time.sleep(2.5)  # longer than the publish delay (jwks_max_age = 2): a gateway should hold it
    code, out = check(bastion, "--gateway", admin, "--json")
    findings = json.loads(out)
    assert code == 1
    assert [(f["kind"], f["kid"]) for f in findings] == [("gateway_lag", new)]
    assert findings[0]["message"].startswith(
        f"the gateway at {admin} lacks pending ES256 key {new}, published "
    )

    # A request makes the gateway refresh its stale key set; then it holds the new key.
    status, _, _ = get(stack.gateway_port, "/api/orders", stack.token(stack.reader, "orders:read"))
    assert status == 200
    deadline = time.monotonic() + 10
    while check(bastion, "--gateway", admin) != (0, ""):
        assert time.monotonic() < deadline, "the gateway never picked up the new key"
        status, _, _ = get(stack.gateway_port, "/api/orders", stack.token(stack.reader, "orders:read"))
        time.sleep(0.3)

    code, out = check(bastion, "--jwks-url", empty_jwks)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == len(published) + 1
    # Pending, or active by now on a slow run (it signs 12 s after the rotation).
    assert any(
        line.startswith("unpublished: ")
        and line.endswith(f" ES256 key {new} is missing from the JWKS at {empty_jwks}")
        for line in lines
    ), lines


def test_overdue_and_expiring_keys_are_named_without_a_server(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path, "key_rotation_days = 1\n")
    es256 = next(k["kid"] for k in bastion.cli_json("keys", "list") if k["alg"] == "ES256")
    code, out = check(bastion, "--warn-days", "2")
    assert code == 1
    assert (
        f"expiring: ES256 key {es256} is due for rotation in 1.0 days and no successor is published yet"
        in out
    )
    assert f"unreachable: cannot read the JWKS at {bastion.issuer}/jwks.json: " in out

    bastion.config.write_text(
        bastion.config.read_text().replace("key_rotation_days = 1", "key_rotation_days = 0.00001")
    )
    time.sleep(1)
    code, out = check(bastion, "--grace-days", "0")
    assert code == 1
    assert f"overdue: ES256 key {es256} has signed for 0.0 days; rotation was due after 1e-05" in out
    assert bastion.cli_json("keys", "list")  # the check itself rotated nothing

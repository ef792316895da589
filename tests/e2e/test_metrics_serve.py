"""One metrics listener per server: ``bastion serve --workers 2`` answers one scrape with the sum
of both workers' counters, and with one worker the same listener serves the worker's own."""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.gw_stack import KeepAliveClient
from tests.e2e.gw_stack import child_pids
from tests.e2e.gw_stack import listening_pids
from tests.e2e.gw_stack import owner_of_connection
from tests.e2e.harness import Bastion
from tests.e2e.harness import free_port

pytestmark = pytest.mark.slow


def gateway_section(issuer: str, gateway_port: int) -> str:
    return f"""
[gateway]
listen = "127.0.0.1:{gateway_port}"
access_log = ""
[[gateway.issuers]]
issuer = "{issuer}"
audience = "https://api.metrics"
[gateway.upstreams.app]
targets = ["127.0.0.1:9"]
[[gateway.routes]]
prefix = "/api"
upstream = "app"
"""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain")
        return str(response.read().decode())


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        if all(have.get(key) == want for key, want in labels.items()):
            total, found = total + float(match[3]), True
    assert found, f"no sample {name}{labels} in:\n{text}"
    return total


def spread(port: int, workers: set[int], request: bytes, minimum: int = 3) -> dict[int, int]:
    """Send ``request`` on fresh keep-alive connections to ``port`` until every worker has
    answered at least ``minimum`` of them; returns the answers by worker pid."""
    served: dict[int, int] = {}
    for _ in range(400):
        client = KeepAliveClient(port)
        try:
            client.sock.sendall(request)
            status, _, _ = client.read_response()
            assert status in (200, 401), status
            owner = owner_of_connection(port, client.local_port, workers)
            assert owner is not None, "no worker holds the connection"
            served[owner] = served.get(owner, 0) + 1
        finally:
            client.close()
        if len(served) == len(workers) and min(served.values()) >= minimum:
            return served
    raise AssertionError(f"the requests never reached every worker: {served}")


def test_two_workers_are_one_scrape_target_whose_counters_are_the_sums(tmp_path: Path) -> None:
    gateway_port, metrics_port = free_port(), free_port()
    bastion = Bastion(tmp_path, extra_config=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    bastion.config.write_text(bastion.config.read_text() + gateway_section(bastion.issuer, gateway_port))
    created = bastion.cli_json("clients", "create", "--name", "m", "--scope", "read")
    try:
        bastion.start("--workers", "2")
        assert bastion.process is not None
        supervisor = bastion.process.pid
        deadline = time.monotonic() + 30
        workers: set[int] = set()
        while len(workers) < 2 or len(listening_pids(gateway_port, workers)) < 2:
            assert time.monotonic() < deadline, f"two workers never listened:\n{bastion.log_text()}"
            workers = listening_pids(bastion.port, child_pids(supervisor))
            time.sleep(0.05)
        # The supervisor alone holds the metrics listener.
        assert listening_pids(metrics_port, {supervisor, *workers}) == {supervisor}

        form = f"grant_type=client_credentials&client_id={created['client_id']}&client_secret={created['client_secret']}"
        token_request = (
            f"POST /token HTTP/1.1\r\nHost: e2e\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(form)}\r\n\r\n{form}"
        ).encode()
        tokens = spread(bastion.port, workers, token_request)
        refused = spread(gateway_port, workers, b"GET /api/orders HTTP/1.1\r\nHost: e2e\r\n\r\n")

        text = scrape(metrics_port)
        assert (
            value(text, "bastion_worker_up", worker="0") == value(text, "bastion_worker_up", worker="1") == 1
        )
        ok = value(text, "bastion_as_token_requests_total", grant_type="client_credentials", outcome="ok")
        assert ok == sum(tokens.values())
        assert value(text, "bastion_as_requests_total", endpoint="/token", status="200") == sum(
            tokens.values()
        )
        assert value(text, "bastion_as_request_duration_seconds_count", endpoint="/token") == sum(
            tokens.values()
        )
        assert value(text, "bastion_gateway_requests_total", route="/api", status="401") == sum(
            refused.values()
        )
        assert value(text, "bastion_gateway_auth_failures_total", reason="missing") == sum(refused.values())
        buckets = value(text, "bastion_gateway_request_duration_seconds_bucket", route="/api", le="+Inf")
        assert buckets == sum(refused.values())
        # Gauges are not summed: each worker has one active ES256 key, and so has the server.
        assert value(text, "bastion_as_signing_keys", alg="ES256", state="active") == 1
        # Each worker's revocation feed subscribes on its own schedule; once both are up, the
        # merged gauge (the minimum) is 1.
        feeds_deadline = time.monotonic() + 15
        while value(scrape(metrics_port), "bastion_feed_up", feed="revocations") != 1:
            assert time.monotonic() < feeds_deadline, "a worker's revocation feed never came up"
            time.sleep(0.2)
        assert "_created" not in text
        # The next scrape keeps the totals.
        assert value(scrape(metrics_port), "bastion_as_token_requests_total", outcome="ok") == ok

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5) as response:
            assert response.status == 200
        # /keys: the signing keys both workers' gateways hold (what `bastion keys check` reads).
        with urllib.request.urlopen(f"{bastion.issuer}/jwks.json", timeout=5) as response:
            published = {key["kid"] for key in json.load(response)["keys"]}
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/keys", timeout=5) as response:
            held = json.load(response)["issuers"]
        assert set(held[bastion.issuer]["kids"]) == published
    finally:
        bastion.stop()


def test_one_worker_serves_the_same_listener_for_an_authorization_server_alone(tmp_path: Path) -> None:
    metrics_port = free_port()
    bastion = Bastion(tmp_path, extra_config=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    try:
        bastion.start()
        assert bastion.process is not None
        connection = http.client.HTTPConnection("127.0.0.1", bastion.port, timeout=5)
        connection.request(
            "POST",
            "/token",
            "grant_type=client_credentials&client_id=nobody&client_secret=wrong",
            {"content-type": "application/x-www-form-urlencoded"},
        )
        assert connection.getresponse().status == 401
        connection.close()
        text = scrape(metrics_port)
        assert (
            value(
                text,
                "bastion_as_token_requests_total",
                grant_type="client_credentials",
                outcome="invalid_client",
            )
            == 1
        )
        assert value(text, "bastion_as_signins_total", outcome="failed") == 0
        assert value(text, "bastion_as_signing_key_rotation_seconds", alg="ES256") > 86400
        assert "bastion_worker_up" not in text  # no supervisor: the worker serves itself
        supervisor = bastion.process.pid
        assert listening_pids(metrics_port, {supervisor}) == {supervisor}
    finally:
        bastion.stop()

"""Alert rules in real ``bastion serve`` processes.

* An upstream failing on demand makes a route's 5xx ratio spike: the rule fires, its signed
  webhook reaches a real receiver (which checks the HMAC and the timestamp) after one refused
  attempt, the route's circuit opens (503) and closes again, the alert resolves, and
  ``bastion alerts list`` shows the firing with each action's outcome.
* A burst of refused tokens from one address, spread over two gateway processes sharing the
  stores (the embedded SQLite state, and Redis), reaches the rule's threshold exactly once and
  bans the address on both.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.gw_stack import GatewayStack
from tests.e2e.gw_stack import get
from tests.e2e.test_bans_serve import second_process
from tests.e2e.test_bans_serve import wait_status
from tests.ops.webhook_receiver import WebhookReceiver

SECRET = "e2e-webhook-secret-0123456789"
ROUTES = """
[[gateway.routes]]
prefix = "/api"
upstream = "app"
scopes = { GET = ["orders:read"] }

[[gateway.routes]]
prefix = "/public"
upstream = "app"
auth = "none"
"""


def spike_config(url: str) -> str:
    return f"""
[alerts]
interval = 0.2

[[alerts.rules]]
name = "public-5xx"
kind = "http_5xx_ratio"
threshold = 0.5
min_requests = 5
window = 4
cooldown = 60
actions = ["webhook", "open_circuit"]
webhook = "ops"
duration = 2

[alerts.webhooks.ops]
url = "{url}"
secret_env = "BASTION_TEST_WEBHOOK_SECRET"
backoff = 0.1
"""


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_5xx_spike_fires_its_webhook_opens_the_circuit_and_resolves(tmp_path: Path) -> None:
    receiver = WebhookReceiver(SECRET.encode(), fail_first=1)
    stack = GatewayStack(
        tmp_path,
        routes=ROUTES,
        bans=spike_config(receiver.url),
        env={"BASTION_TEST_WEBHOOK_SECRET": SECRET},
    )
    try:
        port = stack.gateway_port
        # The upstream fails until the rule opens the route's circuit (evaluated every 0.2 s).
        statuses = [get(port, "/public/orders?status=500")[0] for _ in range(8)]
        assert statuses[:4] == [500] * 4
        assert set(statuses) <= {500, 503}
        (firing,) = receiver.wait(1)
        assert receiver.rejected == []
        assert receiver.attempts == 2  # the first was answered 503, the retry accepted
        assert (firing["status"], firing["rule"], firing["kind"], firing["labels"]) == (
            "firing",
            "public-5xx",
            "http_5xx_ratio",
            {"route": "/public"},
        )
        assert firing["value"] >= 0.5
        assert firing["test"] is False
        # The circuit is open: the route answers 503 without asking the upstream.
        mark = stack.upstream.mark()
        status, headers, _ = get(port, "/public/orders")
        assert status == 503
        assert headers["content-type"] == "application/problem+json"
        assert stack.upstream.since(mark) == []
        # It closes after `duration`; once the errors leave the window, the alert resolves.
        wait_for(lambda: get(port, "/public/orders")[0] == 200, timeout=5)
        resolved = receiver.wait(2)[1]
        assert (resolved["status"], resolved["alert_id"]) == ("resolved", firing["alert_id"])
        # Resolved once the window held fewer than min_requests (no ratio) or a healthy one.
        assert resolved["value"] is None or resolved["value"] < 0.5

        def listed() -> list[dict[str, Any]] | None:
            found = stack.bastion.cli_json("alerts", "list", "--since", "1h")
            return found if found and found[0]["resolved_at"] and len(found[0]["actions"]) == 3 else None

        (alert,) = wait_for(listed)
        assert (alert["alert_id"], alert["rule"], alert["labels"]) == (
            firing["alert_id"],
            "public-5xx",
            {"route": "/public"},
        )
        actions = {(a["action"], a["target"]): a for a in alert["actions"]}
        assert actions[("webhook", "ops (firing)")]["outcome"] == "delivered"
        assert actions[("webhook", "ops (firing)")]["attempts"] == 2
        assert actions[("webhook", "ops (resolved)")]["outcome"] == "delivered"
        circuit = actions[("open_circuit", "/public")]
        assert circuit["outcome"] == "done"
        assert (
            1.5
            <= (
                datetime.fromisoformat(circuit["until"]) - datetime.fromisoformat(alert["fired_at"])
            ).total_seconds()
            <= 2.5
        )
        table = stack.bastion.cli("alerts", "list")
        assert "public-5xx  route=/public" in table
        assert "webhook ops (firing): delivered after 2 attempt(s)" in table
    finally:
        stack.stop()
        receiver.close()


def test_alerts_test_sends_the_webhook_once(tmp_path: Path) -> None:
    receiver = WebhookReceiver(SECRET.encode())
    stack = GatewayStack(
        tmp_path, routes=ROUTES, bans=spike_config(receiver.url), env={"BASTION_TEST_WEBHOOK_SECRET": SECRET}
    )
    try:
        out = stack.bastion.cli("alerts", "test", "public-5xx")
        assert "webhook ops: delivered after 1 attempt(s)" in out
        assert "open_circuit: not carried out by a test" in out
        (body,) = receiver.received
        assert (body["rule"], body["test"]) == ("public-5xx", True)
        assert get(stack.gateway_port, "/public/orders")[0] == 200  # no circuit opened
    finally:
        stack.stop()
        receiver.close()


BURST = """
[gateway.bans.auth]
threshold = 0

[alerts]
interval = 0.5

[[alerts.rules]]
name = "auth-burst"
kind = "auth_failures_per_address"
threshold = 3
window = 60
actions = ["ban"]
duration = 120
"""
BAD = "e30.e30.c2ln"


def test_a_401_burst_over_two_gateways_bans_the_address_on_both(
    tmp_path: Path, state_env: dict[str, str]
) -> None:
    stack = GatewayStack(tmp_path / "a", routes=ROUTES, bans=BURST, env=state_env)
    other = None
    try:
        other, other_port = second_process(stack, tmp_path / "b", stack.bastion.env)
        token = stack.token(stack.reader)
        # Gateway bans for refused tokens are off: only the alert rule counts them.
        assert get(stack.gateway_port, "/api/orders", BAD)[0] == 401
        assert get(other_port, "/api/orders", BAD)[0] == 401
        assert get(stack.gateway_port, "/api/orders", token)[0] == 200
        # The third failure, on the other process, reaches the threshold counted across both.
        assert get(other_port, "/api/orders", BAD)[0] == 401
        assert get(other_port, "/api/orders", token)[0] == 403
        wait_status(stack.gateway_port, token, 403)
        for port in (stack.gateway_port, other_port):  # more failures fire nothing more
            get(port, "/api/orders", BAD)

        listed = stack.bastion.cli_json("bans", "list")
        assert [(b["network"], b["kind"], b["reason"]) for b in listed] == [
            ("127.0.0.1", "alert", "alert auth-burst: 3 in 60 s >= 3")
        ]
        assert (
            119
            <= (
                datetime.fromisoformat(listed[0]["until"]) - datetime.fromisoformat(listed[0]["since"])
            ).total_seconds()
            <= 121
        )

        def fired() -> list[dict[str, Any]] | None:
            found = stack.bastion.cli_json("alerts", "list")
            return found if found and found[0]["actions"] else None

        (alert,) = wait_for(fired)
        assert (alert["rule"], alert["labels"], alert["value"]) == ("auth-burst", {"address": "127.0.0.1"}, 3)
        assert [(a["action"], a["target"], a["outcome"]) for a in alert["actions"]] == [
            ("ban", "127.0.0.1", "done")
        ]
    finally:
        if other is not None:
            other.stop()
        stack.stop()

"""A ban shared by two real gateway processes (two ``bastion serve`` on one data dir), over a
private Redis and over the embedded default (the SQLite state file in the shared data dir).

Process A earns the ban (N authentication failures); process B enforces it within a bound;
``bastion bans remove`` lifts it on both; the ban and the unban are audit events.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from tests.e2e.gw_stack import ROUTES
from tests.e2e.gw_stack import GatewayStack
from tests.e2e.gw_stack import get
from tests.e2e.harness import Bastion
from tests.e2e.harness import free_port

N = 3
#: How long a ban made on one process may take to be enforced by the other.
BOUND = 5.0
BANS = f"""
[gateway.bans.auth]
threshold = {N}
"""
BAD = "e30.e30.c2ln"


def second_process(stack: GatewayStack, tmp: Path, env: dict[str, str]) -> tuple[Bastion, int]:
    """Another ``bastion serve`` on the first one's data dir and stores, on ports of its own."""
    tmp.mkdir()
    # Its own admin API port, not the first process's.
    other = Bastion(
        tmp, env={k: v for k, v in env.items() if k != "BASTION_AUTHORIZATION_SERVER__ADMIN_LISTEN"}
    )
    gateway_port, admin_port = free_port(), free_port()
    text = stack.bastion.config.read_text()
    text = text.replace(f'listen = "127.0.0.1:{stack.bastion.port}"', f'listen = "127.0.0.1:{other.port}"')
    text = text.replace(f'listen = "127.0.0.1:{stack.gateway_port}"', f'listen = "127.0.0.1:{gateway_port}"')
    text = text.replace(
        f'admin_listen = "127.0.0.1:{stack.admin_port}"', f'admin_listen = "127.0.0.1:{admin_port}"'
    )
    other.config.write_text(text)
    other.issuer = f"http://127.0.0.1:{other.port}"  # its health URL; the tokens' issuer stays A's
    other.start()
    deadline = time.monotonic() + 20
    while get(gateway_port, "/public/ready")[0] != 200:
        assert time.monotonic() < deadline, "the second gateway did not answer"
        time.sleep(0.05)
    return other, gateway_port


def wait_status(port: int, token: str, status: int) -> float:
    """Seconds until ``GET /api/orders`` with ``token`` gets ``status`` (fails after BOUND)."""
    start = time.monotonic()
    while True:
        got = get(port, "/api/orders", token)[0]
        if got == status:
            return time.monotonic() - start
        assert time.monotonic() - start < BOUND, f"still {got}, not {status}, after {BOUND} s"
        time.sleep(0.02)


def audit_events(data: Path, deadline: float = 5.0) -> list[dict[str, object]]:
    end = time.monotonic() + deadline
    while True:
        path = data / "audit.log"
        lines = path.read_text().splitlines() if path.exists() else []
        events = [json.loads(line) for line in lines if '"ip.' in line]
        if len(events) >= 2 or time.monotonic() > end:
            return events
        time.sleep(0.1)


def test_a_ban_earned_on_one_process_is_enforced_by_the_other_and_lifted_on_both(
    tmp_path: Path, state_env: dict[str, str]
) -> None:
    stack = GatewayStack(tmp_path / "a", routes=ROUTES, bans=BANS, env=state_env)
    other = None
    try:
        other, other_port = second_process(stack, tmp_path / "b", stack.bastion.env)
        token = stack.token(stack.reader)
        assert get(other_port, "/api/orders", token)[0] == 200
        for _ in range(N):
            assert get(stack.gateway_port, "/api/orders", BAD)[0] == 401
        status, headers, body = get(stack.gateway_port, "/api/orders", token)
        assert status == 403
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["detail"] == "Requests from this address are refused for a while"
        wait_status(other_port, token, 403)

        listed = stack.bastion.cli_json("bans", "list")
        assert [(b["network"], b["source"], b["kind"], b["repeat"]) for b in listed] == [
            ("127.0.0.1", "auto", "auth", 1)
        ]
        assert listed[0]["reason"] == f"{N} authentication failures in 60 s"
        assert (
            599
            <= (
                datetime.fromisoformat(listed[0]["until"]) - datetime.fromisoformat(listed[0]["since"])
            ).total_seconds()
            <= 601
        )

        assert "lifted the ban of 127.0.0.1" in stack.bastion.cli(
            "bans", "remove", "127.0.0.1", "--reason", "test over"
        )
        wait_status(stack.gateway_port, token, 200)
        wait_status(other_port, token, 200)
        assert stack.bastion.cli_json("bans", "list") == []

        events = audit_events(tmp_path / "a" / "data")
        assert [(e["type"], e["actor"], e["subject"], e["reason"]) for e in events] == [
            ("ip.banned", "system", "127.0.0.1", f"{N} authentication failures in 60 s"),
            ("ip.unbanned", "cli", "127.0.0.1", "test over"),
        ]
    finally:
        if other is not None:
            other.stop()
        stack.stop()

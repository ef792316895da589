"""``bastion bans list | add | remove`` on a real SQLite data dir, with their audit events."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from tests.cli.conftest import Invoke
from tests.cli.conftest import make_invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def audit(config_file: Path) -> list[dict[str, Any]]:
    path = config_file.parent / "data" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if '"ip.' in line]


def test_add_list_remove(invoke: Invoke, config_file: Path) -> None:
    assert invoke("bans", "list").output == "no bans in force\n"
    before = time.time()
    added = ok_json(
        invoke("bans", "add", "203.0.113.7", "--for", "1h", "--reason", "credential stuffing", "--json")
    )
    assert added["network"] == "203.0.113.7"
    assert added["source"] == "manual"
    assert 3599 <= datetime.fromisoformat(added["until"]).timestamp() - before <= 3601
    result = invoke("bans", "add", "2001:db8:1:2::99", "--for", "15m", "--reason", "scanner")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("banned 2001:db8:1:2::/64 until ")

    listed = ok_json(invoke("bans", "list", "--json"))
    assert [(b["network"], b["reason"], b["source"], b["repeat"]) for b in listed] == [
        ("203.0.113.7", "credential stuffing", "manual", 0),
        ("2001:db8:1:2::/64", "scanner", "manual", 0),
    ]
    table = invoke("bans", "list").output.splitlines()
    assert table[0].split()[:3] == ["NETWORK", "SOURCE", "SINCE"]
    assert table[1].startswith("203.0.113.7 ")
    assert table[1].endswith("credential stuffing")

    # Any address of the /64 names its ban.
    result = invoke("bans", "remove", "2001:db8:1:2::1", "--reason", "false positive")
    assert result.exit_code == 0, result.output
    assert result.output == "lifted the ban of 2001:db8:1:2::/64\n"
    assert [b["network"] for b in ok_json(invoke("bans", "list", "--json"))] == ["203.0.113.7"]

    again = invoke("bans", "remove", "2001:db8:1:2::1")
    assert again.exit_code == 1
    assert "no ban of 2001:db8:1:2::/64 is in force" in again.output

    events = audit(config_file)
    assert [(e["type"], e["actor"], e["subject"], e["reason"]) for e in events] == [
        ("ip.banned", "cli", "203.0.113.7", "credential stuffing"),
        ("ip.banned", "cli", "2001:db8:1:2::/64", "scanner"),
        ("ip.unbanned", "cli", "2001:db8:1:2::/64", "false positive"),
    ]
    assert events[2]["details"]["banned_for"] == "scanner"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("evil", "--for", "1h", "--reason", "x"), "is not an IP address or network"),
        (("203.0.113.7", "--for", "soon", "--reason", "x"), "is not a duration"),
        (("203.0.113.7", "--for", "0s", "--reason", "x"), "at most a year"),
        (("203.0.113.7", "--for", "2w", "--reason", " "), "give a reason"),
        (("203.0.113.7", "--for", "1h"), "Missing option '--reason'"),
    ],
)
def test_add_refuses_bad_input(invoke: Invoke, args: tuple[str, ...], message: str) -> None:
    result = invoke("bans", "add", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_trusted_proxies_and_exempt_networks_cannot_be_banned(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        '[gateway]\ntrusted_proxies = ["10.0.0.10/32"]\n'
        '[gateway.bans]\nexempt = ["192.0.2.0/24"]\n'
    )
    invoke = make_invoke(config)
    for target in ("10.0.0.10", "10.0.0.0/8", "192.0.2.77", "0.0.0.0/0"):
        result = invoke("bans", "add", target, "--for", "1h", "--reason", "x")
        assert result.exit_code == 1, result.output
        assert "a trusted proxy or exempt network" in result.output
    assert invoke("bans", "add", "10.0.0.11", "--for", "1h", "--reason", "x").exit_code == 0
    assert invoke("bans", "list", "--json").stdout.count('"network"') == 1


def test_help_names_the_commands(invoke: Invoke) -> None:
    result = invoke("bans", "--help")
    assert result.exit_code == 0
    for command in ("list", "add", "remove"):
        assert f"  {command} " in result.output
    add = invoke("bans", "add", "--help").output
    assert "--for DURATION" in add
    assert "--reason" in add

"""The shipped systemd unit: `systemd-analyze verify` accepts it, and it keeps its hardening."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "bastion.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name, []).append(value)
    return found


def test_the_unit_is_hardened_and_reads_the_kek_as_a_credential() -> None:
    unit = directives()
    for name, value in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "bastion"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("LoadCredential", "kek:/etc/bastion/credentials/kek"),
    ]:
        assert unit[name] == [value], name
    assert "BASTION_KEK_FILE=%d/kek" in unit["Environment"]
    assert not any(value.startswith("BASTION_KEK=") for value in unit["Environment"]), (
        "no KEK in the environment"
    )


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # verify checks that ExecStart's program exists: point it at a stand-in in a copy.
    program = tmp_path / "bastion"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "bastion.service"
    unit.write_text(UNIT.read_text().replace("/opt/bastion/bin/bastion", str(program)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "bastion.service" in line and "network-online.target" not in line
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert problems == [], problems

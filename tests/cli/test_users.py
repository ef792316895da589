"""``bastion users create`` asks for the password on a terminal, and only there."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import KEK

pytestmark = pytest.mark.slow


def _read_until(fd: int, marker: bytes, deadline: float) -> bytes:
    seen = b""
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_password_prompt_on_a_terminal(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("BASTION_CONFIG", "BASTION_KEK_FILE")}
    env["BASTION_KEK"] = KEK
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "bastion.cli", "--config", str(config), "users", "create", "erin"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
    )
    os.close(follower)
    try:
        deadline = time.monotonic() + 60
        _read_until(leader, b"Password:", deadline)
        os.write(leader, b"a long password\n")
        _read_until(leader, b"Repeat for confirmation:", deadline)
        os.write(leader, b"a long password\n")
        output = _read_until(leader, b"created user erin", deadline)
        assert b"created user erin" in output
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)

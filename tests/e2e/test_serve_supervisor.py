"""`bastion serve --workers N` stops as a whole when one worker cannot run."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.harness import Bastion
from tests.e2e.harness import free_port

pytestmark = pytest.mark.slow


def test_a_worker_that_cannot_start_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    admin = free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", admin + 1))  # worker 1's metrics port is taken
    blocker.listen()
    gateway = f"""
[gateway]
listen = "127.0.0.1:{free_port()}"
admin_listen = "127.0.0.1:{admin}"
access_log = ""
[gateway.upstreams.app]
targets = ["127.0.0.1:9"]
[[gateway.routes]]
prefix = "/"
upstream = "app"
auth = "none"
"""
    bastion = Bastion(tmp_path, extra_config="", gateway_config=gateway)
    try:
        bastion.start_process("--workers", "2")
        assert bastion.process is not None
        code = bastion.process.wait(timeout=60)
        assert code == 1
        log = bastion.log_text()
        assert "worker 1 exited" in log
        assert "stopping the others" in log
    finally:
        blocker.close()
        bastion.stop()

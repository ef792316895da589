"""`bastion serve --workers N` stops as a whole when one worker dies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.gw_stack import child_pids
from tests.e2e.gw_stack import listening_pids
from tests.e2e.harness import Bastion

pytestmark = pytest.mark.slow


def test_a_worker_that_dies_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path)
    try:
        bastion.start("--workers", "2")
        assert bastion.process is not None
        # The supervisor bound the port; both workers accept on it.
        deadline = time.monotonic() + 30
        workers: set[int] = set()
        while len(workers) < 2:
            assert time.monotonic() < deadline, f"two workers never listened:\n{bastion.log_text()}"
            workers = listening_pids(bastion.port, child_pids(bastion.process.pid))
            time.sleep(0.05)
        os.kill(min(workers), signal.SIGKILL)
        code = bastion.process.wait(timeout=60)
        assert code == 1
        log = bastion.log_text()
        assert "exited with code -9" in log
        assert "stopping the others" in log
        assert "Traceback" not in log
        assert not (tmp_path / "data" / "bastion.pid").exists()
    finally:
        bastion.stop()

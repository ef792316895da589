"""Services over real processes: pinning, readiness, CPU and memory accounting, stopping."""

from __future__ import annotations

import os
import sys
import time
import urllib.request

import pytest
from procs import Service
from procs import ServiceError
from procs import core_ticks
from procs import free_port
from procs import free_port_block
from procs import wait_port_closed
from procs import worker_cores


def test_service_serves_accounts_and_stops(tmp_path) -> None:
    port = free_port()
    code = (
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        n = sum(i * i for i in range(300000))\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(str(n).encode())\n"
        "    def log_message(self, *a): pass\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    service = Service(
        "py", [sys.executable, "-c", code], cores="0", port=port, log_dir=tmp_path, ready_path="/"
    )
    with service:
        assert os.sched_getaffinity(service.pid) == {0}
        assert service.rss_bytes() > 1_000_000
        before = service.cpu_ticks()
        deadline = time.monotonic() + 10
        while service.cpu_ticks() <= before and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert response.status == 200
        assert service.cpu_ticks() > before
    assert service.proc is not None
    assert service.proc.poll() is not None
    wait_port_closed(port)


def test_service_that_exits_reports_its_log(tmp_path) -> None:
    service = Service(
        "dies",
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        cores=None,
        port=free_port(),
        log_dir=tmp_path,
    )
    with pytest.raises(ServiceError, match="exited with 3:\nboom"):
        service.start()


def test_core_ticks_grow() -> None:
    busy, total = core_ticks("0")
    assert 0 <= busy <= total
    time.sleep(0.05)
    assert core_ticks("0")[1] >= total
    with pytest.raises(ValueError, match="no cpu99"):
        core_ticks("99")


def test_worker_cores_never_names_a_missing_core() -> None:
    assert worker_cores(1) == "0"
    cores = worker_cores(64).split(",")
    assert len(cores) == len(os.sched_getaffinity(0))
    assert worker_cores(2).split(",") == cores[:2]


def test_free_port_block_is_bindable() -> None:
    import socket

    base = free_port_block(3)
    sockets = []
    try:
        for port in range(base, base + 3):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", port))
    finally:
        for sock in sockets:
            sock.close()

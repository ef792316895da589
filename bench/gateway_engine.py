"""A quick sanity figure for the gateway's HTTP/1.1 engine alone (no policies, no tokens).

Starts a trivial keep-alive upstream (an ``asyncio.Protocol`` answering a fixed 2-byte body) in
one process, the engine with a handler that always forwards in another (uvloop when installed,
as the CLI does), and measures with ``wrk`` when it is on the ``PATH``::

    .venv/bin/python bench/gateway_engine.py --duration 5 --connections 64

The full side-by-side comparison with nginx and HAProxy lives in ``bench/run.py``; its gateway
suite runs this engine as the *bare engine* row, in front of its own nginx upstream::

    .venv/bin/python bench/gateway_engine.py --serve PORT --upstream-port UPSTREAM_PORT
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


class _Upstream(asyncio.Protocol):
    """Answers every request head with a fixed response (enough for a GET-only load)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        count = data.count(b"\r\n\r\n")
        if count:
            self.transport.write(RESPONSE * count)


def _run_upstream(port: int, cpu: int) -> None:
    _pin(cpu)
    _use_uvloop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


def _run_gateway(port: int, upstream_port: int, cpu: int | None) -> None:
    _pin(cpu)
    _use_uvloop()
    from bastion.gateway.contract import Forward
    from bastion.gateway.contract import RequestHead
    from bastion.gateway.limits import EngineLimits
    from bastion.gateway.server import GatewayServer
    from bastion.gateway.upstream import UpstreamGroup

    async def main() -> None:
        group = UpstreamGroup("bench", [f"127.0.0.1:{upstream_port}"])

        def handler(head: RequestHead) -> Forward:
            return Forward(upstream=group, target=head.target, headers=head.headers)

        server = GatewayServer(handler, limits=EngineLimits())
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


def _wait_for(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds of load (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--serve", type=int, metavar="PORT", help="only serve on PORT (no upstream, no wrk)")
    parser.add_argument("--upstream-port", type=int, help="with --serve: the upstream on 127.0.0.1")
    args = parser.parse_args()
    if args.serve is not None:
        if args.upstream_port is None:
            parser.error("--serve needs --upstream-port")
        _run_gateway(args.serve, args.upstream_port, None)
        return 0
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: skipping the gateway engine benchmark")
        return 0
    upstream_port = _free_port()
    gateway_port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_run_upstream, args=(upstream_port, 1), daemon=True),
        ctx.Process(target=_run_gateway, args=(gateway_port, upstream_port, 0), daemon=True),
    ]
    for proc in procs:
        proc.start()
    try:
        _wait_for(upstream_port)
        _wait_for(gateway_port)
        url = f"http://127.0.0.1:{gateway_port}/bench"
        subprocess.run([wrk, "-t1", "-c8", "-d1s", url], check=True, capture_output=True)  # warm-up
        result = subprocess.run(
            [wrk, "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency", url],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(5)
    print(result.stdout)
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if match:
        print(f"gateway engine (one core, forward-always): {float(match.group(1)):.0f} req/s")
    if errors:
        print(f"warning: {errors.group(1)} non-2xx responses", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

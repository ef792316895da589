"""The floor forwarder over real sockets, so its row can never measure a broken forwarder.

The floor (``bench/floor.py``, started as the gateway suite starts it) sits in front of a small
keep-alive upstream from the standard library that echoes what it received.
"""

from __future__ import annotations

import http.client
import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import floor
import gateway_suite
import pytest
from procs import Service
from procs import free_port
from rounds import Target
from token_pool import TokenPool
from token_pool import make_pools
from wrk import WrkResult


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: ClassVar[list[int]] = []

    def setup(self) -> None:
        super().setup()
        type(self).connections.append(1)

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = b"%s %s auth=%s x-test=%s body=%s" % (
            self.command.encode(),
            self.path.encode(),
            str("authorization" in self.headers).encode(),
            (self.headers.get("x-test") or "").encode(),
            body,
        )
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(seen)))
        self.end_headers()
        self.wfile.write(seen)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> TokenPool:
    pools, _ = make_pools(tmp_path_factory.mktemp("tokens"), ("RS256",), count=5)
    return pools["RS256"]


@pytest.fixture(scope="module")
def forwarder(pool: TokenPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    argv = [
        sys.executable,
        str(Path(floor.__file__)),
        f"--port={port}",
        f"--upstream-port={upstream.server_address[1]}",
        f"--tokens={pool.tokens_file}",
        f"--public-pem={pool.public_pem}",
        "--alg=RS256",
    ]
    try:
        with Service("floor", argv, cores=None, port=port, log_dir=tmp_path_factory.mktemp("logs")):
            yield port
    finally:
        upstream.shutdown()
        upstream.server_close()


def _tokens(pool: TokenPool) -> list[str]:
    return pool.tokens_file.read_text().split()


def test_known_tokens_are_forwarded_on_one_kept_alive_connection_each_way(
    forwarder: int, pool: TokenPool
) -> None:
    before = len(_Echo.connections)
    conn = http.client.HTTPConnection("127.0.0.1", forwarder, timeout=5)
    bodies = []
    sockets = set()
    for number, token in enumerate(_tokens(pool)):
        conn.request(
            "GET", f"/path/{number}?q=1", headers={"Authorization": f"Bearer {token}", "X-Test": "a"}
        )
        sockets.add(id(conn.sock))
        response = conn.getresponse()
        assert response.status == 200
        bodies.append(response.read())
    conn.close()
    assert bodies == [b"GET /path/%d?q=1 auth=True x-test=a body=" % n for n in range(5)]
    assert len(sockets) == 1  # the client connection was kept alive
    assert len(_Echo.connections) - before == 1  # and so was the pooled upstream connection


def test_a_body_is_forwarded_whole(forwarder: int, pool: TokenPool) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", forwarder, timeout=5)
    token = _tokens(pool)[0]
    conn.request("POST", "/form", body=b"a=1&b=2", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"POST /form auth=True x-test= body=a=1&b=2")
    conn.close()


@pytest.mark.parametrize("reason", ["missing", "unknown", "bad signature", "expired", "wrong aud"])
def test_tokens_not_verified_at_start_up_are_refused(forwarder: int, pool: TokenPool, reason: str) -> None:
    headers = {}
    if reason == "unknown":
        headers["Authorization"] = "Bearer not-a-token"
    elif reason != "missing":
        headers["Authorization"] = f"Bearer {pool.rejects[reason]}"
    conn = http.client.HTTPConnection("127.0.0.1", forwarder, timeout=5)
    forwarded = len(_Echo.connections)
    conn.request("GET", "/", headers=headers)
    response = conn.getresponse()
    assert (response.status, response.read()) == (401, b"")
    # the connection stays usable after a refusal
    conn.request("GET", "/", headers={"Authorization": f"Bearer {_tokens(pool)[1]}"})
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"GET / auth=True x-test= body=")
    conn.close()
    assert len(_Echo.connections) == forwarded  # the refused request opened nothing upstream


def test_only_tokens_that_verify_enter_the_dict(pool: TokenPool) -> None:
    tokens = [*_tokens(pool), *pool.rejects.values()]
    found = floor.verified_tokens(tokens, pool.public_pem.read_bytes(), "RS256", now=time.time())
    assert set(found) == {t.encode() for t in _tokens(pool)}
    assert set(found.values()) == {b"client-%d" % n for n in range(5)}
    assert floor.verified_tokens(tokens, pool.public_pem.read_bytes(), "RS256", now=time.time() + 7200) == {}


def test_the_floor_note_gives_each_rows_cpu_per_request_and_the_steps_between_them() -> None:
    def row(key: str, requests: int, share: float) -> Target:
        target = Target(key, key, None, "http://127.0.0.1:1/", "get.lua")
        target.results = [WrkResult(requests, 1.0, 1.0, 1.0, 1.0, 1.0, 0, 0)] * 3
        target.server_cpu = [share] * 3
        return target

    by_key = {
        "floor-rs256": row("floor-rs256", 40_000, 0.5),  # 12.5 µs
        "engine": row("engine", 20_000, 1.0),  # 50 µs
        "bastion-cache-rs256": row("bastion-cache-rs256", 10_000, 0.9),  # 90 µs
    }
    assert gateway_suite._floor_check(by_key) == (
        "CPU per request on core 0 (medians of the rounds): floor 12.5 µs, bare engine 50.0 µs, "
        "gateway (cache hits) 90.0 µs; bare engine - floor = 37.5 µs, "
        "gateway (cache hits) - bare engine = 40.0 µs."
    )
    del by_key["engine"]
    assert gateway_suite._floor_check(by_key) == (
        "CPU per request on core 0 (medians of the rounds): floor 12.5 µs, gateway (cache hits) 90.0 µs."
    )
    assert gateway_suite._floor_check({}) is None

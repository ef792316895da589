"""Workers answer the supervisor's scrapes on a private socket; the supervisor serves the merge.

Each worker of ``bastion serve --workers N`` holds one end of a socket pair the supervisor
created for it (no port, no file, nothing another process can connect to). The exchange is
line-framed:

* the supervisor sends ``<seq>\\n``;
* the worker answers ``<seq> <pid> <length>\\n`` followed by ``length`` bytes: its registry in
  the Prometheus text format.

A late answer (the worker was busy past the supervisor's timeout) carries an old ``seq`` and is
read and dropped by the next scrape. The supervisor serves ``/metrics`` (the merge of
:mod:`bastion.ops.aggregate`) and ``/healthz`` from a thread, so its own loop (waiting on the
workers, forwarding signals) stays as it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest

from bastion.ops.aggregate import MergedMetrics
from bastion.ops.aggregate import Snapshot
from bastion.ops.aggregate import held_keys
from bastion.ops.aggregate import keys_document
from bastion.ops.aggregate import parse_snapshot

__all__ = ["MetricsEndpoint", "WorkerChannel", "answer_scrapes"]

log = logging.getLogger("bastion.metrics")

#: Longest exposition a worker may send (a guard against a corrupted length).
_MAX_BODY = 64 * 1024 * 1024


async def answer_scrapes(sock: socket.socket, registry: CollectorRegistry) -> None:
    """Answer the supervisor's scrapes on ``sock`` until it closes its end (worker side)."""
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    pid = os.getpid()
    try:
        while line := await reader.readline():
            seq = int(line)
            body = generate_latest(registry)
            writer.write(b"%d %d %d\n" % (seq, pid, len(body)) + body)
            await writer.drain()
    except (ConnectionError, ValueError) as exc:
        log.warning("metrics channel closed: %s", exc)
    finally:
        writer.close()


class WorkerChannel:
    """The supervisor's end of one worker's socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._seq = 0
        self._buffer = b""

    def close(self) -> None:
        """Close the supervisor's end (the worker sees the end of its scrapes)."""
        self._sock.close()

    def ask(self) -> int:
        """Send a scrape request; returns its sequence number (pass it to :meth:`answer`)."""
        with self._lock:
            self._seq += 1
            self._sock.sendall(b"%d\n" % self._seq)
            return self._seq

    def answer(self, seq: int, deadline: float) -> Snapshot | None:
        """Read until the answer to ``seq`` arrives; ``None`` when ``deadline`` (monotonic)
        passes first or the worker is gone."""
        with self._lock:
            try:
                while True:
                    header = self._read_until(b"\n", deadline)
                    got, pid, length = (int(part) for part in header.split())
                    if length > _MAX_BODY:
                        raise ValueError(f"an exposition of {length} bytes")
                    body = self._read_exactly(length, deadline)
                    if got == seq:
                        return parse_snapshot(pid, body.decode())
            except (OSError, ValueError) as exc:
                if not isinstance(exc, TimeoutError):
                    log.warning("a worker's metrics could not be read: %s", exc)
                return None

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._sock.settimeout(remaining)
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the worker closed its metrics channel")
        self._buffer += chunk

    def _read_until(self, separator: bytes, deadline: float) -> bytes:
        while (end := self._buffer.find(separator)) < 0:
            self._fill(deadline)
        line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        return line

    def _read_exactly(self, length: int, deadline: float) -> bytes:
        while len(self._buffer) < length:
            self._fill(deadline)
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body


def scrape_all(channels: list[WorkerChannel], timeout: float) -> dict[int, Snapshot]:
    """Ask every worker at once, then collect the answers that come within ``timeout``."""
    asked: dict[int, int] = {}
    for worker, channel in enumerate(channels):
        try:
            asked[worker] = channel.ask()
        except OSError:
            continue
    deadline = time.monotonic() + timeout
    answers: dict[int, Snapshot] = {}
    for worker, seq in asked.items():
        snapshot = channels[worker].answer(seq, deadline)
        if snapshot is not None:
            answers[worker] = snapshot
    return answers


class MetricsEndpoint:
    """``/metrics``, ``/healthz`` and ``/keys`` of a supervisor, on a socket it bound, from a
    thread. ``/keys`` lists the signing keys *every* worker's gateway holds, per issuer."""

    def __init__(
        self,
        sock: socket.socket,
        channels: list[WorkerChannel],
        *,
        healthy: Callable[[], bool],
        timeout: float = 3.0,
    ) -> None:
        """Serve the merge of ``channels`` on the listening ``sock``; ``healthy`` decides
        ``/healthz``; a worker that has not answered within ``timeout`` seconds keeps its last
        snapshot."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.merged = MergedMetrics(len(channels), lambda: scrape_all(channels, timeout))
        self.registry.register(self.merged)
        self._channels = channels
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/keys":
                    answers = scrape_all(channels, timeout)
                    if len(answers) < len(channels):
                        self._send(503, b"not every worker answered\n", "text/plain")
                    else:
                        self._send(200, keys_document(held_keys(answers.values())), "application/json")
                elif path == "/healthz":
                    ok = healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"unavailable\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes are not worth a line each

        sock.setblocking(True)
        self._server = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = sock
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the workers' channels."""
        self._server.shutdown()
        self._thread.join(timeout=5)
        for channel in self._channels:
            channel.close()

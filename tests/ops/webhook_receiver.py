"""A real webhook receiver on loopback, as an operator would write one: it checks the HMAC
signature over ``timestamp.body`` in constant time and refuses stale timestamps."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

#: How far a message's timestamp may be from the receiver's clock.
TOLERANCE = 300


class WebhookReceiver:
    """Listens on a free loopback port; answers ``fail_status`` to the first ``fail_first``
    well-signed attempts, then 200; 401 to a bad signature or timestamp."""

    def __init__(self, secret: bytes, *, fail_first: int = 0, fail_status: int = 503) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.attempts = 0
        self.received: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.judge(
                    body, self.headers.get("X-Bastion-Timestamp"), self.headers.get("X-Bastion-Signature")
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/bastion"

    def judge(self, body: bytes, timestamp: str | None, signature: str | None) -> int:
        with self.lock:
            if timestamp is None or signature is None or not timestamp.isdigit():
                self.rejected.append("unsigned")
                return 401
            expected = (
                "sha256="
                + hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            )
            if not hmac.compare_digest(expected, signature):
                self.rejected.append("bad signature")
                return 401
            if abs(time.time() - int(timestamp)) > TOLERANCE:
                self.rejected.append("stale")
                return 401
            self.attempts += 1
            if self.attempts <= self.fail_first:
                return self.fail_status
            self.received.append(json.loads(body))
            return 200

    def wait(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first ``count`` messages accepted, waiting up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(
            f"{len(self.received)} webhook message(s), not {count}; rejected: {self.rejected}"
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

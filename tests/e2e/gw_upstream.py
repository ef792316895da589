"""A recording upstream for the gateway end-to-end tests, run as its own process.

Usage: ``python -m tests.e2e.gw_upstream RECORD_FILE PORT_FILE``

Listens on a free loopback port (written to ``PORT_FILE`` once listening), appends one JSON
line per request to ``RECORD_FILE`` (request line exactly as received, header pairs in order),
and answers ``200`` with JSON echoing what it saw — or the status a ``status=NNN`` query
parameter asks for (an upstream failing on demand). It parses nothing beyond HTTP/1.1 framing, so
what it records is what the gateway sent, byte for byte (decoded as latin-1).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from typing import ClassVar
from urllib.parse import parse_qs
from urllib.parse import urlsplit


class RecordingHandler(BaseHTTPRequestHandler):
    """Record every request, answer with an echo of it."""

    protocol_version = "HTTP/1.1"
    server_version = "upstream/1"
    record_path: ClassVar[Path]
    lock: ClassVar[threading.Lock] = threading.Lock()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        entry: dict[str, Any] = {
            "request_line": self.requestline,
            "method": self.command,
            "target": self.path,
            "headers": [[name, value] for name, value in self.headers.raw_items()],
            "body_bytes": len(body),
        }
        line = json.dumps(entry) + "\n"
        with self.lock, self.record_path.open("a", encoding="utf-8") as out:
            out.write(line)
        payload = json.dumps(entry).encode()
        asked = parse_qs(urlsplit(self.path).query).get("status", ["200"])[0]
        self.send_response(int(asked) if asked.isdigit() and 200 <= int(asked) <= 599 else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Powered-By", "upstream-framework")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the JSON-lines record is the log."""


class RecordingServer(ThreadingHTTPServer):
    """Threaded server that treats a peer resetting a kept-alive connection as routine."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def main(argv: list[str]) -> None:
    """Serve until SIGTERM."""
    record, port_file = Path(argv[1]), Path(argv[2])
    RecordingHandler.record_path = record
    record.touch()
    server = RecordingServer(("127.0.0.1", 0), RecordingHandler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.rename(port_file)
    server.serve_forever(poll_interval=0.1)
    server.server_close()


if __name__ == "__main__":
    main(sys.argv)

"""Helpers for the gateway end-to-end tests: a recording upstream process, a ``bastion serve``
with the authorization server and ``[gateway]``, token fetching, and raw-socket requests.

Nothing here talks to the gateway through an HTTP client library: requests that must be refused
are written as raw bytes, since a client library would normalise the very paths under test.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.harness import Bastion
from tests.e2e.harness import free_port
from tests.e2e.harness import stop_process

AUDIENCE = "https://api.e2e"
REPO = Path(__file__).resolve().parents[2]


def ports_free(ports: Iterable[int]) -> bool:
    """Whether every one of ``ports`` can be bound on loopback now."""
    held = []
    try:
        for port in ports:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        for sock in held:
            sock.close()
    return True


class UpstreamProcess:
    """``tests/e2e/gw_upstream.py`` in a subprocess, with its JSON-lines record."""

    def __init__(self, tmp: Path) -> None:
        self.record = tmp / "upstream.jsonl"
        self._port_file = tmp / "upstream.port"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.gw_upstream", str(self.record), str(self._port_file)],
            cwd=REPO,
        )
        deadline = time.monotonic() + 15
        while not self._port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the upstream process did not start")
            time.sleep(0.02)
        self.port = int(self._port_file.read_text())

    def records(self) -> list[dict[str, Any]]:
        """Every request the upstream has received so far, oldest first."""
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def mark(self) -> int:
        """A position in the record; :meth:`since` returns what came after it."""
        return len(self.records())

    def since(self, mark: int) -> list[dict[str, Any]]:
        return self.records()[mark:]

    def stop(self) -> None:
        stop_process(self.process)


#: The routes of the test gateway: a scope-protected API, a stricter admin area under it, and a
#: public route without token checks.
ROUTES = """
[[gateway.routes]]
prefix = "/api"
upstream = "app"
scopes = { GET = ["orders:read"], "*" = ["orders:write"] }

[[gateway.routes]]
prefix = "/api/admin"
upstream = "app"
scopes = { "*" = ["admin"] }

[[gateway.routes]]
prefix = "/public"
upstream = "app"
auth = "none"
"""


def gateway_toml(
    issuer: str,
    gateway_port: int,
    admin_port: int,
    upstream_port: int,
    routes: str,
    issuer_options: str = "",
    bans: str = "",
) -> str:
    """The ``[gateway]`` section: the authorization server itself is the only issuer, its JWKS
    found through its RFC 8414 metadata."""
    return f"""
[gateway]
listen = "127.0.0.1:{gateway_port}"
admin_listen = "127.0.0.1:{admin_port}"
access_log = "gateway-access.log"
realm = "e2e"
drain_seconds = 1

[[gateway.issuers]]
issuer = "{issuer}"
audience = "{AUDIENCE}"
{issuer_options}

[gateway.upstreams.app]
targets = ["127.0.0.1:{upstream_port}"]
{routes}
{bans}
"""


@dataclass(frozen=True)
class Client:
    """A registered machine client."""

    client_id: str
    client_secret: str


class GatewayStack:
    """A recording upstream plus one ``bastion serve`` running both the authorization server and
    the gateway, with a reader, a writer and an admin client registered."""

    def __init__(
        self,
        tmp: Path,
        *,
        serve_args: tuple[str, ...] = (),
        routes: str = ROUTES,
        env: dict[str, str] | None = None,
        issuer_options: str = "",
        admin_port: int | None = None,
        bans: str = "",
    ) -> None:
        """Start everything; ``issuer_options`` are extra TOML lines for the gateway's issuer,
        ``bans`` the ``[gateway.bans]`` tables (the defaults when empty)."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.upstream = UpstreamProcess(tmp)
        self.gateway_port = free_port()
        self.admin_port = admin_port or free_port()
        self.routes = routes
        try:
            self.bastion = Bastion(tmp, "jwks_max_age = 2\n", env=env)
            # The issuer is the authorization server itself, whose port the harness just chose.
            self.bastion.config.write_text(
                self.bastion.config.read_text()
                + gateway_toml(
                    self.bastion.issuer,
                    self.gateway_port,
                    self.admin_port,
                    self.upstream.port,
                    routes,
                    issuer_options,
                    bans,
                )
            )
            self.reader = self._client("reader", "orders:read")
            self.writer = self._client("writer", "orders:read orders:write")
            self.admin = self._client("admin", "orders:read admin")
            self.bastion.start(*serve_args)
            self.wait_gateway()
        except BaseException:
            self.stop()
            raise

    def _client(self, name: str, scopes: str) -> Client:
        created = self.bastion.cli_json(
            "clients", "create", "--name", name, "--scope", scopes, "--audience", AUDIENCE
        )
        return Client(created["client_id"], created["client_secret"])

    @property
    def issuer(self) -> str:
        return self.bastion.issuer

    def wait_gateway(self, timeout: float = 20.0) -> None:
        """Wait until the gateway answers on its public port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, _, _ = raw_request(
                    self.gateway_port, b"GET /public/ready HTTP/1.1\r\nHost: e2e\r\n\r\n"
                )
            except OSError:
                time.sleep(0.05)
                continue
            if status == 200:
                return
            time.sleep(0.05)
        raise AssertionError("the gateway did not answer in time")

    def token(self, client: Client, scope: str | None = None) -> str:
        """A fresh access token from the authorization server (client_credentials)."""
        return fetch_token(self.bastion.port, client, scope)

    def rewrite_routes(self, routes: str) -> None:
        """Replace the routes in the config file (the rest of the file stays as it was)."""
        text = self.bastion.config.read_text()
        if self.routes not in text:
            raise AssertionError("the config file no longer holds the current routes")
        self.bastion.config.write_text(text.replace(self.routes, routes))
        self.routes = routes

    def terminate(self) -> None:
        """Ask every process to stop (SIGTERM) without waiting; :meth:`wait` collects them."""
        process = getattr(getattr(self, "bastion", None), "process", None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
        if self.upstream.process.poll() is None:
            self.upstream.process.terminate()

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for the processes asked to stop; kill what outlives ``timeout``."""
        bastion = getattr(self, "bastion", None)
        if bastion is not None:
            bastion.stop()  # already signalled: waits, kills if it must, closes the log
        self.upstream.stop()

    def stop(self) -> None:
        self.terminate()
        self.wait()

    def serve_log(self) -> str:
        return (self.bastion.tmp / "serve.log").read_text(errors="replace")


def fetch_token(port: int, client: Client, scope: str | None = None) -> str:
    """A client_credentials token from the authorization server on ``port``."""
    form = "grant_type=client_credentials" + (f"&scope={scope.replace(' ', '+')}" if scope else "")
    basic = base64.b64encode(f"{client.client_id}:{client.client_secret}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/token",
            body=form,
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise AssertionError(f"token request failed: {response.status} {body!r}")
    return str(json.loads(body)["access_token"])


def kid_of(token: str) -> str:
    """The ``kid`` of a compact JWS (header only; the gateway does the verifying)."""
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a fresh connection; return status, headers (lower-case names) and
    body of the first response. The connection is half-closed after sending, so a server that
    keeps it open still answers and the read ends at the response's framing or at close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if _complete(b"".join(chunks)):
                break
    return parse_response(b"".join(chunks))


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length framed or to close)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response: {data[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


def get(
    port: int, target: str, token: str | None = None, extra: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """A plain GET over a raw socket, with an optional bearer token and extra header lines."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {target} HTTP/1.1\r\nHost: e2e\r\n{auth}{extra}Connection: close\r\n\r\n"
    return raw_request(port, request.encode("latin-1"))


# -- which process holds a socket (Linux /proc), to tell the workers of `serve --workers N` apart --


def child_pids(pid: int) -> set[int]:
    """Direct children of ``pid``."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.add(int(entry))
    return children


def _tcp_sockets() -> list[tuple[int, int, int, int]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket."""
    rows = []
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            rows.append(
                (int(local.split(":")[1], 16), int(remote.split(":")[1], 16), int(state, 16), int(inode))
            )
    return rows


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


TCP_ESTABLISHED = 0x01
TCP_LISTEN = 0x0A


def owner_of_connection(local_port: int, remote_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the established socket ``local_port`` ↔ ``remote_port``."""
    inodes = {
        inode
        for local, remote, state, inode in _tcp_sockets()
        if local == local_port and remote == remote_port and state == TCP_ESTABLISHED
    }
    for pid in pids:
        if _socket_inodes(pid) & inodes:
            return pid
    return None


def listening_pids(port: int, pids: set[int]) -> set[int]:
    """Which of ``pids`` hold a listening socket on ``port``."""
    inodes = {inode for local, _, state, inode in _tcp_sockets() if local == port and state == TCP_LISTEN}
    return {pid for pid in pids if _socket_inodes(pid) & inodes}


class KeepAliveClient:
    """One client connection kept open, so the gateway worker serving it can be identified."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.local_port = int(self.sock.getsockname()[1])
        self._buffer = b""

    def get(self, target: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: e2e\r\n{auth}\r\n".encode("latin-1"))
        return self.read_response()

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        """The next Content-Length framed response on this connection."""
        data = self._buffer
        while not _complete(data):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed mid-response: {data[:200]!r}")
            data += chunk
        status, headers, body = parse_response(data)
        head_len = data.index(b"\r\n\r\n") + 4
        self._buffer = data[head_len + int(headers.get("content-length", "0")) :]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def revoke(port: int, client: Client, token: str) -> None:
    """Revoke ``token`` at the authorization server on ``port`` (RFC 7009, client_secret_basic)."""
    basic = base64.b64encode(f"{client.client_id}:{client.client_secret}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/revoke",
            body=f"token={token}&token_type_hint=access_token",
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise AssertionError(f"revocation failed: {response.status} {body!r}")

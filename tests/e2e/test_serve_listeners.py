"""Only a server's own workers share its listening sockets.

A second ``bastion serve`` on a port the first one listens on (the authorization server's, the
gateway's, or the gateway's admin listener) stops at once with one line naming the address,
and the first server keeps answering every request and keeps its pid file.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import BASTION
from tests.e2e.harness import Bastion
from tests.e2e.harness import free_port

pytestmark = pytest.mark.slow


def gateway_section(listen: int, admin: int) -> str:
    return f"""
[gateway]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
access_log = ""
[gateway.upstreams.app]
targets = ["127.0.0.1:9"]
[[gateway.routes]]
prefix = "/api"
upstream = "app"
auth = "none"
"""


class Running:
    """The first server: authorization server, gateway and admin listener, and a client."""

    def __init__(self, bastion: Bastion, gateway_port: int, admin_port: int) -> None:
        self.bastion = bastion
        self.gateway_port = gateway_port
        self.admin_port = admin_port
        created = bastion.cli_json("clients", "create", "--name", "first", "--scope", "read")
        self.client_id = created["client_id"]
        self.client_secret = created["client_secret"]

    @property
    def pid_file(self) -> Path:
        return self.bastion.tmp / "data" / "bastion.pid"

    def token_status(self) -> int:
        request = urllib.request.Request(
            f"{self.bastion.issuer}/token",
            data=f"grant_type=client_credentials&client_id={self.client_id}&client_secret={self.client_secret}".encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def status(self, url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def assert_still_serving(self) -> None:
        assert self.bastion.process is not None
        assert self.bastion.process.poll() is None, self.bastion.log_text()
        assert [self.token_status() for _ in range(20)] == [200] * 20
        assert self.status(f"http://127.0.0.1:{self.admin_port}/healthz") == 200
        # No route for /nowhere: the gateway itself answers 404.
        assert self.status(f"http://127.0.0.1:{self.gateway_port}/nowhere") == 404
        assert self.pid_file.read_text().strip() == str(self.bastion.process.pid)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("first")
    gateway_port, admin_port = free_port(), free_port()
    bastion = Bastion(tmp, gateway_config=gateway_section(gateway_port, admin_port))
    bastion.start()
    try:
        running = Running(bastion, gateway_port, admin_port)
        running.assert_still_serving()
        yield running
    finally:
        bastion.stop()


def second_serve(tmp: Path, first: Running, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "bastion.toml"
    path.write_text(config)
    try:
        return subprocess.run(
            [*BASTION, "--config", str(path), "serve"],
            env=first.bastion.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the second server did not stop: {exc.stderr!r}") from None


def assert_one_line_error(result: subprocess.CompletedProcess[str], address: str, setting: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot listen on {address}: address already in use ({setting}")


def test_second_server_on_the_authorization_server_port_stops(tmp_path: Path, first: Running) -> None:
    config = f"""
data_dir = "{tmp_path / "data"}"
[authorization_server]
listen = "127.0.0.1:{first.bastion.port}"
issuer = "{first.bastion.issuer}"
"""
    result = second_serve(tmp_path, first, config)
    assert_one_line_error(result, f"127.0.0.1:{first.bastion.port}", "authorization_server.listen")
    first.assert_still_serving()


def test_second_server_on_the_gateway_port_stops(tmp_path: Path, first: Running) -> None:
    config = f"""
data_dir = "{tmp_path / "data"}"
[authorization_server]
enabled = false
{gateway_section(first.gateway_port, free_port())}
"""
    result = second_serve(tmp_path, first, config)
    assert_one_line_error(result, f"127.0.0.1:{first.gateway_port}", "gateway.listen")
    first.assert_still_serving()


def test_second_server_on_the_admin_port_stops(tmp_path: Path, first: Running) -> None:
    config = f"""
data_dir = "{tmp_path / "data"}"
[authorization_server]
enabled = false
{gateway_section(free_port(), first.admin_port)}
"""
    result = second_serve(tmp_path, first, config)
    assert_one_line_error(result, f"127.0.0.1:{first.admin_port}", "gateway.admin_listen")
    first.assert_still_serving()


def test_the_same_deployment_started_twice_keeps_the_first_ones_pid_file(first: Running) -> None:
    # Same config, same data dir: the duplicate stops before writing anything.
    (first.bastion.tmp / "again").mkdir(exist_ok=True)
    result = second_serve(first.bastion.tmp / "again", first, first.bastion.config.read_text())
    assert_one_line_error(result, f"127.0.0.1:{first.bastion.port}", "authorization_server.listen")
    first.assert_still_serving()

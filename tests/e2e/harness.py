"""Run ``bastion`` as real subprocesses for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import requests

BASTION = [sys.executable, "-m", "bastion.cli"]


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``process`` if it still runs, SIGKILL it if it has not stopped within ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client_token(issuer: str, client_id: str, secret: str, scope: str) -> str:
    """An access token for a machine client (client credentials, RFC 6749 §4.4)."""
    response = requests.post(
        f"{issuer}/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bastion:
    """A data dir, a config file, and a ``bastion serve`` process on free ports."""

    def __init__(
        self, tmp: Path, extra_config: str = "", env: dict[str, str] | None = None, gateway_config: str = ""
    ) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.config = tmp / "bastion.toml"
        self.config.write_text(
            f"""
data_dir = "{tmp / "data"}"
[authorization_server]
listen = "127.0.0.1:{self.port}"
issuer = "{self.issuer}"
{extra_config}
{gateway_config}
"""
        )
        self.env = {
            **os.environ,
            "BASTION_KEK": "e2e-" + "k" * 40,
            # Its own free port (tests/conftest.py turns the admin API off for everything else).
            "BASTION_AUTHORIZATION_SERVER__ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            **(env or {}),
        }
        self.env.pop("BASTION_CONFIG", None)
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [*BASTION, "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"bastion {' '.join(args)} failed: {result.stderr.decode()}")
        return result.stdout.decode()

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def start_process(self, *args: str) -> None:
        """Start ``bastion serve`` without waiting for it to be healthy."""
        self.log = (self.tmp / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [*BASTION, "--config", str(self.config), "serve", *args],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return (self.tmp / "serve.log").read_text(errors="replace")

    def start(self, *args: str) -> None:
        self.start_process(*args)
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"bastion serve exited: {(self.tmp / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.issuer}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("bastion serve did not become healthy in 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.log.close()

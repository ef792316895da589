"""``bastion demo`` as users run it: a real process on loopback ports, stopped with Ctrl-C.

The test plays the user: it reads what the terminal printed, the logins and secrets the demo
keeps in its data directory, and signs in to the shop through the BFF with the authorization
server's real forms.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from bastion.cli.demo import SERVICES
from bastion.cli.demo import Demo
from bastion.cli.demo import DemoPorts
from tests.bff.harness import sign_in_at_server
from tests.e2e.gw_stack import ports_free
from tests.e2e.harness import client_token


def ports_of(ports: DemoPorts) -> list[int]:
    """Every port a demo on ``ports`` listens on."""
    return [
        ports.server,
        ports.admin,
        ports.gateway,
        ports.shop,
        ports.metrics,
        *(ports.service(n) for n in SERVICES),
    ]


def free_base() -> int:
    """A base port whose every derived port is free (below the ephemeral range, where only an
    explicit bind can take one)."""
    for _ in range(200):
        ports = DemoPorts(random.randrange(20_000, 30_000))
        if ports_free(ports_of(ports)):
            return ports.base
    raise AssertionError("no free set of demo ports")


@dataclass(frozen=True)
class DemoRun(Demo):
    """A running ``bastion demo``: its wiring (:class:`Demo`), its process and what it printed."""

    process: subprocess.Popen[bytes]
    output: Path

    def printed(self) -> str:
        return self.output.read_text()

    def password(self, username: str) -> str:
        return self.logins()[username]

    def machine_token(self, client_id: str, scope: str) -> str:
        """An access token for a machine client (client credentials)."""
        return client_token(self.issuer, client_id, self.secret(client_id), scope)


def start_demo(data_dir: Path, base: int, output: Path) -> subprocess.Popen[bytes]:
    """``bastion demo`` in its own process group (as a terminal runs it)."""
    with output.open("ab") as sink:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bastion.cli",
                "demo",
                "--data-dir",
                str(data_dir),
                "--base-port",
                str(base),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def wait_ready(run: DemoRun, timeout: float = 60.0) -> None:
    """Until the shop page, the public catalog (BFF → gateway → catalog service) and every
    service answer."""
    deadline = time.monotonic() + timeout
    while True:
        if run.process.poll() is not None:
            raise AssertionError(f"bastion demo exited with {run.process.returncode}:\n{run.printed()}")
        with contextlib.suppress(requests.RequestException):
            page = requests.get(run.shop + "/", timeout=2)
            catalog = requests.get(run.shop + "/bff/api/catalog/products", timeout=2)
            services = [
                requests.get(f"http://127.0.0.1:{run.ports.service(name)}/", timeout=2) for name in SERVICES
            ]
            if (
                page.status_code == 200
                and catalog.status_code == 200
                and all(r.status_code for r in services)
            ):
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"bastion demo did not become ready:\n{run.printed()}")
        time.sleep(0.2)


def stop(run: DemoRun, sig: int = signal.SIGINT) -> int:
    """Ctrl-C to the whole process group, as a terminal sends it; the exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.process.pid, sig)
    try:
        return run.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait(10)
        raise AssertionError(
            f"bastion demo did not stop on {signal.Signals(sig).name}:\n{run.printed()}"
        ) from None


@contextlib.contextmanager
def running_demo(data_dir: Path, base: int | None = None) -> Iterator[DemoRun]:
    """``bastion demo`` until the block ends (then Ctrl-C, and every port is free again)."""
    ports = DemoPorts(base if base is not None else free_base())
    output = data_dir.parent / f"{data_dir.name}-output.txt"
    run = DemoRun(data_dir, ports, start_demo(data_dir, ports.base, output), output)
    try:
        wait_ready(run)
        yield run
    finally:
        stop(run)


class Shopper:
    """A browser signed in to the shop: the BFF's cookie in a requests session, nothing else."""

    def __init__(self, run: DemoRun, username: str) -> None:
        self.run = run
        self.http = requests.Session()
        login = self.http.get(run.shop + "/bff/login?return_to=/", allow_redirects=False, timeout=10)
        assert login.status_code == 303, login.text
        callback = sign_in_at_server(
            login.headers["location"],
            username,
            password=run.password(username),
            redirect_uri=run.shop + "/bff/callback",
        )
        parts = urlsplit(callback)
        done = self.http.get(f"{run.shop}/bff/callback?{parts.query}", allow_redirects=False, timeout=10)
        assert done.status_code == 303, done.text
        me = self.http.get(run.shop + "/bff/me", timeout=10)
        assert me.status_code == 200, me.text
        self.me = me.json()
        self.headers = {"x-csrf-token": self.me["csrf_token"], "origin": run.shop}

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.run.shop + "/bff/api" + path, timeout=15)

    def send(self, method: str, path: str, body: object) -> requests.Response:
        return self.http.request(
            method, self.run.shop + "/bff/api" + path, json=body, headers=self.headers, timeout=15
        )

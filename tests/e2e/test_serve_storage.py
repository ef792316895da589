"""Storage that is unreachable, wrong or gone is one line at start and a 503 while serving.

Real ``bastion serve`` processes: bad database URLs and state URLs stop the server with one
line naming the setting; a private Redis killed under a running server turns readiness and the
endpoints that need it into 503s (never 500s); a data dir whose signing keys are sealed under
a key-encryption key that is not given stops the server without writing a new one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import service_url
from tests.e2e.harness import BASTION
from tests.e2e.harness import Bastion
from tests.e2e.harness import free_port

pytestmark = pytest.mark.slow


def serve_fails(tmp: Path, config: str, env: dict[str, str | None] | None = None) -> str:
    """Run ``bastion serve`` expecting it to stop at once; return its one line of stderr."""
    path = tmp / "bastion.toml"
    path.write_text(config)
    environment = {**os.environ, "BASTION_KEK": "e2e-" + "k" * 40}
    environment.pop("BASTION_CONFIG", None)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    result = subprocess.run(
        [*BASTION, "--config", str(path), "serve"],
        env=environment,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def config_with(tmp: Path, storage: str) -> str:
    port = free_port()
    return f"""
data_dir = "{tmp / "data"}"
[storage]
{storage}
[authorization_server]
listen = "127.0.0.1:{port}"
issuer = "http://127.0.0.1:{port}"
"""


def test_refused_database_url_is_one_line(tmp_path: Path) -> None:
    line = serve_fails(
        tmp_path, config_with(tmp_path, f'database_url = "postgresql://postgres@127.0.0.1:{free_port()}/db"')
    )
    assert line.startswith(
        "error: storage.database_url: cannot use the database postgresql://postgres@127.0.0.1:"
    )
    assert line.endswith(": connection refused")


def test_wrong_database_role_is_one_line(tmp_path: Path) -> None:
    url = urllib.parse.urlsplit(service_url("postgres"))
    wrong = f"postgresql://no_such_role_bastion:secret@{url.hostname}:{url.port or 5432}{url.path}"
    line = serve_fails(tmp_path, config_with(tmp_path, f'database_url = "{wrong}"'))
    assert line.startswith(
        "error: storage.database_url: cannot use the database postgresql://no_such_role_bastion:***@"
    )
    assert 'role "no_such_role_bastion" does not exist' in line
    assert "secret" not in line


def test_unparsable_database_url_is_one_line(tmp_path: Path) -> None:
    line = serve_fails(tmp_path, config_with(tmp_path, 'database_url = "postgresql://u@127.0.0.1:port/db"'))
    assert line.startswith("error: storage.database_url: not a valid database URL")


def test_relative_sqlite_path_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    line = serve_fails(tmp_path, config_with(tmp_path, 'database_url = "sqlite:///var/bastion.db"'))
    assert line.startswith("error: invalid configuration: ")
    assert "storage.database_url: 'sqlite:///var/bastion.db' is a relative SQLite path" in line
    assert not (tmp_path / "var").exists()
    assert not (tmp_path / "data").exists()


def test_state_url_with_nothing_listening_is_one_line(tmp_path: Path) -> None:
    line = serve_fails(tmp_path, config_with(tmp_path, f'state_url = "redis://127.0.0.1:{free_port()}/0"'))
    assert line.startswith("error: storage.state_url: cannot use the fast-state store: ")
    assert "Connect call failed" in line or "onnection refused" in line


# -- the key-encryption key ---------------------------------------------------------------------


def test_missing_kek_with_sealed_signing_keys_stops_and_writes_nothing(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path)
    bastion.cli("keys", "list")  # creates the signing keys, sealed under BASTION_KEK
    data = tmp_path / "data"
    before = sorted(p.name for p in data.iterdir())
    line = serve_fails(
        tmp_path, bastion.config.read_text(), env={"BASTION_KEK": None, "BASTION_KEK_FILE": None}
    )
    assert line.startswith("error: no key-encryption key, and the database holds ")
    assert "BASTION_KEK" in line
    assert "BASTION_KEK_FILE" in line
    assert not (data / "kek").exists()
    assert sorted(p.name for p in data.iterdir()) == before


def test_missing_kek_on_a_fresh_data_dir_generates_one(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path, env={})
    bastion.env.pop("BASTION_KEK")
    bastion.cli("clients", "list")
    assert (tmp_path / "data" / "kek").stat().st_mode & 0o777 == 0o600


# -- Redis going away under a running server ----------------------------------------------------


class RedisServer:
    """A private ``redis-server`` this test may kill."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def call(
    url: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode(data).encode() if data is not None else None, headers=headers or {}
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def test_redis_going_away_gives_503s_not_500s(tmp_path: Path, redis_server: RedisServer) -> None:
    bastion = Bastion(
        tmp_path, extra_config=f'[storage]\nstate_url = "redis://127.0.0.1:{redis_server.port}/0"\n'
    )
    # [storage] must precede [authorization_server]'s keys: rewrite the file in that order.
    bastion.config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[storage]\nstate_url = "redis://127.0.0.1:{redis_server.port}/0"\n'
        f'[authorization_server]\nlisten = "127.0.0.1:{bastion.port}"\nissuer = "{bastion.issuer}"\n'
    )
    machine = bastion.cli_json("clients", "create", "--name", "m", "--scope", "read")
    app = bastion.cli_json(
        "clients",
        "create",
        "--name",
        "app",
        "--public",
        "--grant-type",
        "authorization_code",
        "--scope",
        "openid",
        "--redirect-uri",
        "http://127.0.0.1:9/cb",
    )
    bastion.start()
    try:
        status, _, body = call(f"{bastion.issuer}/readyz")
        assert (status, json.loads(body)["checks"]) == (200, {"database": "ok", "state": "ok"})
        credentials = {"client_id": machine["client_id"], "client_secret": machine["client_secret"]}
        status, _, body = call(f"{bastion.issuer}/token", {"grant_type": "client_credentials", **credentials})
        assert status == 200
        token = json.loads(body)["access_token"]

        redis_server.kill()

        status, headers, body = call(f"{bastion.issuer}/healthz")
        assert status == 200  # liveness stays cheap: the process runs
        status, headers, body = call(f"{bastion.issuer}/readyz")
        assert status == 503
        assert json.loads(body) == {"status": "unavailable", "checks": {"database": "ok", "state": "down"}}
        assert headers["retry-after"] == "5"

        # The machine endpoints: RFC 6749 error JSON, no-store, Retry-After.
        status, headers, body = call(f"{bastion.issuer}/revoke", {"token": token, **credentials})
        assert status == 503
        assert json.loads(body)["error"] == "temporarily_unavailable"
        assert headers["cache-control"] == "no-store"
        assert headers["retry-after"] == "5"

        # A browser page: a 503 page, not a 500.
        verifier = "v" * 50
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": app["client_id"],
                "redirect_uri": "http://127.0.0.1:9/cb",
                "scope": "openid",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": "s",
            }
        )
        status, headers, body = call(f"{bastion.issuer}/authorize?{query}", headers={"accept": "text/html"})
        assert status == 503, body
        assert headers["content-type"].startswith("text/html")
        assert headers["retry-after"] == "5"
        assert b"temporarily_unavailable" in body
        assert bastion.process is not None
        assert bastion.process.poll() is None
        assert "Traceback" not in bastion.log_text()
    finally:
        bastion.stop()

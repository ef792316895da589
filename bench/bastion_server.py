"""Bastion's authorization server as a benchmark target, set up through its CLI only.

``bastion migrate``, then ``bastion clients create … --json`` for the bench client, then
``bastion serve --config FILE --workers N`` pinned with ``taskset``. Configuration comes from a
TOML file plus ``BASTION_CONFIG`` / ``BASTION_KEK`` in the environment, as an operator would do it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from procs import Service
from procs import free_port

BASTION = str(Path(sys.executable).parent / "bastion")
_KEK = secrets.token_urlsafe(36)


def unavailable() -> str | None:
    """Why ``bastion serve`` cannot be benchmarked in this tree, or ``None`` when it can."""
    if importlib.util.find_spec("bastion.cli.main") is None:
        return "the bastion CLI (bastion.cli.main) is not in this tree yet"
    for command in (["serve", "--help"], ["clients", "create", "--help"], ["migrate", "--help"]):
        proc = subprocess.run([BASTION, *command], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return f"`bastion {' '.join(command)}` failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
    return None


def config_text(data_dir: Path, port: int, alg: str) -> str:
    """The TOML of an authorization server on 127.0.0.1:``port`` signing access tokens with ``alg``."""
    return f"""\
data_dir = "{data_dir}"

[storage]
database_url = ""

[authorization_server]
listen = "127.0.0.1:{port}"
issuer = "http://127.0.0.1:{port}"
access_token_algorithm = "{alg}"
"""


@dataclass(frozen=True, slots=True)
class BastionServer:
    """A prepared data directory, its config and the bench client's credentials."""

    name: str
    config: Path
    port: int
    client_id: str
    client_secret: str
    log_dir: Path

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def env(config: Path) -> dict[str, str]:
        """The environment every ``bastion`` command of this server runs with."""
        return {**os.environ, "BASTION_CONFIG": str(config), "BASTION_KEK": _KEK}

    @classmethod
    def create(cls, name: str, work: Path, alg: str) -> BastionServer:
        """Write the config, migrate, and create the confidential client_credentials client.

        Raises:
            RuntimeError: a CLI command failed.
        """
        directory = work / name
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = directory / "bastion.toml"
        data_dir = directory / ".bastion"
        config.write_text(config_text(data_dir, port, alg))
        env = cls.env(config)
        _run([BASTION, "migrate"], env)
        out = _run(
            [
                BASTION,
                "clients",
                "create",
                "--name",
                "bench",
                "--grant-type",
                "client_credentials",
                "--scope",
                "read",
                "--json",
            ],
            env,
        )
        client = json.loads(out)
        return cls(name, config, port, client["client_id"], client["client_secret"], work / "logs")

    def service(self, *, workers: int, cores: str | None) -> Service:
        """``bastion serve`` with ``workers`` workers, pinned to ``cores`` (``None``: not pinned)."""
        return Service(
            self.name,
            [BASTION, "--config", str(self.config), "serve", "--workers", str(workers)],
            cores=cores,
            port=self.port,
            log_dir=self.log_dir,
            env=self.env(self.config),
            ready_path="/.well-known/oauth-authorization-server",
            timeout=60,
        )


def _run(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[1:])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}{proc.stdout[-1000:]}"
        )
    return proc.stdout

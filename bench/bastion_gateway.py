"""Bastion's gateway as a benchmark target: a config file and ``bastion serve`` pinned to a core."""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procs import Service
from procs import free_port
from procs import free_port_block
from token_pool import AUDIENCE
from token_pool import ISSUER
from token_pool import SCOPE

BASTION = str(Path(sys.executable).parent / "bastion")


_CACHE_METRIC = re.compile(r'^bastion_gateway_token_cache_total\{result="(hit|miss)"\} (\S+)$', re.MULTILINE)


class GatewayService(Service):
    """``bastion serve`` running a gateway, with its admin listener."""

    def __init__(self, *args: Any, admin_port: int, workers: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admin_port = admin_port
        self.workers = workers

    def _expositions(self) -> list[str]:
        """The ``/metrics`` texts that together cover every worker: the server's one listener
        (it merges its workers), or, on trees from before that merge, one listener per worker
        (port plus worker number).

        Raises:
            OSError: the admin listener did not answer.
        """
        texts = []
        for worker in range(self.workers):
            url = f"http://127.0.0.1:{self.admin_port + worker}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    texts.append(response.read().decode())
            except urllib.error.URLError:
                if worker == 0:
                    raise
                break  # one listener for the whole server
        return texts

    def metric_sum(self, name: str) -> float:
        """The sum of every sample of metric ``name`` (all label sets) over the server's
        ``/metrics``; ``0`` when it is not exported.

        Raises:
            OSError: the admin listener did not answer.
        """
        pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
        return sum(float(value) for text in self._expositions() for value in pattern.findall(text))

    def cache_counts(self) -> tuple[int, int]:
        """Verified-token cache (hits, misses) over the server's ``/metrics``.

        Raises:
            OSError: the admin listener did not answer.
        """
        hits = misses = 0
        for text in self._expositions():
            for result, value in _CACHE_METRIC.findall(text):
                if result == "hit":
                    hits += int(float(value))
                else:
                    misses += int(float(value))
        return hits, misses


class Unsupported(RuntimeError):
    """The gateway in this tree cannot run this variant yet (the message says what is missing)."""


def unavailable() -> str | None:
    """Why Bastion's gateway cannot be benchmarked in this tree, or ``None`` when it can."""
    if importlib.util.find_spec("bastion.gateway.app") is None:
        return "bastion.gateway.app (create_gateway) is not in this tree yet"
    if importlib.util.find_spec("bastion.cli.main") is None:
        return "the bastion CLI (bastion.cli.main) is not in this tree yet"
    proc = subprocess.run([BASTION, "serve", "--help"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"`bastion serve --help` failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
    return None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def gateway_config(
    *,
    data_dir: Path,
    port: int,
    admin_port: int,
    alg: str,
    jwks_uri: str,
    upstream_port: int,
    cache: bool,
    tls: Any = None,
    state_url: str | None = None,
    rate_limit: Sequence[dict[str, Any]] | None = None,
) -> str:
    """The TOML of a gateway with one issuer (``alg`` only), one upstream and one route ``/``.

    The route requires the ``read`` scope for GET, so Bastion checks at least what HAProxy does
    (alg, typ, signature, iss, aud, exp) plus ``nbf`` and scopes. ``state_url`` sets
    ``storage.state_url`` (where rate-limit buckets live; default: the SQLite state file);
    ``rate_limit`` the route's limits (``None``: the gateway's default, none).
    """
    gateway: dict[str, Any] = {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin_port}"}
    if tls is not None:
        gateway["tls_cert"] = str(tls.cert)
        gateway["tls_key"] = str(tls.key)
    issuer: dict[str, Any] = {
        "issuer": ISSUER,
        "jwks_uri": jwks_uri,
        "algorithms": [alg],
        "audience": AUDIENCE,
    }
    if not cache:
        issuer["token_cache_size"] = 0
    lines = [
        f"data_dir = {_toml_value(str(data_dir))}",
        "",
        "[authorization_server]",
        "enabled = false",
        "",
        *(["[storage]", f"state_url = {_toml_value(state_url)}", ""] if state_url is not None else []),
        "[gateway]",
        *(f"{k} = {_toml_value(v)}" for k, v in gateway.items()),
        "",
        "[[gateway.issuers]]",
        *(f"{k} = {_toml_value(v)}" for k, v in issuer.items()),
        "",
        "[gateway.upstreams.origin]",
        f"targets = {_toml_value([f'127.0.0.1:{upstream_port}'])}",
        "",
        "[gateway.upstreams.origin.pool]",
        "max_connections = 256",
        "max_idle = 128",
        "",
        "[[gateway.routes]]",
        'prefix = "/"',
        'upstream = "origin"',
        f"scopes = {_toml_value({'GET': [SCOPE]})}",
        *([f"rate_limit = {_toml_value({'limits': list(rate_limit)})}"] if rate_limit is not None else []),
        "",
    ]
    return "\n".join(lines)


def service(
    name: str,
    *,
    work: Path,
    alg: str,
    jwks_uri: str,
    upstream_port: int,
    cache: bool,
    tls: Any,
    workers: int,
    cores: str,
    state_url: str | None = None,
    rate_limit: Sequence[dict[str, Any]] | None = None,
) -> GatewayService:
    """A :class:`GatewayService` running ``bastion serve --config <file> --workers N`` for the gateway.

    Raises:
        Unsupported: the variant needs an option this tree does not have.
    """
    directory = work / name
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    admin_port = free_port_block(workers)  # older trees: worker n serves its metrics on admin_port + n
    config = directory / "bastion.toml"
    config.write_text(
        gateway_config(
            data_dir=directory / ".bastion",
            port=port,
            admin_port=admin_port,
            alg=alg,
            jwks_uri=jwks_uri,
            upstream_port=upstream_port,
            cache=cache,
            tls=tls,
            state_url=state_url,
            rate_limit=rate_limit,
        )
    )
    check = subprocess.run(
        [BASTION, "--config", str(config), "config", "check"],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
    )
    if check.returncode != 0:
        raise Unsupported(f"config check failed: {(check.stderr or check.stdout).strip()[-500:]}")
    return GatewayService(
        name,
        [BASTION, "--config", str(config), "serve", "--workers", str(workers)],
        cores=cores,
        port=port,
        log_dir=work / "logs",
        env=_env(),
        timeout=60,
        admin_port=admin_port,
        workers=workers,
    )


_KEK = secrets.token_urlsafe(36)


def _env() -> dict[str, str]:
    # No access log, like the peers (nginx ``access_log off``, HAProxy without ``log``). TOML has
    # no null, so the override comes from the environment, where values are read as JSON.
    return {**os.environ, "BASTION_KEK": _KEK, "BASTION_GATEWAY__ACCESS_LOG": "null"}

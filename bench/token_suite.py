"""The token-endpoint suite: client_credentials grants/s, oidc-provider 9 vs ``bastion serve``.

Both servers issue RFC 9068 JWT access tokens to one confidential client (client_secret_basic),
signed ES256 in one row and RS256 in the other; each runs alone on core 0, wrk (``-t1 -c64``,
``lua/post_form.lua``) on core 1. A last row measures introspections/s against Bastion with
``--workers 2``, where wrk and the workers share both cores.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bastion_server
from install import ensure_oidc_provider
from procs import CLIENT_CORE
from procs import SERVER_CORE
from procs import Service
from procs import free_port
from report import Goal
from report import Table
from rounds import Target
from rounds import expect_status

from bastion.protocol.jose import parse_compact

ALGS = ("ES256", "RS256")
GRANT_BODY = "grant_type=client_credentials&scope=read"

GOALS = (
    Goal(
        "token endpoint ES256 >= 2.5x oidc-provider",
        "token",
        "bastion-es256",
        "ratio",
        2.5,
        "oidc-provider-es256",
    ),
    Goal(
        "token endpoint RS256 >= 1.5x oidc-provider",
        "token",
        "bastion-rs256",
        "ratio",
        1.5,
        "oidc-provider-rs256",
    ),
    Goal("introspection >= 8,000/s with --workers 2", "token", "bastion-introspect", "rps", 8000.0),
)


@dataclass(frozen=True, slots=True)
class TokenOptions:
    """What the command line chose for this suite."""

    bastion: bool = True
    introspection_workers: int = 2


def basic_credentials(client_id: str, secret: str) -> str:
    """The base64 part of ``Authorization: Basic``, form-encoding both parts (RFC 6749 §2.3.1)."""
    raw = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
    return base64.b64encode(raw.encode()).decode()


def preflight_grant(url: str, credentials: str, alg: str) -> str:
    """One client_credentials grant must succeed with an ``alg`` ``at+jwt``; a wrong secret must not.

    Returns:
        The access token.

    Raises:
        RuntimeError: the server answered otherwise.
    """
    headers = {"Authorization": f"Basic {credentials}", "Content-Type": "application/x-www-form-urlencoded"}
    body = json.loads(expect_status(url, 200, headers, GRANT_BODY.encode()))
    token = body.get("access_token")
    if not isinstance(token, str):
        raise RuntimeError(f"{url}: no access_token in {body}")
    header = parse_compact(token).header
    if header.get("alg") != alg or header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
        raise RuntimeError(f"{url}: expected an {alg} at+jwt, got header {header}")
    wrong = {**headers, "Authorization": "Basic " + base64.b64encode(b"bench:wrong").decode()}
    expect_status(url, 401, wrong, GRANT_BODY.encode())
    return token


def _oidc_provider(alg: str, work: Path, client_id: str, secret: str) -> Service:
    directory = ensure_oidc_provider()
    port = free_port()
    return Service(
        f"oidc-provider-{alg.lower()}",
        ["node", "server.mjs"],
        cores=SERVER_CORE,
        port=port,
        log_dir=work / "logs",
        cwd=directory,
        env={
            "NODE_ENV": "production",
            "PORT": str(port),
            "ALG": alg,
            "CLIENT_ID": client_id,
            "CLIENT_SECRET": secret,
        },
        ready_path="/.well-known/openid-configuration",
    )


def prepare(
    work: Path, options: TokenOptions, stack: contextlib.ExitStack, log: Callable[[str], None]
) -> tuple[Table, list[Target]]:
    """Start every service of the suite (inside ``stack``) and return the targets to measure."""
    work = work / "token"
    work.mkdir(parents=True, exist_ok=True)
    table = Table(
        "token",
        "Token endpoint: client_credentials grants/s (JWT access tokens), medians of interleaved rounds",
        notes=[
            f"Each server alone on core {SERVER_CORE} (one node process / one Bastion worker); "
            f"wrk -t1 -c64 on core {CLIENT_CORE}, POST with client_secret_basic.",
        ],
    )
    targets: list[Target] = []
    client_id = "bench"
    secret = secrets.token_urlsafe(32)
    credentials = basic_credentials(client_id, secret)
    for alg in ALGS:
        service = stack.enter_context(_oidc_provider(alg, work, client_id, secret))
        url = f"http://127.0.0.1:{service.port}/token"
        preflight_grant(url, credentials, alg)
        targets.append(
            Target(
                f"oidc-provider-{alg.lower()}",
                "oidc-provider 9",
                alg,
                url,
                "post_form.lua",
                (GRANT_BODY, credentials),
                service=service,
            )
        )
    if not options.bastion:
        return table, targets
    problem = bastion_server.unavailable()
    if problem is not None:
        table.notes.append(f"Bastion rows not measured: {problem}")
        log(f"token: Bastion rows skipped: {problem}")
        return table, targets
    for alg in ALGS:
        server = bastion_server.BastionServer.create(f"bastion-as-{alg.lower()}", work, alg)
        process = stack.enter_context(server.service(workers=1, cores=SERVER_CORE))
        creds = basic_credentials(server.client_id, server.client_secret)
        url = f"{server.base_url}/token"
        preflight_grant(url, creds, alg)
        targets.append(
            Target(
                f"bastion-{alg.lower()}",
                "bastion serve (1 worker)",
                alg,
                url,
                "post_form.lua",
                (GRANT_BODY, creds),
                baseline=f"oidc-provider-{alg.lower()}",
                service=process,
            )
        )
    workers = options.introspection_workers
    server = bastion_server.BastionServer.create("bastion-as-introspect", work, "ES256")
    introspector = stack.enter_context(server.service(workers=workers, cores=None))
    creds = basic_credentials(server.client_id, server.client_secret)
    token = preflight_grant(f"{server.base_url}/token", creds, "ES256")
    form = f"token={urllib.parse.quote(token, safe='')}"
    introspect_url = f"{server.base_url}/introspect"
    answer = json.loads(
        expect_status(
            introspect_url,
            200,
            {"Authorization": f"Basic {creds}", "Content-Type": "application/x-www-form-urlencoded"},
            form.encode(),
        )
    )
    if answer.get("active") is not True:
        raise RuntimeError(f"introspection of a fresh token is not active: {answer}")
    targets.append(
        Target(
            "bastion-introspect",
            f"bastion serve /introspect ({workers} workers)",
            "ES256",
            introspect_url,
            "post_form.lua",
            (form, creds),
            wrk_cores=None,
            service=introspector,
            server_core=None,
        )
    )
    table.notes.append(
        f"Introspection row: {workers} Bastion workers and wrk -t1 -c64 share both cores (not pinned)."
    )
    return table, targets

"""The gateway suite: upstream direct, nginx as a plain proxy, HAProxy ``jwt_verify``, Bastion.

Cores: the server under test alone on core 0; wrk (``-t1 -c64``) and the nginx upstream (which
also serves the JWKS for Bastion) on core 1. Tokens: 1,000 distinct RS256 and 1,000 distinct
ES256 JWTs, taken round-robin by ``lua/bearer_pool.lua``. Before any measurement every verifying
target must pass a preflight: a valid token is forwarded (200) and every token of
:attr:`token_pool.TokenPool.rejects` is refused (401), so no row can be fast by checking less.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bastion_gateway
import peers
from procs import CLIENT_CORE
from procs import SERVER_CORE
from procs import free_port
from procs import worker_cores
from report import Goal
from report import Table
from rounds import Target
from rounds import expect_status
from tls import self_signed
from token_pool import TokenPool
from token_pool import make_pools

ALGS = ("RS256", "ES256")

GOALS = (
    Goal(
        "gateway cache hits >= 1.5x HAProxy RS256",
        "gateway",
        "bastion-cache-rs256",
        "ratio",
        1.5,
        "haproxy-rs256",
    ),
    Goal(
        "gateway cache off >= 0.7x HAProxy RS256",
        "gateway",
        "bastion-nocache-rs256",
        "ratio",
        0.7,
        "haproxy-rs256",
    ),
    Goal(
        "gateway cache off >= 0.85x HAProxy ES256",
        "gateway",
        "bastion-nocache-es256",
        "ratio",
        0.85,
        "haproxy-es256",
    ),
    Goal(
        "gateway p99 no worse than HAProxy (RS256, cache on)",
        "gateway",
        "bastion-cache-rs256",
        "p99",
        1.0,
        "haproxy-rs256",
    ),
    Goal(
        "gateway p99 no worse than HAProxy (ES256, cache on)",
        "gateway",
        "bastion-cache-es256",
        "p99",
        1.0,
        "haproxy-es256",
    ),
    Goal(
        "gateway p99 no worse than HAProxy (RS256, cache off)",
        "gateway",
        "bastion-nocache-rs256",
        "p99",
        1.0,
        "haproxy-rs256",
    ),
    Goal(
        "gateway p99 no worse than HAProxy (ES256, cache off)",
        "gateway",
        "bastion-nocache-es256",
        "p99",
        1.0,
        "haproxy-es256",
    ),
)


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """What the command line chose for this suite."""

    workers: int = 1
    tokens: int = 1000
    tls: bool = True
    bastion: bool = True


def _preflight_verifier(name: str, url: str, pool: TokenPool) -> None:
    """A valid token is forwarded, every reject is refused (401)."""
    valid = pool.tokens_file.read_text().split("\n", 1)[0]
    expect_status(url, 200, {"Authorization": f"Bearer {valid}"})
    expect_status(url, 401)
    for reason, token in pool.rejects.items():
        try:
            expect_status(url, 401, {"Authorization": f"Bearer {token}"})
        except RuntimeError as exc:
            raise RuntimeError(f"{name} accepted a token with {reason}: {exc}") from exc


def prepare(
    work: Path, options: GatewayOptions, stack: contextlib.ExitStack, log: Callable[[str], None]
) -> tuple[Table, list[Target]]:
    """Start every service of the suite (inside ``stack``) and return the targets to measure."""
    work = work / "gateway"
    work.mkdir(parents=True, exist_ok=True)
    log(f"gateway: generating {options.tokens} tokens per algorithm")
    pools, jwks_path = make_pools(work / "tokens", ALGS, options.tokens)
    jwks_path.chmod(0o644)
    work.chmod(0o755)
    table = Table(
        "gateway",
        "Gateway: req/s through each proxy, medians of interleaved rounds",
        notes=[
            f"wrk -t1 -c64 and the nginx upstream on core {CLIENT_CORE}; the server under test alone on "
            f"core {SERVER_CORE} ('upstream direct' has no proxy: wrk and nginx share core {CLIENT_CORE}).",
            f"{options.tokens} distinct tokens per algorithm, round-robin; every verifier passed a preflight "
            "(valid token forwarded; bad signature, expired, wrong aud/iss/typ, unknown key refused).",
        ],
    )

    upstream_port = free_port()
    upstream = stack.enter_context(peers.nginx_upstream(upstream_port, work, jwks_path, CLIENT_CORE))
    upstream_url = f"http://127.0.0.1:{upstream_port}/"
    expect_status(upstream_url, 200)
    targets = [
        Target(
            "upstream",
            "upstream direct (nginx)",
            None,
            upstream_url,
            "get.lua",
            service=upstream,
            server_core=None,
        )
    ]

    proxy_port = free_port()
    proxy = stack.enter_context(peers.nginx_proxy(proxy_port, upstream_port, work, SERVER_CORE))
    proxy_url = f"http://127.0.0.1:{proxy_port}/"
    expect_status(proxy_url, 200)
    targets.append(Target("nginx-proxy", "nginx plain proxy", None, proxy_url, "get.lua", service=proxy))

    for alg in ALGS:
        port = free_port()
        haproxy = stack.enter_context(
            peers.haproxy(f"haproxy-{alg.lower()}", port, upstream_port, pools[alg], work, SERVER_CORE)
        )
        url = f"http://127.0.0.1:{port}/"
        _preflight_verifier(f"HAProxy {alg}", url, pools[alg])
        targets.append(
            Target(
                f"haproxy-{alg.lower()}",
                "HAProxy 2.6 jwt_verify",
                alg,
                url,
                "bearer_pool.lua",
                (str(pools[alg].tokens_file),),
                service=haproxy,
            )
        )

    tls_pem = None
    if options.tls:
        tls_pem = self_signed(work / "tls")
        port = free_port()
        haproxy_tls = stack.enter_context(
            peers.haproxy(
                "haproxy-rs256-tls", port, upstream_port, pools["RS256"], work, SERVER_CORE, tls_pem.combined
            )
        )
        targets.append(
            Target(
                "haproxy-rs256-tls",
                "HAProxy 2.6 jwt_verify + TLS",
                "RS256",
                f"https://127.0.0.1:{port}/",
                "bearer_pool.lua",
                (str(pools["RS256"].tokens_file),),
                service=haproxy_tls,
            )
        )

    if options.bastion:
        problem = bastion_gateway.unavailable()
        if problem is not None:
            table.notes.append(f"Bastion gateway rows not measured: {problem}")
            log(f"gateway: Bastion rows skipped: {problem}")
        else:
            targets += _bastion_targets(
                work, options, stack, pools, jwks_path, upstream_port, tls_pem, table, log
            )
    return table, targets


def _bastion_targets(
    work: Path,
    options: GatewayOptions,
    stack: contextlib.ExitStack,
    pools: dict[str, TokenPool],
    jwks_path: Path,
    upstream_port: int,
    tls_pem: object,
    table: Table,
    log: Callable[[str], None],
) -> list[Target]:
    cores = worker_cores(options.workers)
    if options.workers > 1:
        table.notes.append(
            f"Bastion rows with --workers {options.workers}: pinned to cores {cores}, shared with wrk."
        )
    jwks_uri = f"http://127.0.0.1:{upstream_port}/jwks.json"
    targets: list[Target] = []
    variants: list[tuple[str, str, bool, bool]] = [
        ("cache", "Bastion gateway, cache on", True, False),
        ("nocache", "Bastion gateway, cache off", False, False),
    ]
    if options.tls and tls_pem is not None:
        variants.append(("cache-tls", "Bastion gateway, cache on + TLS", True, True))
    for variant, name, cache, tls in variants:
        for alg in ALGS:
            if tls and alg != "RS256":
                continue
            key = f"bastion-{variant}-{alg.lower()}"
            try:
                service = bastion_gateway.service(
                    key,
                    work=work,
                    alg=alg,
                    jwks_uri=jwks_uri,
                    upstream_port=upstream_port,
                    cache=cache,
                    tls=tls_pem if tls else None,
                    workers=options.workers,
                    cores=cores,
                )
            except bastion_gateway.Unsupported as exc:
                table.notes.append(f"{name} {alg} not measured: {exc}")
                log(f"gateway: {name} {alg} skipped: {exc}")
                continue
            stack.enter_context(service)
            scheme = "https" if tls else "http"
            url = f"{scheme}://127.0.0.1:{service.port}/"
            if not tls:
                _preflight_verifier(f"{name} {alg}", url, pools[alg])
            baseline = "haproxy-rs256-tls" if tls else f"haproxy-{alg.lower()}"
            targets.append(
                Target(
                    key,
                    name,
                    alg,
                    url,
                    "bearer_pool.lua",
                    (str(pools[alg].tokens_file),),
                    baseline=baseline,
                    service=service,
                    check=functools.partial(
                        _cache_check, f"{name} {alg}", service, pools[alg].count if cache else None
                    ),
                    server_core=SERVER_CORE if options.workers == 1 else None,
                )
            )
    return targets


def _cache_check(label: str, service: bastion_gateway.GatewayService, distinct: int | None) -> str:
    """A note with the row's cache hit ratio, flagged when it contradicts the configuration.

    With the cache on (``distinct`` tokens in the pool) only each worker's first sight of each
    token may miss; with it off (``None``) nothing may hit.
    """
    try:
        hits, misses = service.cache_counts()
    except OSError as exc:
        return f"{label}: cache counters unavailable ({exc})"
    lookups = hits + misses
    ratio = hits / lookups if lookups else 0.0
    wrong = hits > 0 if distinct is None else misses > distinct * service.workers * 1.05 + 10
    flag = "UNEXPECTED: " if wrong else ""
    return f"{flag}{label}: {ratio:.1%} verified-token cache hits ({misses:,} misses in {lookups:,} lookups)."

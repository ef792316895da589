"""The gateway suite: upstream direct, nginx as a plain proxy, HAProxy ``jwt_verify``, Bastion.

Cores: the server under test alone on core 0; wrk (``-t1 -c64``) and the nginx upstream (which
also serves the JWKS for Bastion) on core 1, with the private ``redis-server`` of the Redis
rate-limit rows. Tokens: 1,000 distinct RS256 and 1,000 distinct
ES256 JWTs, taken round-robin by ``lua/bearer_pool.lua``. Before any measurement every verifying
target must pass a preflight: a valid token is forwarded (200) and every token of
:attr:`token_pool.TokenPool.rejects` is refused (401), so no row can be fast by checking less.

The rate-limit rows (:data:`RATE_LIMIT_ROWS`) put the cache-hit RS256 route beside itself with a
limit, in-process, on the SQLite state file and on Redis, measured in the same interleaved
rounds; their ratios are to the same route without a limit on the same state store. A limited
row must show its limit consulted: one request in the preflight moves the gateway's
``bastion_gateway_rate_limit_admitted_total`` by exactly one (an unlimited row's stays 0), the
count covers every measured request afterwards, nothing is refused, and on Redis the buckets are
read back after each round.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import statistics
import sys
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Final

import bastion_gateway
import peers
from procs import CLIENT_CORE
from procs import SERVER_CORE
from procs import Service
from procs import free_port
from procs import worker_cores
from report import Goal
from report import Table
from rounds import PreflightError
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
    Goal(
        "in-process rate limit by address >= 0.95x the unlimited route",
        "gateway",
        "bastion-rl-local-ip-rs256",
        "paired",
        0.95,
        "bastion-rl-off-rs256",
    ),
    Goal(
        "in-process rate limit by client id >= 0.95x the unlimited route",
        "gateway",
        "bastion-rl-local-client-rs256",
        "paired",
        0.95,
        "bastion-rl-off-rs256",
    ),
    Goal(
        "Redis rate limit by address >= 0.7x the unlimited route",
        "gateway",
        "bastion-rl-redis-ip-rs256",
        "paired",
        0.7,
        "bastion-rl-off-redis-rs256",
    ),
    Goal(
        "Redis rate limit by client id >= 0.7x the unlimited route",
        "gateway",
        "bastion-rl-redis-client-rs256",
        "paired",
        0.7,
        "bastion-rl-off-redis-rs256",
    ),
)

#: The limit of the rate-limit rows: never refuses in a run, yet visibly counts. 100/s spaces a
#: bucket's requests 10 ms apart, so at thousands of requests per second its theoretical arrival
#: time runs ahead of the clock (the Redis key outlives the round); a burst of 10^9 lets it run
#: ahead by 10^7 s, i.e. it would refuse only after 10^9 requests beyond 100/s.
NEVER_REFUSING: Final = {"requests": 100, "per": 1, "burst": 1_000_000_000}


@dataclass(frozen=True, slots=True)
class RateLimitRow:
    """One rate-limit row: the cache-hit RS256 route on ``state`` with a limit keyed by ``key``
    (``None``: no limit), compared with the row ``baseline`` (a key without ``bastion-`` and the
    algorithm)."""

    variant: str
    name: str
    state: str
    key: str | None
    baseline: str | None
    #: Buckets the load fills: 1 address; the pool's tokens carry 10 client ids.
    buckets: int = 1


RATE_LIMIT_ROWS: Final = (
    RateLimitRow("rl-off", "Bastion, cache on, no rate limit (memory state)", "memory", None, None),
    RateLimitRow("rl-local-ip", "Bastion, in-process limit by address", "memory", "ip", "rl-off"),
    RateLimitRow(
        "rl-local-client", "Bastion, in-process limit by client id", "memory", "client", "rl-off", 10
    ),
    RateLimitRow("rl-sqlite-ip", "Bastion, SQLite-file limit by address", "sqlite", "ip", "cache"),
    RateLimitRow("rl-off-redis", "Bastion, cache on, no rate limit (Redis state)", "redis", None, None),
    RateLimitRow("rl-redis-ip", "Bastion, Redis limit by address", "redis", "ip", "rl-off-redis"),
    RateLimitRow(
        "rl-redis-client", "Bastion, Redis limit by client id", "redis", "client", "rl-off-redis", 10
    ),
)


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """What the command line chose for this suite."""

    workers: int = 1
    tokens: int = 1000
    tls: bool = True
    bastion: bool = True
    #: Measure only the rows whose key starts with one of these (empty: every row).
    rows: tuple[str, ...] = ()
    #: Measure the rate-limit rows.
    rate_limits: bool = True

    def wanted(self, key: str) -> bool:
        """Whether the row ``key`` is to be measured."""
        return not self.rows or key.startswith(self.rows)


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

    #: Every row by key, for the checks that compare a row with its baseline round by round.
    by_key: dict[str, Target] = {}
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

    floor_rows = _floor_targets(work, options, stack, pools["RS256"], upstream_port, by_key, log)
    if floor_rows:
        table.notes.append(
            "floor: a minimal forwarder (bench/floor.py: uvloop, httptools callbacks, the bearer token "
            "looked up in a dict of the pool's tokens verified at start-up, a pooled upstream, the "
            "upstream's bytes relayed as they come), the least a Python forwarder that checks a token "
            "can do here; being a dict lookup, its cost does not depend on the algorithm. bare engine: "
            "Bastion's HTTP/1.1 engine with a handler that forwards everything (bench/gateway_engine.py). "
            "Both get the RS256 requests of the gateway rows."
        )
    targets += floor_rows

    if options.bastion:
        problem = bastion_gateway.unavailable()
        if problem is not None:
            table.notes.append(f"Bastion gateway rows not measured: {problem}")
            log(f"gateway: Bastion rows skipped: {problem}")
        else:
            targets += _bastion_targets(
                work, options, stack, pools, jwks_path, upstream_port, tls_pem, table, log
            )
            if options.rate_limits:
                targets += _rate_limit_targets(
                    work, options, stack, pools["RS256"], upstream_port, table, log, by_key
                )
    targets = [target for target in targets if options.wanted(target.key)]
    by_key.update((target.key, target) for target in targets)
    return table, targets


#: The rows that bracket the gateway's cost: what the machine allows, the engine alone, the gateway.
FLOOR_ROWS: Final = ("floor-rs256", "engine", "bastion-cache-rs256")


def _floor_targets(
    work: Path,
    options: GatewayOptions,
    stack: contextlib.ExitStack,
    pool: TokenPool,
    upstream_port: int,
    by_key: dict[str, Target],
    log: Callable[[str], None],
) -> list[Target]:
    """The floor (``floor.py``: the least a Python token-checking forwarder does) and the bare
    engine (``gateway_engine.py``: Bastion's HTTP/1.1 engine with a forward-always handler), both
    alone on the server core in front of the same nginx upstream and loaded with the same RS256
    requests as the gateway rows.

    The floor looks each token up in a dict of the pool's tokens verified at its start-up, so the
    algorithm makes no difference to it; the engine checks nothing (its preflight is one 200)."""
    here = Path(__file__).resolve().parent
    targets = []
    logs = work / "logs"
    if options.wanted("floor-rs256"):
        port = free_port()
        floor = stack.enter_context(
            Service(
                "floor-rs256",
                [
                    sys.executable,
                    str(here / "floor.py"),
                    f"--port={port}",
                    f"--upstream-port={upstream_port}",
                    f"--tokens={pool.tokens_file}",
                    f"--public-pem={pool.public_pem}",
                    "--alg=RS256",
                ],
                cores=SERVER_CORE,
                port=port,
                log_dir=logs,
            )
        )
        url = f"http://127.0.0.1:{port}/"
        _preflight_verifier("floor: minimal forwarder", url, pool)
        targets.append(
            Target(
                "floor-rs256",
                "floor: minimal forwarder",
                "RS256",
                url,
                "bearer_pool.lua",
                (str(pool.tokens_file),),
                baseline="haproxy-rs256",
                service=floor,
                check=functools.partial(_floor_check, by_key),
            )
        )
    if options.bastion and options.wanted("engine") and bastion_gateway.unavailable() is None:
        port = free_port()
        engine = stack.enter_context(
            Service(
                "engine",
                [
                    sys.executable,
                    str(here / "gateway_engine.py"),
                    f"--serve={port}",
                    f"--upstream-port={upstream_port}",
                ],
                cores=SERVER_CORE,
                port=port,
                log_dir=logs,
            )
        )
        url = f"http://127.0.0.1:{port}/"
        valid = pool.tokens_file.read_text().split("\n", 1)[0]
        expect_status(url, 200, {"Authorization": f"Bearer {valid}"})
        targets.append(
            Target(
                "engine",
                "bare engine, forward-always handler (no token check)",
                None,
                url,
                "bearer_pool.lua",
                (str(pool.tokens_file),),
                baseline="haproxy-rs256",
                service=engine,
            )
        )
    if targets:
        log("gateway: floor and bare engine ready")
    return targets


def _floor_check(by_key: dict[str, Target]) -> str | None:
    """A note under the table: CPU per request of the floor, the bare engine and the gateway with
    cache hits (medians of the rounds), and the differences between them."""
    costs = {}
    for key in FLOOR_ROWS:
        target = by_key.get(key)
        cpu = cpu_per_request(target) if target is not None else []
        if cpu:
            costs[key] = statistics.median(cpu)
    if not costs:
        return None
    names = {"floor-rs256": "floor", "engine": "bare engine", "bastion-cache-rs256": "gateway (cache hits)"}
    parts = [f"{names[key]} {cost:.1f} µs" for key, cost in costs.items()]
    steps = [
        f"{names[b]} - {names[a]} = {costs[b] - costs[a]:.1f} µs"
        for a, b in itertools.pairwise(FLOOR_ROWS)
        if a in costs and b in costs
    ]
    return (
        "CPU per request on core 0 (medians of the rounds): "
        + ", ".join(parts)
        + ("; " + ", ".join(steps) if steps else "")
        + "."
    )


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
            if not options.wanted(key):
                continue
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


#: Metrics a rate-limit row reads from the gateway's admin listener.
ADMITTED: Final = "bastion_gateway_rate_limit_admitted_total"
REFUSED: Final = "bastion_gateway_rate_limited_total"
UNDECIDED: Final = "bastion_gateway_rate_limit_errors_total"


@dataclass(slots=True)
class RedisBuckets:
    """The rate-limit buckets of one row in its own database of the private Redis, read back after
    each round: how many there are and the shortest time (ms) one still has to live."""

    url: str
    rounds: list[tuple[int, int]] = field(default_factory=list)

    def read(self) -> tuple[int, int]:
        """``(buckets, shortest PTTL in ms)`` right now (``(0, 0)`` when there are none)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match="bastion:rl:*", count=1000))
            ttls = [int(client.pttl(key)) for key in keys]
        finally:
            client.close()
        return len(keys), min(ttls, default=0)

    def after_round(self) -> None:
        """Record the buckets after a round (a :attr:`rounds.Target.after` hook)."""
        self.rounds.append(self.read())


def _rate_limit_targets(
    work: Path,
    options: GatewayOptions,
    stack: contextlib.ExitStack,
    pool: TokenPool,
    upstream_port: int,
    table: Table,
    log: Callable[[str], None],
    by_key: dict[str, Target],
) -> list[Target]:
    """The rows of :data:`RATE_LIMIT_ROWS` that are wanted, each a gateway of its own on core 0.

    ``by_key`` is filled with every row of the suite before the checks run (a row's baseline may
    come from another part of the suite)."""
    rows = [row for row in RATE_LIMIT_ROWS if options.wanted(f"bastion-{row.variant}-rs256")]
    if not rows:
        return []
    if options.workers > 1:
        table.notes.append("Rate-limit rows not measured: they compare one worker with one worker.")
        return []
    redis_port = None
    if any(row.state == "redis" for row in rows):
        redis_port = free_port()
        stack.enter_context(peers.redis_server(redis_port, work, CLIENT_CORE))
    jwks_uri = f"http://127.0.0.1:{upstream_port}/jwks.json"
    targets: dict[str, Target] = {}
    checks: list[tuple[Target, RateLimitRow, bastion_gateway.GatewayService, RedisBuckets | None]] = []
    for number, row in enumerate(rows, start=1):
        key = f"bastion-{row.variant}-rs256"
        buckets = None
        if row.state == "redis":
            # a database per row, so each row's buckets are read back alone
            buckets = RedisBuckets(f"redis://127.0.0.1:{redis_port}/{number}")
            state_url: str | None = buckets.url
        else:
            state_url = "memory://" if row.state == "memory" else None
        limits = [] if row.key is None else [{**NEVER_REFUSING, "key": row.key}]
        service = bastion_gateway.service(
            key,
            work=work,
            alg="RS256",
            jwks_uri=jwks_uri,
            upstream_port=upstream_port,
            cache=True,
            tls=None,
            workers=1,
            cores=SERVER_CORE,
            state_url=state_url,
            rate_limit=limits,
        )
        stack.enter_context(service)
        url = f"http://127.0.0.1:{service.port}/"
        _preflight_verifier(f"{row.name} RS256", url, pool)
        _preflight_limit(row, url, service, pool)
        target = Target(
            key,
            row.name,
            "RS256",
            url,
            "bearer_pool.lua",
            (str(pool.tokens_file),),
            baseline=None if row.baseline is None else f"bastion-{row.baseline}-rs256",
            service=service,
            after=None if buckets is None else buckets.after_round,
        )
        targets[key] = target
        checks.append((target, row, service, buckets))
        log(f"gateway: {row.name} ready ({row.state} state)")
    for target, row, service, buckets in checks:
        target.check = functools.partial(_limit_check, target, row, service, buckets, by_key)
    return list(targets.values())


def _preflight_limit(
    row: RateLimitRow, url: str, service: bastion_gateway.GatewayService, pool: TokenPool
) -> None:
    """One valid request moves the admitted count by exactly one on a limited row (by none on an
    unlimited one), and nothing is refused or undecided.

    Raises:
        PreflightError: the limit was not consulted, or consulted where there is none.
    """
    valid = pool.tokens_file.read_text().split("\n", 1)[0]
    before = service.metric_sum(ADMITTED)
    expect_status(url, 200, {"Authorization": f"Bearer {valid}"})
    moved = service.metric_sum(ADMITTED) - before
    expected = 0 if row.key is None else 1
    if moved != expected:
        raise PreflightError(
            f"{row.name}: one request moved {ADMITTED} by {moved:g}, expected {expected}: "
            "the row would not measure what it says"
        )
    problems = service.metric_sum(REFUSED) + service.metric_sum(UNDECIDED)
    if problems:
        raise PreflightError(f"{row.name}: {problems:g} requests refused or undecided in the preflight")


def check_limit_counts(
    row: RateLimitRow,
    measured: int,
    admitted: float,
    refused: float,
    undecided: float,
    buckets: Sequence[tuple[int, int]] | None,
) -> list[str]:
    """What contradicts the row's configuration after its rounds (empty: nothing).

    A limited row must have counted at least every measured request (warm-ups and the preflight
    add more), refused and failed none, and on Redis have left exactly its buckets, still alive,
    after every round; an unlimited row must have counted nothing.
    """
    wrong = []
    if row.key is None:
        if admitted:
            wrong.append(f"{admitted:,.0f} requests counted by a limit on a route without one")
    elif admitted < measured:
        wrong.append(f"only {admitted:,.0f} requests counted for {measured:,} measured")
    if refused or undecided:
        wrong.append(f"{refused:,.0f} refused and {undecided:,.0f} undecided")
    if buckets is not None and row.key is not None:
        for number, (count, ttl) in enumerate(buckets, start=1):
            if count != row.buckets or ttl <= 0:
                wrong.append(
                    f"round {number}: {count} Redis buckets (expected {row.buckets}), shortest PTTL {ttl} ms"
                )
    return wrong


def round_ratios(target: Target, baseline: Target) -> list[float]:
    """Per round, the row's req/s over its baseline's in the same round."""
    return [
        mine.rps / base.rps
        for mine, base in zip(target.results, baseline.results, strict=False)
        if base.rps > 0
    ]


def cpu_per_request(target: Target) -> list[float]:
    """Per round, the server's CPU time per request in µs (its share of the core over the round's
    seconds, divided by the requests): less sensitive than req/s to time other work took from
    the core, so a second view of a row's cost on a shared machine."""
    return [
        share * result.seconds / result.requests * 1e6
        for share, result in zip(target.server_cpu, target.results, strict=False)
        if result.requests > 0
    ]


def _limit_check(
    target: Target,
    row: RateLimitRow,
    service: bastion_gateway.GatewayService,
    buckets: RedisBuckets | None,
    by_key: dict[str, Target],
) -> str:
    """A note under the table: the limit consulted (or not), Redis buckets, per-round ratios;
    flagged ``UNEXPECTED`` when :func:`check_limit_counts` finds a contradiction."""
    label = f"{row.name} RS256"
    try:
        admitted = service.metric_sum(ADMITTED)
        refused = service.metric_sum(REFUSED)
        undecided = service.metric_sum(UNDECIDED)
    except OSError as exc:
        return f"UNEXPECTED: {label}: rate-limit counters unavailable ({exc})"
    measured = sum(result.requests for result in target.results)
    wrong = check_limit_counts(
        row, measured, admitted, refused, undecided, buckets.rounds if buckets else None
    )
    parts = []
    if row.key is None:
        parts.append("no limit consulted")
    else:
        parts.append(f"limit consulted for {admitted:,.0f} requests ({measured:,} measured), none refused")
    if buckets is not None and buckets.rounds and row.key is not None:
        parts.append(f"{buckets.rounds[-1][0]} bucket(s) in Redis after each round")
    baseline = by_key.get(target.baseline or "")
    if baseline is not None:
        ratios = round_ratios(target, baseline)
        if ratios:
            parts.append(
                "req/s ratio per round "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + f" (median {statistics.median(ratios):.2f})"
            )
        mine, base = cpu_per_request(target), cpu_per_request(baseline)
        if mine and base:
            parts.append(
                f"CPU per request {statistics.median(mine):.1f} µs vs {statistics.median(base):.1f} µs "
                f"unlimited (medians; {statistics.median(base) / statistics.median(mine):.2f}x)"
            )
    flag = "UNEXPECTED: " + "; ".join(wrong) + " — " if wrong else ""
    return f"{flag}{label}: " + "; ".join(parts) + "."

"""``--soak SECONDS``: Bastion's gateway under constant load, its RSS sampled over time.

The setup is the gateway suite's (nginx upstream on core 1, the gateway alone on core 0, wrk -t1
-c64 on core 1, RS256 tokens round-robin, verified-token cache on). RSS (the gateway and its
workers) is sampled about 60 times. Memory counts as flat when the median of the last quarter of
samples is within 10 % (and 16 MiB) of the median of the second quarter; the first quarter is
warm-up (caches fill, allocator arenas grow).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import bastion_gateway
import peers
from install import WORK_DIR
from procs import CLIENT_CORE
from procs import free_port
from procs import worker_cores
from rounds import expect_status
from token_pool import make_pools
from wrk import parse_output
from wrk import wrk_command

MIB = 1024 * 1024


def is_flat(samples: list[int]) -> tuple[bool, float, float]:
    """Whether RSS ``samples`` stayed flat; also the reference and the final medians (bytes)."""
    quarter = max(1, len(samples) // 4)
    reference = statistics.median(samples[quarter : 2 * quarter] or samples)
    final = statistics.median(samples[-quarter:])
    growth = final - reference
    return growth <= max(0.10 * reference, 16 * MIB), reference, final


def run(run_dir: Path, seconds: float, *, workers: int, tokens: int, log: Callable[[str], None]) -> int:
    """Run the soak and print and save the RSS series; exit status 1 when memory grew."""
    problem = bastion_gateway.unavailable()
    if problem is not None:
        log(f"soak needs Bastion's gateway: {problem}")
        return 2
    work = run_dir / "soak"
    work.mkdir(parents=True, exist_ok=True)
    pools, jwks = make_pools(work / "tokens", ("RS256",), tokens)
    jwks.chmod(0o644)
    upstream_port = free_port()
    cores = worker_cores(workers)
    with (
        peers.nginx_upstream(upstream_port, work, jwks, CLIENT_CORE),
        bastion_gateway.service(
            "bastion-soak",
            work=work,
            alg="RS256",
            jwks_uri=f"http://127.0.0.1:{upstream_port}/jwks.json",
            upstream_port=upstream_port,
            cache=True,
            tls=None,
            workers=workers,
            cores=cores,
        ) as gateway,
    ):
        url = f"http://127.0.0.1:{gateway.port}/"
        token = pools["RS256"].tokens_file.read_text().split("\n", 1)[0]
        expect_status(url, 200, {"Authorization": f"Bearer {token}"})
        argv = wrk_command(url, "bearer_pool.lua", (str(pools["RS256"].tokens_file),), seconds=seconds)
        interval = max(1.0, seconds / 60)
        series: list[tuple[float, int]] = []
        start = time.monotonic()
        load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while load.poll() is None:
            elapsed = time.monotonic() - start
            rss = gateway.rss_bytes()
            series.append((round(elapsed, 1), rss))
            log(f"soak {elapsed:6.0f}/{seconds:g} s  RSS {rss / MIB:7.1f} MiB")
            time.sleep(interval)
        out, err = load.communicate()
        result = parse_output(out) if load.returncode == 0 else None
    samples = [rss for _, rss in series]
    flat, reference, final = is_flat(samples)
    verdict = "flat" if flat else "GROWING"
    log(
        f"soak: memory {verdict}: {reference / MIB:.1f} MiB after warm-up, {final / MIB:.1f} MiB at the end, "
        f"max {max(samples) / MIB:.1f} MiB"
        + (f"; {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms, {result.errors} errors" if result else "")
    )
    path = WORK_DIR / f"results-soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "workers": workers,
                "flat": flat,
                "reference_rss": reference,
                "final_rss": final,
                "series": series,
                "rps": result.rps if result else None,
                "p99_ms": result.p99_ms if result else None,
                "errors": result.errors if result else None,
                "wrk_stderr": err[-500:],
            },
            indent=2,
        )
    )
    log(f"soak results saved to {path}")
    return 0 if flat else 1

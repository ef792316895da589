"""Interleaved rounds: every target once per round, warm-up before each measurement.

Interleaving (A B C, A B C, A B C rather than A A A, B B B …) spreads slow drifts of the machine
(thermal, other tenants, page cache) over all targets instead of charging them to one.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

from procs import CLIENT_CORE
from procs import Service
from wrk import WrkResult
from wrk import run_wrk


@dataclass(frozen=True, slots=True)
class Timing:
    """Durations of one run."""

    rounds: int = 3
    seconds: float = 10.0
    warmup: float = 2.0


@dataclass(slots=True)
class Target:
    """One row to measure: a URL, the wrk script and its arguments, and how to label it."""

    key: str
    name: str
    alg: str | None
    url: str
    script: str
    script_args: tuple[str, ...] = ()
    baseline: str | None = None
    note: str = ""
    connections: int = 64
    threads: int = 1
    wrk_cores: str | None = CLIENT_CORE
    #: The process under test, when the suite owns it (profiling, memory).
    service: Service | None = None
    #: Called before each round (e.g. to start a process that exists only for this row).
    before: Callable[[], None] | None = None
    #: Called after each round.
    after: Callable[[], None] | None = None
    results: list[WrkResult] = field(default_factory=list)


class PreflightError(RuntimeError):
    """A target answered a request differently from what the benchmark requires."""


def expect_status(
    url: str, status: int, headers: dict[str, str] | None = None, data: bytes | None = None
) -> bytes:
    """Send one request and require ``status``; returns the body.

    Raises:
        PreflightError: another status, or no answer.
    """
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            got, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        got, body = exc.code, exc.read()
    except OSError as exc:
        raise PreflightError(f"{url}: {exc}") from exc
    if got != status:
        raise PreflightError(f"{url}: expected {status}, got {got}: {body[:300]!r}")
    return body


def run_rounds(
    targets: Sequence[Target],
    timing: Timing,
    *,
    label: str,
    counter: list[int],
    total: int,
) -> None:
    """Measure every target ``timing.rounds`` times, interleaved; results go into each target.

    ``counter`` and ``total`` number the progress lines across suites (``[3/12] …``).
    """
    for round_no in range(1, timing.rounds + 1):
        for target in targets:
            counter[0] += 1
            alg = f" {target.alg}" if target.alg else ""
            print(
                f"[{counter[0]}/{total}] {label}: {target.name}{alg} round {round_no} …",
                end="",
                flush=True,
            )
            if target.before is not None:
                target.before()
            try:
                common = {
                    "connections": target.connections,
                    "threads": target.threads,
                    "cores": target.wrk_cores,
                }
                if timing.warmup > 0:
                    run_wrk(target.url, target.script, target.script_args, seconds=timing.warmup, **common)
                result = run_wrk(
                    target.url, target.script, target.script_args, seconds=timing.seconds, **common
                )
            finally:
                if target.after is not None:
                    target.after()
            target.results.append(result)
            errors = f", {result.errors} errors" if result.errors else ""
            print(
                f" {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms{errors}",
                flush=True,
            )

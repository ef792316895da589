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
from procs import SERVER_CORE
from procs import Service
from procs import core_ticks
from wrk import WrkResult
from wrk import run_wrk


@dataclass(frozen=True, slots=True)
class Timing:
    """Durations of one run."""

    rounds: int = 3
    seconds: float = 10.0
    warmup: float = 2.0
    #: A round whose server core spent more than this share on other processes is measured
    #: again (the machine is shared; see :class:`CoreAccount`), at most ``retries`` times.
    max_other_load: float = 0.25
    retries: int = 2


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
    #: The process under test, when the suite owns it (profiling, memory, CPU accounting).
    service: Service | None = None
    #: The core the server under test is pinned to (``None``: not pinned, no accounting).
    server_core: str | None = SERVER_CORE
    #: Called before each round (e.g. to start a process that exists only for this row).
    before: Callable[[], None] | None = None
    #: Called after each round.
    after: Callable[[], None] | None = None
    #: Called once after all rounds; a returned string becomes a note under the table.
    check: Callable[[], str | None] | None = None
    results: list[WrkResult] = field(default_factory=list)
    #: Per round: share of the server core's time used by anything but the server under test.
    foreign_load: list[float] = field(default_factory=list)
    #: Per round: share of the server core's time used by the server under test.
    server_cpu: list[float] = field(default_factory=list)


class CoreAccount:
    """How busy the server core was with other work while a round ran.

    ``foreign`` = (process and steal ticks of the core - ticks of the server's processes) / all
    ticks of the core (see :func:`procs.core_ticks`): near zero on a quiet machine; more means
    other processes (or another guest of the hypervisor) shared the core and the round is noisy.
    """

    def __init__(self, core: str, service: Service) -> None:
        self.core = core
        self.service = service
        self.busy, self.total = core_ticks(core)
        self.server = service.cpu_ticks()

    def server_share(self) -> float:
        """Share of the core's ticks the server's processes used since the account opened."""
        _, total = core_ticks(self.core)
        elapsed = total - self.total
        return (self.service.cpu_ticks() - self.server) / elapsed if elapsed > 0 else 0.0

    def foreign(self) -> float:
        busy, total = core_ticks(self.core)
        server = self.service.cpu_ticks()
        elapsed = total - self.total
        if elapsed <= 0:
            return 0.0
        return max(0.0, ((busy - self.busy) - (server - self.server)) / elapsed)


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


@dataclass(frozen=True, slots=True)
class CpuUse:
    """Shares of the server core during one measured round."""

    #: Taken by other processes (or stolen by the hypervisor).
    other: float
    #: Used by the server under test (below 1.0: it was not CPU-bound on its core).
    server: float


def _measure(target: Target, timing: Timing) -> tuple[WrkResult, CpuUse | None]:
    """Warm up, then measure; retry a round whose server core was busy with other work.

    Up to ``timing.retries`` more attempts are made while more than ``timing.max_other_load`` of
    the server core went to other processes; the attempt with the least other load is kept.
    """
    best: tuple[WrkResult, CpuUse | None] | None = None
    for attempt in range(timing.retries + 1):
        if timing.warmup > 0:
            run_wrk(
                target.url,
                target.script,
                target.script_args,
                seconds=timing.warmup,
                connections=target.connections,
                threads=target.threads,
                cores=target.wrk_cores,
            )
        account = (
            CoreAccount(target.server_core, target.service)
            if target.server_core is not None and target.service is not None
            else None
        )
        result = run_wrk(
            target.url,
            target.script,
            target.script_args,
            seconds=timing.seconds,
            connections=target.connections,
            threads=target.threads,
            cores=target.wrk_cores,
        )
        use = CpuUse(account.foreign(), account.server_share()) if account is not None else None
        if best is None or (use is not None and best[1] is not None and use.other < best[1].other):
            best = (result, use)
        if use is None or use.other <= timing.max_other_load:
            break
        foreign = use.other
        if attempt < timing.retries:
            print(
                f" [core {target.server_core} {foreign:.0%} busy with other work: again]", end="", flush=True
            )
    if best is None:  # pragma: no cover - the loop runs at least once
        raise RuntimeError("no measurement")
    return best


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
                result, use = _measure(target, timing)
            finally:
                if target.after is not None:
                    target.after()
            target.results.append(result)
            if use is not None:
                target.foreign_load.append(use.other)
                target.server_cpu.append(use.server)
            errors = f", {result.errors} errors" if result.errors else ""
            foreign = (
                f", server {use.server:.0%} of core {target.server_core}, {use.other:.0%} other load"
                if use is not None
                else ""
            )
            print(
                f" {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms{errors}{foreign}",
                flush=True,
            )

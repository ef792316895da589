"""Run Debian's ``wrk`` pinned to a core and read its result.

Every Lua script in ``bench/lua`` loads ``report.lua``, whose ``done()`` prints one
``BENCH_RESULT {json}`` line; :func:`parse_output` turns it into a :class:`WrkResult`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent / "lua"
_MARKER = "BENCH_RESULT "


class WrkError(RuntimeError):
    """wrk failed or printed no result line."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    #: Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    errors: int
    #: Responses with a status outside 2xx/3xx.
    bad_status: int

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def parse_output(stdout: str) -> WrkResult:
    """The :class:`WrkResult` in wrk's output.

    Raises:
        WrkError: no ``BENCH_RESULT`` line.
    """
    for line in stdout.splitlines():
        if line.startswith(_MARKER):
            data = json.loads(line[len(_MARKER) :])
            socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
            return WrkResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p90_ms=data["p90_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
                errors=socket_errors + data["status"],
                bad_status=data["status"],
            )
    raise WrkError(f"no result line in wrk output:\n{stdout[-2000:]}")


def wrk_command(
    url: str,
    script: str,
    script_args: Sequence[str] = (),
    *,
    seconds: float,
    connections: int = 64,
    threads: int = 1,
    cores: str | None = "1",
    timeout_s: int = 5,
) -> list[str]:
    """The argv that runs wrk with ``bench/lua/<script>`` against ``url``."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA_DIR / script),
        url,
    ]
    if script_args:
        argv += ["--", *script_args]
    return ["taskset", "-c", cores, *argv] if cores is not None else argv


def run_wrk(
    url: str,
    script: str,
    script_args: Sequence[str] = (),
    *,
    seconds: float,
    connections: int = 64,
    threads: int = 1,
    cores: str | None = "1",
) -> WrkResult:
    """Run wrk once and return its result.

    Raises:
        WrkError: wrk exited non-zero or printed no result.
    """
    argv = wrk_command(
        url, script, script_args, seconds=seconds, connections=connections, threads=threads, cores=cores
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise WrkError(f"wrk exited {proc.returncode}: {proc.stderr[-2000:]}{proc.stdout[-2000:]}")
    return parse_output(proc.stdout)

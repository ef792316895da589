"""Where a gateway row's microseconds go: the account behind *The floor, the engine and the gateway*.

Starts the chosen rows of the gateway suite (its own ``prepare``: same upstream, tokens, cores
and preflights) and, per row, after a warm-up, runs wrk three times:

1. plain, reading ``/proc/stat`` and the server's CPU time around it: core 0's user, system and
   softirq time per request, what other processes took of it, and how idle core 1 (wrk and
   nginx) was;
2. under ``strace -c -f``: system calls per request;
3. under ``perf record -e cpu-clock``: the share of the server's samples per binary (kernel,
   ``libpython``, httptools, uvloop, libc) and in the kernel's wake-up of the reading process
   (``sock_def_readable``), turned into µs with the plain run's CPU per request.

Usage (a quiet machine; every step is skipped when its tool is missing)::

    .venv/bin/python bench/account.py --rows floor,engine,bastion-cache-rs256 --seconds 5
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gateway_suite
import install
from procs import CLIENT_CORE
from procs import SERVER_CORE
from rounds import Target
from wrk import parse_output
from wrk import run_wrk
from wrk import wrk_command

_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")
_PERF_ROW = re.compile(r"^\s*([\d.]+)%\s+(\S+)")


def core_times(core: str) -> dict[str, int]:
    """The clock ticks of ``/proc/stat``'s line for ``core``, by field."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            return dict(zip(_STAT_FIELDS, (int(v) for v in line.split()[1:9]), strict=True))
    raise ValueError(f"no cpu{core} in /proc/stat")


def parse_strace(text: str) -> dict[str, int]:
    """Calls per system call from ``strace -c`` output (the ``total`` line left out)."""
    calls = {}
    for line in text.splitlines():
        match = _STRACE_ROW.match(line)
        if match and match.group(2) != "total":
            calls[match.group(2)] = int(match.group(1))
    return calls


def parse_perf_shares(text: str) -> dict[str, float]:
    """Percent of samples per first sort key from ``perf report --stdio`` output."""
    shares: dict[str, float] = {}
    for line in text.splitlines():
        match = _PERF_ROW.match(line)
        if match and not line.lstrip().startswith("#"):
            shares[match.group(2)] = shares.get(match.group(2), 0.0) + float(match.group(1))
    return shares


def _wrk(target: Target, seconds: float) -> subprocess.CompletedProcess[str]:
    argv = wrk_command(target.url, target.script, target.script_args, seconds=seconds, cores=CLIENT_CORE)
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)


def account(target: Target, seconds: float, out: Path) -> None:
    """Print the three measurements of one row."""
    assert target.service is not None
    pid = str(target.service.pid)
    run_wrk(target.url, target.script, target.script_args, seconds=2)
    before, before1, server_before = (
        core_times(SERVER_CORE),
        core_times(CLIENT_CORE),
        target.service.cpu_ticks(),
    )
    result = parse_output(_wrk(target, seconds).stdout)
    after, after1, server_after = core_times(SERVER_CORE), core_times(CLIENT_CORE), target.service.cpu_ticks()
    spent = {name: after[name] - before[name] for name in _STAT_FIELDS}
    total = sum(spent.values()) or 1
    per = {name: ticks / total * result.seconds / result.requests * 1e6 for name, ticks in spent.items()}
    idle1 = (after1["idle"] - before1["idle"]) / (sum(after1.values()) - sum(before1.values()) or 1)
    # the server's own user + system time (softirq run on its behalf included), as the suite's
    # "CPU per request"; the rest of core 0's busy time went to other processes
    cpu = (server_after - server_before) / total * result.seconds / result.requests * 1e6
    other = per["user"] + per["nice"] + per["system"] + per["softirq"] + per["steal"] - cpu
    print(
        f"{target.key}: {result.rps:,.0f} req/s, server CPU {cpu:.1f} µs per request; core 0 per "
        f"request: user {per['user']:.1f} µs, system {per['system']:.1f} µs, softirq "
        f"{per['softirq']:.1f} µs, idle {per['idle']:.1f} µs, other processes {max(other, 0):.1f} µs; "
        f"core 1 {idle1:.0%} idle",
        flush=True,
    )
    if shutil.which("strace"):
        log = out / f"{target.key}-strace.txt"
        strace = subprocess.Popen(
            ["strace", "-c", "-f", "-p", pid, "-o", str(log)], stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)
        traced = parse_output(_wrk(target, seconds).stdout)
        strace.send_signal(signal.SIGINT)
        strace.wait(30)
        calls = parse_strace(log.read_text())
        listed = ", ".join(
            f"{name} {count / traced.requests:.2f}"
            for name, count in sorted(calls.items(), key=lambda kv: -kv[1])
            if count / traced.requests >= 0.01
        )
        print(f"  system calls per request: {listed}", flush=True)
    if shutil.which("perf"):
        data = out / f"{target.key}.perf"
        record = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-p", pid, "-o", str(data)]
        perf = subprocess.Popen(
            [*record, "--", "sleep", str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wrk(target, seconds)
        perf.wait(seconds + 30)

        def report(*args: str) -> str:
            argv = ["perf", "report", "-i", str(data), "--stdio", "--no-children", *args]
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

        shares = parse_perf_shares(report("--sort", "dso", "-g", "none"))
        wake = report("--sort", "sym", "-S", "_raw_spin_unlock_irqrestore", "-g", "caller,0.5,callee")
        woken = sum(float(m) for m in re.findall(r"--([\d.]+)%--sock_def_readable", wake))
        listed = ", ".join(f"{dso} {pct * cpu / 100:.1f} µs" for dso, pct in shares.items() if pct >= 0.5)
        print(f"  perf, of {cpu:.1f} µs: {listed}; waking the reader {woken * cpu / 100:.1f} µs", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="floor,engine,bastion-cache-rs256", help="row key prefixes")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    install.ensure_debian_tools()
    rows = tuple(prefix.strip() for prefix in args.rows.split(",") if prefix.strip())
    run_dir = install.WORK_DIR / f"account-{time.strftime('%Y%m%d-%H%M%S')}"
    options = gateway_suite.GatewayOptions(tls=False, rate_limits=False, rows=rows)
    with contextlib.ExitStack() as stack:
        _, targets = gateway_suite.prepare(run_dir, options, stack, print)
        for target in targets:
            if target.service is not None:
                account(target, args.seconds, run_dir)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())

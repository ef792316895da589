"""``make bench``: Bastion side by side with real peers, on this machine, in one run.

Usage::

    .venv/bin/python bench/run.py [token|gateway|all] [--quick] [--workers N] [--soak SECONDS]

Suites:

* ``token``: client_credentials grants/s at the token endpoint, panva's oidc-provider 9 vs
  ``bastion serve`` (one worker each), ES256 and RS256; then introspections/s with 2 workers.
* ``gateway``: req/s through nginx (plain proxy), HAProxy 2.6 ``jwt_verify`` and Bastion's
  gateway (cache on / cache off), RS256 and ES256, plus a TLS-termination row; and the cache-hit
  route with rate limits (in-process, SQLite file, Redis) beside the same route without one.

The server under test runs alone on core 0; wrk and every upstream/helper on core 1. Each row is
the median of interleaved rounds (default 3 × 10 s, each after a 2 s warm-up; ``--quick``: 3 × 3 s
after 1 s). Tables go to stdout and ``bench/.work/results-<timestamp>.json``. Missing tools are
installed on first use (``apt-get`` for wrk/haproxy/nginx, ``npm`` for oidc-provider).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import gateway_suite
import install
import peers
import report
import soak
import token_suite
from rounds import Timing
from rounds import run_rounds

WORK = install.WORK_DIR


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", choices=("token", "gateway", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="3 s rounds after a 1 s warm-up")
    parser.add_argument("--rounds", type=int, help="rounds per row (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per round (default 10, --quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds before each round (default 2, --quick 1)"
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.25,
        help="re-measure a round when other processes took more than this share of core 0 (default 0.25)",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-measurements per round (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="Bastion gateway workers (default 1)")
    parser.add_argument(
        "--tokens", type=int, default=1000, help="distinct tokens per algorithm (default 1000)"
    )
    parser.add_argument("--no-tls", action="store_true", help="skip the TLS-termination rows")
    parser.add_argument("--no-bastion", action="store_true", help="measure the peers only")
    parser.add_argument("--no-rate-limits", action="store_true", help="skip the gateway's rate-limit rows")
    parser.add_argument(
        "--rows",
        metavar="PREFIX[,PREFIX…]",
        help="measure only the rows whose key starts with one of these, e.g. "
        "bastion-rl,bastion-cache-rs256 (the rate-limit rows and their SQLite baseline)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        help="instead of the suites: load Bastion's gateway for SECONDS and record its RSS over time",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, profile each Bastion row with py-spy for one more round",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def timing_from(args: argparse.Namespace) -> Timing:
    """Rounds and durations from ``--quick`` and the explicit overrides."""
    base = Timing(rounds=3, seconds=3.0, warmup=1.0) if args.quick else Timing()
    return Timing(
        rounds=args.rounds if args.rounds is not None else base.rounds,
        seconds=args.seconds if args.seconds is not None else base.seconds,
        warmup=args.warmup if args.warmup is not None else base.warmup,
        max_other_load=args.max_other_load,
        retries=args.retries,
    )


def log(message: str) -> None:
    """A progress line."""
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen suites and print and save the results."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install.ensure_debian_tools()
    WORK.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = WORK / f"run-{stamp}"
    if args.soak is not None:
        return soak.run(run_dir, args.soak, workers=args.workers, tokens=args.tokens, log=log)

    timing = timing_from(args)
    suites = ("token", "gateway") if args.suite == "all" else (args.suite,)
    tables: dict[str, report.Table] = {}
    rows = tuple(prefix.strip() for prefix in args.rows.split(",") if prefix.strip()) if args.rows else ()
    plans = []
    with contextlib.ExitStack() as stack:
        if "token" in suites:
            plans.append(
                token_suite.prepare(
                    run_dir, token_suite.TokenOptions(bastion=not args.no_bastion), stack, log
                )
            )
        if "gateway" in suites:
            options = gateway_suite.GatewayOptions(
                workers=args.workers,
                tokens=args.tokens,
                tls=not args.no_tls,
                bastion=not args.no_bastion,
                rows=rows,
                rate_limits=not args.no_rate_limits,
            )
            plans.append(gateway_suite.prepare(run_dir, options, stack, log))
        if rows:
            plans = [(table, [t for t in targets if t.key.startswith(rows)]) for table, targets in plans]
        total = sum(len(targets) for _, targets in plans) * timing.rounds
        log(
            f"measuring {total} rounds: {timing.rounds} x {timing.seconds:g} s per row "
            f"after {timing.warmup:g} s warm-up"
        )
        counter = [0]
        for table, targets in plans:
            run_rounds(targets, timing, label=table.suite, counter=counter, total=total)
            for target in targets:
                table.rows.append(
                    report.Row.from_rounds(
                        target.key,
                        target.name,
                        target.alg,
                        target.results,
                        baseline=target.baseline,
                        note=target.note,
                        other_load=target.foreign_load,
                        server_cpu=target.server_cpu,
                    )
                )
            for target in targets:
                note = target.check() if target.check is not None else None
                if note:
                    table.notes.append(note)
            tables[table.suite] = table
        profiles = {}
        if args.profile:
            import profiling

            for _table, targets in plans:
                profiles.update(profiling.profile_targets(targets, timing, run_dir / "profiles", log))

    goals = [
        goal.check(tables) for goal in (*token_suite.GOALS, *gateway_suite.GOALS) if goal.suite in tables
    ]
    print()
    for table in tables.values():
        print(table.render())
        print()
    print("### Goals")
    print()
    for result in goals:
        print(f"- {result.render()}")
    out = WORK / f"results-{stamp}.json"
    report.save(
        out,
        tables,
        goals,
        {
            "argv": sys.argv[1:] if argv is None else argv,
            "timing": {"rounds": timing.rounds, "seconds": timing.seconds, "warmup": timing.warmup},
            "versions": {**peers.versions(), **_oidc_version()},
            "profiles": profiles,
        },
    )
    print(f"\nresults saved to {out}")
    return 0


def _oidc_version() -> dict[str, str]:
    package = install.OIDC_WORK / "node_modules" / "oidc-provider" / "package.json"
    if not package.exists():
        return {}
    import json

    return {"oidc-provider": json.loads(package.read_text())["version"]}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

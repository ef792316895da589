"""Results tables, goals and the JSON record of a run.

A suite produces a :class:`Table` of :class:`Row` s, one per configuration, each the median of its
interleaved rounds. A row may name a baseline row (``HAProxy RS256``, ``oidc-provider ES256``);
its ratio is its req/s over the baseline's. :class:`Goal` s are checked against the tables and
printed met / not met with the distance to the target.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Literal

from wrk import WrkResult


@dataclass(frozen=True, slots=True)
class Row:
    """One configuration's medians over its rounds."""

    key: str
    name: str
    alg: str | None
    rps: float
    p50_ms: float
    p99_ms: float
    #: Socket errors plus non-2xx/3xx responses, summed over all rounds.
    errors: int
    rounds_rps: tuple[float, ...]
    #: Key of the row this one is compared with, if any.
    baseline: str | None = None
    note: str = ""
    #: Largest share over the rounds of the server core's time taken by other work
    #: (see ``rounds.CoreAccount``); ``None`` when not measured.
    other_load: float | None = None
    #: Median over the rounds of the share of its core the server under test used.
    server_cpu: float | None = None

    @classmethod
    def from_rounds(
        cls,
        key: str,
        name: str,
        alg: str | None,
        rounds: Sequence[WrkResult],
        *,
        baseline: str | None = None,
        note: str = "",
        other_load: Sequence[float] = (),
        server_cpu: Sequence[float] = (),
    ) -> Row:
        """Medians of req/s, p50 and p99 over ``rounds`` (each taken separately)."""
        if not rounds:
            raise ValueError(f"row {key} has no rounds")
        return cls(
            key=key,
            name=name,
            alg=alg,
            rps=statistics.median(r.rps for r in rounds),
            p50_ms=statistics.median(r.p50_ms for r in rounds),
            p99_ms=statistics.median(r.p99_ms for r in rounds),
            errors=sum(r.errors for r in rounds),
            rounds_rps=tuple(round(r.rps, 1) for r in rounds),
            baseline=baseline,
            note=note,
            other_load=max(other_load) if other_load else None,
            server_cpu=statistics.median(server_cpu) if server_cpu else None,
        )


@dataclass(slots=True)
class Table:
    """The rows of one suite, in display order."""

    suite: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def get(self, key: str) -> Row | None:
        """The row with ``key``, if measured."""
        return next((row for row in self.rows if row.key == key), None)

    def ratio(self, row: Row) -> float | None:
        """``row``'s req/s over its baseline's, if both exist."""
        if row.baseline is None:
            return None
        base = self.get(row.baseline)
        if base is None or base.rps <= 0:
            return None
        return row.rps / base.rps

    def render(self) -> str:
        """A plain-text table (also valid Markdown)."""
        header = (
            "configuration",
            "alg",
            "req/s",
            "p50 ms",
            "p99 ms",
            "ratio",
            "vs",
            "errors",
            "server CPU",
            "other load",
        )
        lines = [
            [
                row.name,
                row.alg or "-",
                f"{row.rps:,.0f}",
                f"{row.p50_ms:.2f}",
                f"{row.p99_ms:.2f}",
                "-" if (ratio := self.ratio(row)) is None else f"{ratio:.2f}x",
                "-" if row.baseline is None else self._name(row.baseline),
                str(row.errors),
                "-" if row.server_cpu is None else f"{row.server_cpu:.0%}",
                "-" if row.other_load is None else f"{row.other_load:.0%}",
            ]
            for row in self.rows
        ]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        right = {2, 3, 4, 5, 7, 8, 9}

        def fmt(cells: Sequence[str]) -> str:
            padded = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "| " + " | ".join(padded) + " |"

        sep = (
            "|"
            + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths))
            + "|"
        )
        out = [f"### {self.title}", "", fmt(header), sep, *(fmt(line) for line in lines)]
        if self.notes:
            out += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(out)

    def _name(self, key: str) -> str:
        row = self.get(key)
        if row is None:
            return key
        return f"{row.name} {row.alg}" if row.alg else row.name


@dataclass(frozen=True, slots=True)
class Goal:
    """A target from the issue, checked against a table.

    ``kind`` ``"ratio"``: the row's req/s is at least ``target`` times the baseline's;
    ``"paired"``: the same, as the median over the rounds of the row's req/s over the
    baseline's in the same round (robust to a round that other work slowed down); ``"rps"``: at
    least ``target`` req/s; ``"p99"``: the row's p99 is at most ``target`` times the baseline's.
    """

    text: str
    suite: str
    row: str
    kind: Literal["ratio", "paired", "rps", "p99"]
    target: float
    baseline: str | None = None

    def check(self, tables: dict[str, Table]) -> GoalResult:
        """Met, not met, or not measured, with the measured value."""
        table = tables.get(self.suite)
        row = table.get(self.row) if table else None
        base = table.get(self.baseline) if table and self.baseline else None
        if row is None:
            return GoalResult(self, None, None, "not measured")
        if self.kind == "rps":
            value = row.rps
            met = value >= self.target
            detail = f"{value:,.0f}/s ({value / self.target:.0%} of {self.target:,.0f})"
            return GoalResult(self, value, met, detail)
        if base is None:
            return GoalResult(self, None, None, "baseline not measured")
        if self.kind in ("ratio", "paired"):
            if self.kind == "paired":
                pairs = [
                    mine / theirs
                    for mine, theirs in zip(row.rounds_rps, base.rounds_rps, strict=False)
                    if theirs > 0
                ]
                value = statistics.median(pairs) if pairs else 0.0
            else:
                value = row.rps / base.rps
            met = value >= self.target
            detail = f"{value:.2f}x (target {self.target:.2f}x, {value / self.target:.0%} of it)"
            if self.kind == "paired":
                detail += "; median of per-round ratios " + ", ".join(f"{v:.2f}" for v in pairs)
        else:
            value = row.p99_ms / base.p99_ms
            met = value <= self.target
            detail = f"p99 {row.p99_ms:.2f} ms vs {base.p99_ms:.2f} ms ({value:.2f}x)"
        return GoalResult(self, value, met, detail)


@dataclass(frozen=True, slots=True)
class GoalResult:
    """The outcome of :meth:`Goal.check`; ``met`` is ``None`` when a row was not measured."""

    goal: Goal
    value: float | None
    met: bool | None
    detail: str

    def render(self) -> str:
        """One line: ``[met] text: detail``."""
        status = {True: "met", False: "NOT MET", None: "n/a"}[self.met]
        return f"[{status:>7}] {self.goal.text}: {self.detail}"


def environment() -> dict[str, Any]:
    """What machine and versions the numbers come from."""
    return {
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": _cpu_model(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def save(
    path: Path,
    tables: dict[str, Table],
    goals: Sequence[GoalResult],
    meta: dict[str, Any],
) -> None:
    """Write the run as JSON: environment, options, versions, rows with ratios, goals."""
    payload = {
        **meta,
        "environment": environment(),
        "suites": {
            name: {
                "title": table.title,
                "notes": table.notes,
                "rows": [{**asdict(row), "ratio": table.ratio(row)} for row in table.rows],
            }
            for name, table in tables.items()
        },
        "goals": [{"goal": r.goal.text, "met": r.met, "value": r.value, "detail": r.detail} for r in goals],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def load(path: Path) -> tuple[dict[str, Table], list[dict[str, Any]], dict[str, Any]]:
    """Tables, goals and the whole payload of a saved results file."""
    data = json.loads(path.read_text())
    tables: dict[str, Table] = {}
    for name, suite in data["suites"].items():
        table = Table(name, suite["title"], notes=list(suite["notes"]))
        for raw in suite["rows"]:
            fields = {k: v for k, v in raw.items() if k != "ratio"}
            fields["rounds_rps"] = tuple(fields["rounds_rps"])
            table.rows.append(Row(**fields))
        tables[name] = table
    return tables, data["goals"], data


def render_markdown(path: Path) -> str:
    """A saved run as Markdown: its tables, then its goals (for ``docs/performance.md``)."""
    tables, goals, data = load(path)
    out = [table.render() + "\n" for table in tables.values()]
    out.append("### Goals\n")
    out.append("| goal | result | measured |")
    out.append("|---|---|---|")
    for goal in goals:
        status = {True: "met", False: "**not met**", None: "not measured"}[goal["met"]]
        out.append(f"| {goal['goal']} | {status} | {goal['detail']} |")
    timing = data.get("timing", {})
    out.append(
        f"\n{timing.get('rounds')} rounds x {timing.get('seconds')} s per row after {timing.get('warmup')} s "
        f"warm-up; {data['environment']['cpus']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
    )
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(render_markdown(Path(sys.argv[1])))

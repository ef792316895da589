"""wrk output parsing, row medians, ratios, goals and the rendered table."""

from __future__ import annotations

import json

import pytest
from report import Goal
from report import Row
from report import Table
from wrk import WrkError
from wrk import WrkResult
from wrk import parse_output
from wrk import wrk_command

LINE = (
    'BENCH_RESULT {"requests":30000,"duration_us":3000000,"bytes":1,"connect":0,"read":2,'
    '"write":0,"status":5,"timeout":1,"p50_us":1500,"p90_us":2000,"p99_us":4250,"max_us":9000,'
    '"mean_us":1600.0}'
)


def result(rps: float, p50: float = 1.0, p99: float = 2.0, errors: int = 0) -> WrkResult:
    return WrkResult(int(rps * 10), 10.0, p50, p50, p99, p99, errors, 0)


def test_parse_output_reads_the_result_line_among_others() -> None:
    parsed = parse_output(f"Running 3s test @ http://x\n{LINE}\n")
    assert parsed.rps == 10_000
    assert (parsed.p50_ms, parsed.p99_ms) == (1.5, 4.25)
    assert parsed.errors == 2 + 5 + 1
    assert parsed.bad_status == 5


def test_parse_output_without_result_line_is_an_error() -> None:
    with pytest.raises(WrkError):
        parse_output("Running 3s test\n  Socket errors: connect 64\n")


def test_wrk_command_pins_and_passes_script_arguments() -> None:
    argv = wrk_command("http://127.0.0.1:1/", "post_form.lua", ("a=b", "Zm9v"), seconds=2.6, cores="1")
    assert argv[:3] == ["taskset", "-c", "1"]
    assert "-d3s" in argv
    assert "-t1" in argv
    assert "-c64" in argv
    assert argv[-3:] == ["--", "a=b", "Zm9v"]
    assert wrk_command("http://x/", "get.lua", seconds=1, cores=None)[0] == "wrk"


def test_row_takes_the_median_of_each_metric_separately() -> None:
    row = Row.from_rounds("k", "name", "RS256", [result(100, 1, 9), result(300, 3, 1), result(200, 2, 5, 4)])
    assert (row.rps, row.p50_ms, row.p99_ms, row.errors) == (200, 2, 5, 4)
    assert row.rounds_rps == (100.0, 300.0, 200.0)
    with pytest.raises(ValueError, match="no rounds"):
        Row.from_rounds("k", "name", None, [])


def make_table() -> Table:
    table = Table("gateway", "Gateway")
    table.rows.append(Row.from_rounds("haproxy-rs256", "HAProxy", "RS256", [result(1000, p99=4.0)]))
    table.rows.append(
        Row.from_rounds("bastion", "Bastion", "RS256", [result(1800, p99=5.0)], baseline="haproxy-rs256")
    )
    return table


def test_ratio_and_rendering() -> None:
    table = make_table()
    assert table.ratio(table.rows[1]) == pytest.approx(1.8)
    assert table.ratio(table.rows[0]) is None
    text = table.render()
    assert "| Bastion " in text
    assert "1.80x" in text
    assert "HAProxy RS256" in text
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len({len(line) for line in lines}) == 1  # columns aligned


def test_goals_met_not_met_and_not_measured() -> None:
    tables = {"gateway": make_table()}
    met = Goal("x", "gateway", "bastion", "ratio", 1.5, "haproxy-rs256").check(tables)
    assert met.met is True
    assert "1.80x" in met.detail
    missed = Goal("x", "gateway", "bastion", "ratio", 2.0, "haproxy-rs256").check(tables)
    assert missed.met is False
    assert "90%" in missed.detail
    p99 = Goal("x", "gateway", "bastion", "p99", 1.0, "haproxy-rs256").check(tables)
    assert p99.met is False
    rps = Goal("x", "gateway", "bastion", "rps", 1000.0).check(tables)
    assert rps.met is True
    absent = Goal("x", "gateway", "nope", "rps", 1.0).check(tables)
    assert absent.met is None
    assert "n/a" in absent.render()
    assert Goal("x", "token", "bastion", "rps", 1.0).check(tables).met is None


def test_paired_goal_takes_the_median_of_the_ratios_round_by_round() -> None:
    table = Table("gateway", "Gateway")
    # round by round the row is 0.90, 0.95 and 1.50 of its baseline: the median pair is 0.95x,
    # where the medians of each row alone say 0.90x
    table.rows.append(Row.from_rounds("base", "B", None, [result(1000), result(400), result(1000)]))
    table.rows.append(
        Row.from_rounds("row", "R", None, [result(900), result(380), result(1500)], baseline="base")
    )
    tables = {"gateway": table}
    paired = Goal("x", "gateway", "row", "paired", 0.95, "base").check(tables)
    assert paired.value == pytest.approx(0.95)
    assert paired.met is True
    assert "0.90, 0.95, 1.50" in paired.detail
    assert Goal("x", "gateway", "row", "ratio", 0.95, "base").check(tables).value == pytest.approx(0.9)
    assert Goal("x", "gateway", "row", "paired", 0.96, "base").check(tables).met is False


def test_save_writes_rows_ratios_and_goals(tmp_path) -> None:
    from report import save

    tables = {"gateway": make_table()}
    goal = Goal("x", "gateway", "bastion", "ratio", 1.5, "haproxy-rs256").check(tables)
    out = tmp_path / "r.json"
    save(out, tables, [goal], {"argv": ["--quick"]})
    data = json.loads(out.read_text())
    assert data["argv"] == ["--quick"]
    assert data["suites"]["gateway"]["rows"][1]["ratio"] == pytest.approx(1.8)
    assert data["goals"][0]["met"] is True
    assert "cpus" in data["environment"]

"""The SQLite-file backend (the embedded default): the pure algorithm's decisions, and exact
across processes sharing the file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bastion.ratelimit import LimiterUnavailable
from bastion.ratelimit import Refusal
from bastion.ratelimit.gcra import MICROS
from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.local import LocalLimiter
from bastion.ratelimit.sqlite import SQLiteLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.builds(Rate, st.integers(1, 20), st.sampled_from([0.01, 1.0, 60.0]), st.integers(0, 5)),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.tuples(st.integers(0, 200_000), st.sampled_from(["a", "b"])), max_size=60),
)
def test_decides_as_the_local_reference(
    tmp_path: Path, rates: list[Rate], steps: list[tuple[int, str]]
) -> None:
    clock = Clock()
    path = tmp_path / f"state-{uuid.uuid4().hex}.db"
    shared_limiter = SQLiteLimiter(path, clock=clock)
    local_limiter = LocalLimiter(clock)
    shared = shared_limiter.bind("ns", rates)
    local = local_limiter.bind("ns", rates)
    for advance, value in steps:
        clock.now += advance / MICROS
        assert shared.decide(value) == local.decide(value)
    # both count what they admitted, and only that
    assert shared_limiter.admitted == local_limiter.admitted


def test_two_connections_share_the_buckets(tmp_path: Path) -> None:
    one = SQLiteLimiter(tmp_path / "state.db").bind("r", [Rate(5, 3600.0)])
    two = SQLiteLimiter(tmp_path / "state.db").bind("r", [Rate(5, 3600.0)])
    verdicts = [bound.decide("x") for bound in [one, two] * 6]
    assert verdicts.count(None) == 5
    assert all(isinstance(v, Refusal) for v in verdicts[5:])


_WORKER = """
import sys
from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.sqlite import SQLiteLimiter
bound = SQLiteLimiter(sys.argv[1], timeout=5).bind("r", [Rate(300, 3600.0)])
print(sum(bound.decide("client") is None for _ in range(400)))
"""


def test_processes_deciding_at_once_admit_exactly_the_limit(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    SQLiteLimiter(path)  # create the file before the race
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, path], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    admitted = [int(proc.communicate(timeout=60)[0]) for proc in procs]
    assert sum(admitted) == 300


def test_a_file_that_fails_mid_run_makes_decisions_unavailable(tmp_path: Path) -> None:
    """Locked by another process past the timeout, or its table gone: ``LimiterUnavailable``
    (the policy's ``on_error`` then decides), never an admission or a bare sqlite3 error."""
    path = tmp_path / "state.db"
    limiter = SQLiteLimiter(path, timeout=0.05)
    single = limiter.bind("r", [Rate(5, 3600.0)])
    group = limiter.bind("g", [Rate(5, 3600.0), Rate(50, 86400.0)])
    assert single.decide("x") is None
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(LimiterUnavailable):
        single.decide("x")
    with pytest.raises(LimiterUnavailable):
        group.decide("x")
    other.execute("DROP TABLE ratelimit")
    other.execute("COMMIT")
    other.close()
    with pytest.raises(LimiterUnavailable):
        single.decide("x")
    assert limiter.admitted == 1

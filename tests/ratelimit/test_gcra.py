"""GCRA, pure: the promise over any window, the steady rate, bursts, and the local backend."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bastion.ratelimit.gcra import MICROS
from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.gcra import Refusal
from bastion.ratelimit.gcra import decide_all
from bastion.ratelimit.gcra import remaining
from bastion.ratelimit.local import LocalLimiter


def run(rate: Rate, arrivals: list[int]) -> list[int]:
    """The arrival times (µs) admitted, deciding each in order from a fresh bucket."""
    tat = 0
    admitted = []
    for now in arrivals:
        refusal, tats = decide_all([tat], now, [rate])
        if refusal is None:
            tat = tats[0]
            admitted.append(now)
    return admitted


rates = st.builds(
    Rate,
    requests=st.integers(1, 50),
    period=st.sampled_from([0.001, 0.01, 0.3, 1.0, 7.0]),
    burst=st.integers(0, 20),
)
arrivals = st.lists(st.integers(0, 3 * MICROS), max_size=300).map(sorted)


@settings(max_examples=300, deadline=None)
@given(rates, arrivals)
def test_never_more_than_burst_plus_rate_times_t_in_any_window(rate: Rate, times: list[int]) -> None:
    admitted = run(rate, times)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            # j - i + 1 requests admitted within a window of ``window`` µs
            assert (j - i + 1) <= rate.burst + window / rate.interval


@settings(max_examples=200, deadline=None)
@given(rates, st.integers(0, 10 * MICROS), st.integers(1, 200))
def test_a_client_at_the_rate_is_never_refused(rate: Rate, start: int, count: int) -> None:
    times = [start + k * rate.interval for k in range(count)]
    assert run(rate, times) == times


@given(rates, st.integers(0, 10 * MICROS))
def test_a_full_burst_at_once_then_refused_until_the_interval(rate: Rate, now: int) -> None:
    admitted = run(rate, [now] * (rate.burst + 1))
    assert len(admitted) == rate.burst
    tat = now + rate.burst * rate.interval
    refusal, _ = decide_all([tat], now, [rate])
    assert refusal == Refusal(0, rate.interval)
    assert decide_all([tat], now + rate.interval, [rate])[0] is None


def test_rates_default_their_burst_and_round_the_interval_up() -> None:
    rate = Rate(3, 1.0)
    assert rate.burst == 3
    assert rate.interval == 333_334  # 3 × 333_334 µs > 1 s: rounding never admits more
    assert Rate(10, 1.0, burst=1).tolerance == 0
    with pytest.raises(ValueError, match="requests >= 1"):
        Rate(0, 1.0)


def test_a_group_counts_all_or_nothing_and_names_the_longest_wait() -> None:
    fast, slow = Rate(10, 1.0), Rate(2, 60.0)
    now = 5 * MICROS
    refusal, tats = decide_all([0, 0], now, [fast, slow])
    assert refusal is None
    # slow is spent after 2 requests; fast is not: the refusal names slow, nothing is stored.
    refusal, tats = decide_all([now + fast.interval, now + 2 * slow.interval], now, [fast, slow])
    assert refusal == Refusal(1, 2 * slow.interval - slow.tolerance)
    assert tats == []


def test_remaining_counts_what_would_still_conform() -> None:
    rate = Rate(5, 1.0)
    now = MICROS
    assert remaining(0, now, rate) == 5
    assert remaining(now + rate.interval, now, rate) == 4
    assert remaining(now + 5 * rate.interval, now, rate) == 0
    assert Refusal(0, 1).retry_after == 1
    assert Refusal(0, 2 * MICROS + 1).retry_after == 3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=100, deadline=None)
@given(rates, arrivals)
def test_the_local_limiter_decides_as_the_pure_algorithm(rate: Rate, times: list[int]) -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    bound = limiter.bind("route", [rate])
    admitted = []
    for now in times:
        clock.now = 1000.0 + now / MICROS
        if bound.decide("a") is None:
            admitted.append(now)
    # the same decisions, up to float rounding of the injected clock (±1 µs per arrival)
    expected = run(rate, [int(1000 * MICROS + t) for t in times])
    assert abs(len(admitted) - len(expected)) <= max(1, len(times) // 50)


def test_local_buckets_are_separate_shared_by_rebinding_and_swept() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    rate = Rate(2, 1.0)
    bound = limiter.bind("r", [rate])
    assert [bound.decide("a"), bound.decide("a")] == [None, None]
    assert isinstance(bound.decide("a"), Refusal)
    assert bound.decide("b") is None
    # a reload binds again: the buckets are the same ones
    again = limiter.bind("r", [rate])
    assert isinstance(again.decide("a"), Refusal)
    # two rates: all or nothing
    pair = limiter.bind("p", [Rate(10, 1.0), Rate(1, 60.0)])
    assert pair.decide("x") is None
    refused = pair.decide("x")
    assert isinstance(refused, Refusal)
    assert refused.index == 1
    assert len(limiter) == 4
    clock.now += 120
    limiter.sweep()
    assert len(limiter) == 0

"""The Redis backend against a real Redis: exact under concurrency, batched, hash-tagged, and
failing with ``LimiterUnavailable`` (never a wrong answer) when Redis goes away."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bastion.ratelimit import LimiterUnavailable
from bastion.ratelimit import Refusal
from bastion.ratelimit.gcra import Rate
from bastion.ratelimit.redis import RedisLimiter
from tests.private_redis import PrivateRedis

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[tuple[RedisLimiter, str, aioredis.Redis]]:
    prefix = f"test:{secrets.token_hex(6)}:"
    limiter = RedisLimiter(redis_url, prefix=prefix, timeout=2.0)
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield limiter, prefix, client
    finally:
        await limiter.close()
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_concurrent_decisions_admit_exactly_the_burst_in_few_round_trips(
    shared: tuple[RedisLimiter, str, aioredis.Redis],
) -> None:
    limiter, _, _ = shared
    bound = limiter.bind("route|ip|", [Rate(50, 60.0)])
    verdicts = await asyncio.gather(*(bound.decide("198.51.100.7") for _ in range(300)))
    assert verdicts.count(None) == 50
    assert limiter.admitted == 50
    refusals = [v for v in verdicts if v is not None]
    assert len(refusals) == 250
    # one event-loop turn asked for all 300: one pipeline carried them
    assert limiter.batches == 1
    # the next one is due one interval (1.2 s) after the 50th, measured on Redis's clock
    assert all(0 < r.wait <= 1_200_000 for r in refusals)


async def test_two_limiters_share_the_buckets_exactly(
    shared: tuple[RedisLimiter, str, aioredis.Redis], redis_url: str
) -> None:
    limiter, prefix, _ = shared
    other = RedisLimiter(redis_url, prefix=prefix, timeout=2.0)
    try:
        a = limiter.bind("r|client|", [Rate(40, 60.0)])
        b = other.bind("r|client|", [Rate(40, 60.0)])
        verdicts = await asyncio.gather(*(bound.decide("shop") for bound in [a, b] * 100))
    finally:
        await other.close()
    assert verdicts.count(None) == 40


async def test_a_group_is_all_or_nothing_and_keys_share_a_hash_tag(
    shared: tuple[RedisLimiter, str, aioredis.Redis],
) -> None:
    limiter, prefix, client = shared
    bound = limiter.bind("r|ip|", [Rate(5, 3600.0), Rate(3, 3600.0)])
    verdicts = [await bound.decide("a}{b") for _ in range(5)]
    assert verdicts[:3] == [None, None, None]
    assert all(isinstance(v, Refusal) and v.index == 1 for v in verdicts[3:])
    keys = sorted([key.decode() async for key in client.scan_iter(match=prefix + "*")])
    assert len(keys) == 2
    pattern = re.escape(prefix) + r"rl:\{([0-9a-f]{24})\}:\d+:[0-9/]+"
    tags = {match.group(1) for key in keys if (match := re.fullmatch(pattern, key))}
    assert len(tags) == 1  # one slot: the script may touch both in a Redis Cluster
    # The first rate's bucket (the same key when bound alone) was charged for the 3 admitted
    # requests only, not the 2 the second rate refused: 2 of its 5 are left.
    alone = limiter.bind("r|ip|", [Rate(5, 3600.0)])
    assert [await alone.decide("a}{b") for _ in range(2)] == [None, None]
    assert isinstance(await alone.decide("a}{b"), Refusal)


async def test_one_turn_decides_each_bucket_in_order_in_one_call(
    shared: tuple[RedisLimiter, str, aioredis.Redis],
) -> None:
    limiter, _, _ = shared
    bound = limiter.bind("r|client|", [Rate(5, 3600.0), Rate(3, 3600.0)])
    values = ["a", "b"] * 2 + ["a"] * 8
    verdicts = await asyncio.gather(*(bound.decide(value) for value in values))
    by_value = {value: [v for v, w in zip(verdicts, values, strict=True) if w == value] for value in "ab"}
    # as if decided one after the other: the first three of each bucket admitted (the tighter
    # rate), every later one refused by that rate, with a wait of at most one interval
    assert by_value["a"][:3] == [None] * 3
    assert by_value["b"] == [None, None]
    refusals = by_value["a"][3:]
    assert len(refusals) == 7
    assert all(isinstance(r, Refusal) and r.index == 1 and 0 < r.wait <= 1_200_000_000 for r in refusals)
    # (3600 s / 3 requests = 1,200 s between two requests of the tighter rate)
    assert limiter.admitted == 5
    assert limiter.batches == 1
    # and the buckets hold what was admitted: one more for "b", none for "a"
    assert await bound.decide("b") is None
    assert isinstance(await bound.decide("b"), Refusal)
    assert isinstance(await bound.decide("a"), Refusal)


async def test_redis_down_is_unavailable_then_recovers_with_the_script_reloaded(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    limiter = RedisLimiter(server.url, timeout=0.5)
    try:
        bound = limiter.bind("r|route|", [Rate(2, 60.0)])
        assert await bound.decide("") is None
        server.kill()
        results = await asyncio.gather(*(bound.decide("") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, LimiterUnavailable) for r in results)
        server.start()  # empty: no script, no buckets
        assert await bound.decide("") is None
        assert await bound.decide("") is None
        assert isinstance(await bound.decide(""), Refusal)
    finally:
        await limiter.close()
        server.kill()


#: Keeps a Redis server busy for 300 ms (a slow command, a fork, a busy neighbour).
_BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start > 300000 then return 1 end
end
"""


async def test_a_slow_redis_queues_decisions_for_the_next_batch_instead_of_failing(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    limiter = RedisLimiter(server.url, timeout=3.0, pool_size=2)
    blocker = aioredis.Redis.from_url(server.url)
    try:
        bound = limiter.bind("r|ip|", [Rate(1000, 60.0)])
        assert await bound.decide("198.51.100.7") is None  # connected, script loaded
        busy = asyncio.ensure_future(blocker.eval(_BUSY, 0))
        await asyncio.sleep(0.05)
        pending = []
        for _ in range(8):
            pending.append(bound.decide("198.51.100.7"))
            await asyncio.sleep(0)  # a loop turn each: eight batches, more than the two connections
        verdicts = await asyncio.gather(*pending, return_exceptions=True)
        assert await busy == 1
    finally:
        await limiter.close()
        await blocker.aclose()
        server.kill()
    # Redis was slow, not down: every decision is made, none fails closed for want of a
    # connection; what waited for one went out together once a batch came back.
    assert verdicts == [None] * 8
    assert limiter.admitted == 9
    assert limiter.batches <= 4

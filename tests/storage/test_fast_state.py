"""One conformance suite for every fast-state backend: memory, SQLite file, Redis."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.storage.fast.sqlite import SQLiteState
from bastion.storage.open import open_state
from bastion.storage.protocols import FastState
from bastion.storage.protocols import StorageError

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastState]:
    if request.param == "memory":
        store = open_state("memory://")
    elif request.param == "sqlite":
        store = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        from bastion.storage.fast.redis import RedisState

        url = request.getfixturevalue("redis_url")
        store = RedisState(url, prefix=f"test:{secrets.token_hex(4)}:")
    yield store
    await store.close()


async def test_set_get_delete(state: FastState) -> None:
    assert await state.get("k") is None
    await state.set("k", b"v1", 10)
    assert await state.get("k") == b"v1"
    await state.set("k", b"v2", 10)
    assert await state.get("k") == b"v2"
    await state.delete("k")
    assert await state.get("k") is None


async def test_values_expire(state: FastState) -> None:
    await state.set("short", b"x", 0.05)
    await asyncio.sleep(0.12)
    assert await state.get("short") is None
    assert await state.consume("short") is None
    assert await state.ttl("short") is None


async def test_add_only_when_absent(state: FastState) -> None:
    assert await state.add("jti", b"1", 10)
    assert not await state.add("jti", b"2", 10)
    assert await state.get("jti") == b"1"
    await state.set("gone", b"x", 0.05)
    await asyncio.sleep(0.12)
    assert await state.add("gone", b"y", 10), "an expired key counts as absent"


async def test_consume_is_once_under_concurrency(state: FastState) -> None:
    await state.set("code", b"payload", 10)
    results = await asyncio.gather(*(state.consume("code") for _ in range(20)))
    assert results.count(b"payload") == 1
    assert results.count(None) == 19


async def test_incr_counts_and_keeps_first_expiry(state: FastState) -> None:
    assert await state.incr("c", 10) == 1
    assert await state.incr("c", 1000, amount=4) == 5
    remaining = await state.ttl("c")
    assert remaining is not None
    assert remaining <= 10
    counts = await asyncio.gather(*(state.incr("p", 10) for _ in range(25)))
    assert sorted(counts) == list(range(1, 26))


async def test_incr_restarts_after_expiry(state: FastState) -> None:
    await state.incr("w", 0.05)
    await state.incr("w", 0.05)
    await asyncio.sleep(0.12)
    assert await state.incr("w", 10) == 1


async def test_publish_reaches_subscribers(state: FastState) -> None:
    received: list[bytes] = []
    ready = asyncio.Event()

    async def listen() -> None:
        stream = state.subscribe("feed")
        ready.set()
        async for message in stream:
            received.append(message)
            if len(received) == 2:
                return

    task = asyncio.create_task(listen())
    await ready.wait()
    await asyncio.sleep(0.3)  # the subscription is established (Redis SUBSCRIBE, SQLite high-water mark)
    await state.publish("other", b"no")
    await state.publish("feed", b"one")
    await state.publish("feed", b"two")
    await asyncio.wait_for(task, 5)
    assert received == [b"one", b"two"]


async def test_a_counter_reads_back_as_bytes_and_keeps_counting(state: FastState) -> None:
    # SQLite once wrote the second count as TEXT and get() failed on it: every sign-in after two
    # failures was a 500.
    for expected in (1, 2, 3):
        assert await state.incr("n", 10) == expected
        assert await state.get("n") == str(expected).encode()
    assert await state.incr("n", 10, amount=-5) == -2
    assert await state.get("n") == b"-2"
    await state.set("n", b"40", 10)
    assert await state.incr("n", 10, amount=2) == 42
    assert await state.consume("n") == b"42"


@pytest.mark.parametrize(
    "value",
    [b"x", b"", b"007", b"-0", b"+5", b" 5", b"5 ", b"1.0", b"1\x00", b"9223372036854775808"],
)
async def test_incr_refuses_a_value_that_is_not_a_counter(state: FastState, value: bytes) -> None:
    # Redis's rule (INCRBY: "value is not an integer or out of range"), on every backend.
    await state.set("v", value, 10)
    with pytest.raises(StorageError):
        await state.incr("v", 10)
    assert await state.get("v") == value, "a refused incr changes nothing"


async def test_incr_refuses_to_overflow(state: FastState) -> None:
    await state.set("big", b"9223372036854775807", 10)
    with pytest.raises(StorageError):
        await state.incr("big", 10)
    assert await state.get("big") == b"9223372036854775807"
    await state.set("small", b"-9223372036854775808", 10)
    assert await state.incr("small", 10, amount=0) == -(2**63)
    with pytest.raises(StorageError):
        await state.incr("small", 10, amount=-1)


async def test_sqlite_values_stay_blobs_and_old_text_counters_still_read(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteState(path)
    try:
        for _ in range(3):
            await store.incr("c", 10)
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT typeof(value) FROM kv WHERE key = 'c'").fetchone() == ("blob",)
            # A file written by an older version holds the count as TEXT (or any type at all).
            db.execute("UPDATE kv SET value = '7' WHERE key = 'c'")
            db.execute("INSERT INTO kv VALUES ('i', 12, ?), ('r', 1.5, ?)", (time.time() + 10,) * 2)
        db.close()
        assert await store.get("c") == b"7"
        assert await store.incr("c", 10) == 8
        assert await store.get("i") == b"12"
        assert await store.get("r") == b"1.5"
        assert await store.consume("i") == b"12"
    finally:
        await store.close()

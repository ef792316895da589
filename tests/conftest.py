"""Shared fixtures: the anyio backend and the real services (PostgreSQL, Redis).

Tests that need a service read ``BASTION_TEST_POSTGRES_URL`` / ``BASTION_TEST_REDIS_URL``. Without
them they skip with the reason, unless ``BASTION_REQUIRE_SERVICES=1`` (CI), where a missing
service is a failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import AsyncIterator
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate

REQUIRE_SERVICES = os.environ.get("BASTION_REQUIRE_SERVICES") == "1"

# The admin API listens beside every authorization server, by default on the port after its
# own: a port the tests did not choose, which another test's socket may hold. Servers started by
# tests go without it unless a test gives it a port (tests/e2e/harness.py does).
os.environ.setdefault("BASTION_AUTHORIZATION_SERVER__ADMIN_LISTEN", "")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def service_url(name: str) -> str:
    """The URL of a real service for this test, or skip/fail as the environment says."""
    variable = f"BASTION_TEST_{name.upper()}_URL"
    url = os.environ.get(variable, "")
    if not url:
        message = f"{variable} is not set: this test needs a real {name} server"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (BASTION_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return url


def _postgres(url: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # A loop of its own, in a thread: the fixture may be set up while a test's loop exists.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture
def postgres_schema() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL schema for one test: ``(url, schema)``; dropped afterwards."""
    url = service_url("postgres")
    schema = "t_" + secrets.token_hex(6)
    try:
        _postgres(url, f'CREATE SCHEMA "{schema}"')
    except OSError as exc:
        message = f"PostgreSQL at {url} is unreachable: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield url, schema
    finally:
        _postgres(url, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def redis_url() -> str:
    """The Redis URL for tests (keys are namespaced per test by the callers)."""
    return service_url("redis")


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    """Migrated durable stores on SQLite and on PostgreSQL (a fresh schema per test); beside
    SQLite, the fast state is the embedded default's too (a SQLite file)."""
    if request.param == "sqlite":
        opened = open_stores(f"sqlite:///{tmp_path / 'bastion.db'}", f"sqlite:///{tmp_path / 'state.db'}")
    else:
        url, schema = request.getfixturevalue("postgres_schema")
        opened = open_stores(url, "memory://", schema=schema)
    await migrate(opened.db)
    yield opened
    await opened.close()

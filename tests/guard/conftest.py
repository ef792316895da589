"""Fixtures for the guard tests: a real issuer serving its JWKS on loopback, and a fast-state
store the authorization server would write revocations into."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.storage.open import open_state
from bastion.storage.protocols import FastState
from tests.private_redis import PrivateRedis
from tests.tokens.tokens_helpers import Clock
from tests.tokens.tokens_helpers import Issuer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    server = Issuer(Clock())
    server.add_key("k1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=["sqlite", "memory", "redis"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastState]:
    """The embedded default (a SQLite state file), memory, and a private ``redis-server`` (the
    machine's shared Redis is never used: revocations are announced on a fixed channel)."""
    redis = PrivateRedis(tmp_path) if request.param == "redis" else None
    urls = {"sqlite": f"sqlite:///{tmp_path / 'state.db'}", "memory": "memory://"}
    opened = open_state(redis.url if redis is not None else urls[request.param])
    yield opened
    await opened.close()
    if redis is not None:
        redis.kill()

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.storage.protocols import FastState
from tests.people.support import fast_state

from .harness import AuthServer
from .harness import auth_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AuthServer]:
    """The authorization server on a loopback port, with sign-in."""
    with auth_server(tmp_path / "as") as running:
        yield running


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[FastState]:
    """The BFF's fast-state store: the embedded default (a SQLite file)."""
    store = fast_state("sqlite", tmp_path)
    yield store
    close = getattr(store, "close", None)
    if close is not None:
        await close()


@pytest.fixture(params=["sqlite", "memory", "redis"])
async def any_state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastState]:
    """Each fast-state backend: the embedded default (a SQLite file), memory, Redis."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    store = fast_state(request.param, tmp_path, redis_url)
    yield store
    await store.close()  # type: ignore[attr-defined]

"""Fixtures for the token tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.tokens.tokens_helpers import Attacker
from tests.tokens.tokens_helpers import Clock
from tests.tokens.tokens_helpers import Issuer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def issuer(clock: Clock) -> AsyncIterator[Issuer]:
    server = Issuer(clock)
    server.add_key("k1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def attacker() -> AsyncIterator[Attacker]:
    server = Attacker()
    await server.start()
    yield server
    await server.stop()

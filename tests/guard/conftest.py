"""Fixtures for the guard tests: a real issuer serving its JWKS on loopback, and a fast-state
store the authorization server would write revocations into."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.storage.open import open_state
from bastion.storage.protocols import FastState
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


@pytest.fixture(params=["sqlite", "memory"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FastState]:
    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else "memory://"
    opened = open_state(url)
    yield opened
    await opened.close()

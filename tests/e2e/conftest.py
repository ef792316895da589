"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.private_redis import PrivateRedis


@pytest.fixture(params=["sqlite", "redis"])
def state_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of servers sharing a fast-state store: the embedded default (the data
    dir's state file, shared by the local processes), or a private Redis killed at the end."""
    if request.param == "sqlite":
        yield {}
        return
    (tmp_path / "redis").mkdir()
    redis = PrivateRedis(tmp_path / "redis")
    try:
        yield {"BASTION_STORAGE__STATE_URL": redis.url}
    finally:
        redis.kill()

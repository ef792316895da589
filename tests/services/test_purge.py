"""Expired records are purged by the services' maintenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.ops.audit import AuditLog
from bastion.protocol.models import StoredAccessToken
from bastion.server.people import install_people
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.settings import AuthorizationServerSettings
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate

pytestmark = pytest.mark.anyio


async def test_purge_removes_expired_tokens_and_runs_registered_purgers(tmp_path: Path) -> None:
    stores = open_stores(f"sqlite:///{tmp_path / 'b.db'}", "memory://")
    await migrate(stores.db)
    now = [1000.0]
    services = Services.create(
        AuthorizationServerSettings(),
        stores,
        Sealer(b"k" * 40),
        AuditLog(tmp_path / "a.log"),
        clock=lambda: now[0],
    )
    install_people(services)
    install_people(services)  # idempotent
    assert len(services.purgers) == 2
    for name, expires in (("old", 1100.0), ("live", 5000.0)):
        await stores.tokens.add_access_token(
            StoredAccessToken(
                token_hash=name,
                jti=name,
                client_id="c",
                subject="s",
                scope="",
                audience=("a",),
                issued_at=1000.0,
                expires_at=expires,
            )
        )
    assert await services.purge() == 0
    now[0] = 2000.0
    assert await services.purge() == 1
    assert await stores.tokens.get_access_token("old") is None
    assert await stores.tokens.get_access_token("live") is not None
    await stores.close()

"""Versioned schema migrations (alembic), applied by ``bastion migrate`` and at ``serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from bastion.storage.sql.engine import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(sync_conn: Any, config: Config, revision: str) -> None:
    config.attributes["connection"] = sync_conn
    command.upgrade(config, revision)


def _current(sync_conn: Any) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


async def migrate(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the schema to ``revision``; returns (before, after) revisions."""
    config = _config()
    async with db.engine.connect() as conn:
        before = await conn.run_sync(_current)
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade, config, revision)
    async with db.engine.connect() as conn:
        after = await conn.run_sync(_current)
    return before, after


async def pending(db: Database) -> list[str]:
    """Revisions not yet applied, oldest first."""
    script = ScriptDirectory.from_config(_config())
    async with db.engine.connect() as conn:
        current = await conn.run_sync(_current)
    revisions = [rev.revision for rev in script.walk_revisions("base", "heads")]
    revisions.reverse()
    if current is None:
        return revisions
    return revisions[revisions.index(current) + 1 :]

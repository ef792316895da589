"""The command line: ``bastion serve``, ``demo``, ``clients``, ``users``, ``keys``, ``migrate``.

Its dependencies (and those of the servers it starts) are the ``server`` extra: a service that
installed ``bastion`` only for ``bastion.tokens`` and ``bastion.guard`` has none of them, and
:func:`main` then says which extra to install instead of failing with a traceback.
"""

from __future__ import annotations

import sys
from typing import Final

#: Top-level modules of the ``server`` extra (see pyproject.toml).
SERVER_MODULES: Final = frozenset(
    {
        "aiosqlite",
        "alembic",
        "argon2",
        "click",
        "httptools",
        "jinja2",
        "multipart",
        "prometheus_client",
        "pydantic",
        "python_multipart",
        "sqlalchemy",
        "starlette",
        "uvicorn",
        "uvloop",
    }
)


def main() -> None:
    """The ``bastion`` console script: run the CLI, or explain the missing ``server`` extra."""
    try:
        # Imported here, not at the top: the server extra may be missing. Commands import some
        # of it only when they run, so running is inside the ``try`` too.
        from bastion.cli.main import main as run

        run()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in SERVER_MODULES:
            raise
        print(
            f"bastion: the command line needs the server extra (no module named {missing!r}).\n"
            "Install it with:  pip install 'bastion[server]'\n"
            "(A service that only validates tokens needs no command line: see docs/guard.md.)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None

"""The public surface of ``bastion.guard`` is curated, sorted, and free of web frameworks."""

from __future__ import annotations

import subprocess
import sys

import bastion.guard
import bastion.guard.flask
import bastion.guard.starlette


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions, each alphabetical.
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    for module in (bastion.guard, bastion.guard.flask, bastion.guard.starlette):
        exported = module.__all__
        assert exported == sorted(exported, key=_isort_key), module.__name__
        for name in exported:
            assert getattr(module, name).__module__.startswith(("bastion.guard", "bastion.tokens")), name
    public = {name for name in vars(bastion.guard) if not name.startswith("_")} - {
        "annotations",
        "policy",
        "starlette",
        "flask",
    }
    assert public == set(bastion.guard.__all__)


def test_imports_no_web_framework() -> None:
    code = (
        "import sys, bastion.guard\n"
        "heavy = [m for m in ('starlette', 'fastapi', 'flask', 'sqlalchemy', 'alembic', 'argon2',"
        " 'pydantic', 'jinja2', 'uvicorn') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""

"""The public surface of ``bastion.tokens`` is curated, sorted and light."""

from __future__ import annotations

import subprocess
import sys

import bastion.tokens


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions, each alphabetical.
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    exported = bastion.tokens.__all__
    assert exported == sorted(exported, key=_isort_key)
    assert len(set(exported)) == len(exported)
    public = {name for name in vars(bastion.tokens) if not name.startswith("_")} - {"annotations"}
    assert public == set(exported)
    for name in exported:
        member = getattr(bastion.tokens, name)
        if callable(member) and not isinstance(member, tuple):
            assert member.__module__.startswith("bastion.tokens"), name


def test_imports_without_heavy_dependencies() -> None:
    code = (
        "import sys, bastion.tokens\n"
        "heavy = [m for m in ('starlette', 'sqlalchemy', 'pydantic', 'joserfc', 'jinja2', 'uvicorn')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""

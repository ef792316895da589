"""The complete examples of docs/guard.md build their applications as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette

DOC = Path(__file__).resolve().parents[2] / "docs" / "guard.md"


def examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return [block for block in blocks if "app = " in block]


def test_there_is_an_example_per_framework() -> None:
    assert len(examples()) == 3


@pytest.mark.parametrize(("index", "kind"), [(0, Starlette), (1, FastAPI), (2, Flask)])
def test_the_example_builds(index: int, kind: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "example"}
    exec(compile(examples()[index], f"{DOC}#example{index}", "exec"), namespace)
    try:
        assert isinstance(namespace["app"], kind)
    finally:
        if "guard" in namespace:
            namespace["guard"].close()

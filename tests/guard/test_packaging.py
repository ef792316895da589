"""A service installs ``bastion[starlette,flask]`` and gets the guard without the server.

Builds the wheel, installs it with those extras into a fresh virtualenv (pip resolves the real
dependencies from the index), validates tokens there with the guard on Starlette and Flask, and
checks that SQLAlchemy, alembic, argon2 and the rest of the ``server`` extra were not installed;
the ``bastion`` command then names the extra it needs instead of failing with a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run(*command: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def test_a_service_installs_the_guard_without_the_server(tmp_path: Path) -> None:
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", ROOT)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("bastion-*.whl")
    venv.create(tmp_path / "service", with_pip=True)
    python = tmp_path / "service" / "bin" / "python"
    installed = run(python, "-m", "pip", "install", "-q", f"bastion[starlette,flask] @ {wheel.as_uri()}")
    assert installed.returncode == 0, installed.stderr[-3000:]

    checked = run(python, ROOT / "tests" / "guard" / "service_check.py", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout)
    assert result == {"starlette": [200, 401, 404], "flask": [200, 401, 403], "installed": [], "loaded": []}

    cli = run(tmp_path / "service" / "bin" / "bastion", "serve")
    assert cli.returncode == 1
    assert "pip install 'bastion[server]'" in cli.stderr
    assert "Traceback" not in cli.stderr

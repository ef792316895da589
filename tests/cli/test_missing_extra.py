"""Without the ``server`` extra, the ``bastion`` command names it instead of a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Makes the import of one module fail as if it were not installed, then runs the entry point.
RUN = "import sys; sys.modules[{name!r}] = None; from bastion.cli import main; main()"


@pytest.mark.parametrize("missing", ["click", "sqlalchemy", "pydantic"])
def test_a_missing_server_dependency_names_the_extra(missing: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", RUN.format(name=missing), "config", "check"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert f"no module named {missing!r}" in result.stderr
    assert "pip install 'bastion[server]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_another_missing_module_is_not_blamed_on_the_extra() -> None:
    code = "import sys; sys.modules['bastion.cli.main'] = None; from bastion.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "ModuleNotFoundError" in result.stderr
    assert "bastion[server]" not in result.stderr

"""CLI tests: ``bastion`` through click's ``CliRunner`` on a real SQLite data dir per test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from click.testing import Result

from bastion.cli.main import cli

KEK = "cli-test-" + "k" * 40

#: Variables of the outer environment that would change what the CLI reads.
_CLEARED = ("BASTION_CONFIG", "BASTION_DATA_DIR", "BASTION_KEK_FILE")

Invoke = Callable[..., Result]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A config file whose data dir is private to the test (embedded SQLite stores)."""
    path = tmp_path / "bastion.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return path


def make_invoke(config: Path) -> Invoke:
    """``invoke(*args, env=..., input=...)`` runs ``bastion --config CONFIG *args``."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
        environment: dict[str, str | None] = dict.fromkeys(_CLEARED)
        environment["BASTION_KEK"] = KEK
        environment.update(env or {})
        return runner.invoke(
            cli, ["--config", str(config), *args], env=environment, input=input, prog_name="bastion"
        )

    return invoke


@pytest.fixture
def invoke(config_file: Path) -> Invoke:
    return make_invoke(config_file)

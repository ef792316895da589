"""docs/configuration.md is generated from the settings models and must not drift."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bastion.cli.main import cli


def test_configuration_reference_matches_the_settings() -> None:
    result = CliRunner().invoke(cli, ["config", "keys", "--markdown"])
    assert result.exit_code == 0
    doc = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == result.output, (
        "regenerate: bastion config keys --markdown > docs/configuration.md"
    )

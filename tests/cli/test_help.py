"""``bastion --help`` and every subcommand's ``--help``: they work and read well."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from bastion import __version__
from bastion.cli.main import cli


def _walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


COMMANDS = list(_walk(cli))
IDS = [" ".join(path) for path, _ in COMMANDS]


def _help(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], env={"BASTION_CONFIG": None}, prog_name="bastion")
    assert result.exit_code == 0, result.output
    return result.output


def test_the_command_tree_is_what_the_docs_describe() -> None:
    top = set(cli.commands)
    assert {"serve", "reload", "migrate", "clients", "keys", "config", "demo"} <= top
    assert {"create", "list", "show", "rotate-secret", "disable", "enable", "delete"} <= set(
        cli.commands["clients"].commands  # type: ignore[attr-defined]
    )
    assert {"list", "rotate", "revoke", "import", "export"} <= set(
        cli.commands["keys"].commands  # type: ignore[attr-defined]
    )
    assert {"check", "keys"} <= set(cli.commands["config"].commands)  # type: ignore[attr-defined]


def test_root_help_lists_every_command_with_a_summary() -> None:
    output = _help()
    assert output.startswith("Usage: bastion [OPTIONS] COMMAND [ARGS]...")
    assert "OAuth 2.1" in output
    assert "BASTION_KEK" in output  # where secrets come from
    for name, command in cli.commands.items():
        line = next(line for line in output.splitlines() if line.strip().startswith(name + " "))
        summary = line.strip()[len(name) :].strip()
        assert summary, f"{name} has no summary in `bastion --help`"
        assert not summary.endswith("..."), f"{name}'s summary is cut: {summary!r}"
        assert summary == command.get_short_help_str(limit=100)


def test_short_help_flag_works_too() -> None:
    result = CliRunner().invoke(cli, ["-h"], env={"BASTION_CONFIG": None}, prog_name="bastion")
    assert result.exit_code == 0
    assert result.output == _help()


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"], prog_name="bastion")
    assert result.exit_code == 0
    assert result.output.strip() == f"bastion, version {__version__}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_subcommand_help_reads_well(path: tuple[str, ...], command: click.Command) -> None:
    output = _help(*path)
    assert output.startswith(f"Usage: bastion {' '.join(path)} ")
    assert (command.help or "").strip(), f"`bastion {' '.join(path)}` has no description"
    description = (command.help or "").strip().splitlines()[0]
    assert description.endswith("."), f"description is not a sentence: {description!r}"
    # The first line of the description is shown in full, not truncated.
    assert " ".join(description.split()[:4]) in " ".join(output.split())
    for line in output.splitlines():
        assert len(line) <= 100, f"help line wider than 100 columns: {line!r}"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), (
                f"option {param.opts} of `bastion {' '.join(path)}` has no help"
            )
            for opt in param.opts:
                assert opt in output


SUBCOMMANDS = [
    pytest.param((*path, name), id=" ".join((*path, name)))
    for path, command in COMMANDS
    if isinstance(command, click.Group)
    for name in command.commands
]


@pytest.mark.parametrize("path", SUBCOMMANDS)
def test_group_listings_show_whole_summaries(path: tuple[str, ...]) -> None:
    *parent, name = path
    output = _help(*parent)
    assert "Commands:" in output
    line = next(line for line in output.splitlines() if line.strip().startswith(name + " "))
    summary = line.strip()[len(name) :].strip()
    assert summary
    assert not summary.endswith("..."), f"`bastion {' '.join(path)}` summary is cut: {summary!r}"


def test_unknown_command_suggests_help() -> None:
    result = CliRunner().invoke(cli, ["clientz"], env={"BASTION_CONFIG": None}, prog_name="bastion")
    assert result.exit_code == 2
    assert "No such command 'clientz'" in result.output
    assert "bastion --help" in result.output


@pytest.mark.parametrize("command", ["set-password", "disable", "delete"])
def test_user_commands_say_they_end_sessions_and_revoke_tokens(command: str) -> None:
    # Each of these ends every login session of the user and revokes their refresh tokens with
    # the access tokens issued from them (services/users.py end_user_access): the help says all
    # of it, not "refresh tokens" alone.
    text = " ".join(_help("users", command).split())
    assert "Every login session of the user ends" in text
    assert "authorization codes not yet redeemed die with their session" in text
    assert "every refresh token of the user is revoked with the access tokens issued from it" in text
    listing = " ".join(_help("users").split())
    summary = cli.commands["users"].commands[command].get_short_help_str(limit=100)  # type: ignore[attr-defined]
    assert "login sessions" in summary or "sign them out everywhere" in summary
    assert summary in listing

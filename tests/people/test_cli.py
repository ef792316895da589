"""``bastion users`` / ``bastion roles`` through click's CliRunner on a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from click.testing import Result

from bastion.cli.users import roles
from bastion.cli.users import users

from .test_endpoints import make_harness
from .test_sessions_end import browser
from .test_sessions_end import redeem
from .test_sessions_end import refresh

KEK = "k" * 48


@pytest.fixture
def invoke(tmp_path: Path) -> Callable[..., Result]:
    config = tmp_path / "bastion.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[storage]\n'
        f'database_url = "sqlite:///{tmp_path / "data" / "bastion.db"}"\n'
    )
    root = click.Group("bastion")
    root.add_command(users)
    root.add_command(roles)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> Result:
        return runner.invoke(
            root, list(args), input=stdin, obj={"config": str(config)}, env={"BASTION_KEK": KEK}
        )

    return run


def test_users_and_roles_commands(invoke: Callable[..., Result]) -> None:
    result = invoke(
        "roles", "create", "reader", "--scope", "orders:read", "--scope", "catalog:read catalog:list"
    )
    assert result.exit_code == 0, result.output
    assert "catalog:list catalog:read orders:read" in result.output
    result = invoke("roles", "list", "--json")
    assert json.loads(result.output) == [
        {"name": "reader", "scopes": ["catalog:list", "catalog:read", "orders:read"], "description": ""}
    ]
    result = invoke(
        "users",
        "create",
        "alice",
        "--password-stdin",
        "--role",
        "reader",
        "--email",
        "a@example.com",
        "--json",
        stdin="correct horse battery\n",
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert created["roles"] == ["reader"]
    assert "password" not in result.output
    result = invoke(
        "users", "create", "bob", "--password-stdin", "--role", "ghost", stdin="correct horse battery\n"
    )
    assert result.exit_code == 1
    assert "unknown role" in result.output
    result = invoke("users", "create", "carol", "--password-stdin", stdin="short\n")
    assert result.exit_code == 1
    assert "passwords must be" in result.output
    result = invoke("users", "create", "dave", "--password-stdin", stdin="")
    assert result.exit_code == 1
    assert "nothing on standard input" in result.output
    result = invoke("users", "list")
    assert "alice" in result.output
    assert "active" in result.output
    assert invoke("users", "disable", "alice").exit_code == 0
    assert json.loads(invoke("users", "list", "--json").output)[0]["disabled"] is True
    assert invoke("users", "enable", "alice").exit_code == 0
    assert (
        invoke(
            "users", "set-password", "alice", "--password-stdin", stdin="another long password\n"
        ).exit_code
        == 0
    )
    assert invoke("users", "set-roles", "alice").output.strip() == "alice: roles=-"
    assert invoke("users", "delete", "alice").exit_code == 0
    missing = invoke("users", "delete", "alice")
    assert missing.exit_code == 1
    assert "no user named" in missing.output
    assert "no users yet" in invoke("users", "list").output
    assert invoke("roles", "delete", "reader").exit_code == 0
    assert invoke("roles", "delete", "reader").exit_code == 1
    assert "no roles yet" in invoke("roles", "list").output


def test_piped_password_without_password_stdin_names_the_flag(invoke: Callable[..., Result]) -> None:
    # The interactive prompt itself is tested on a real terminal in tests/cli/test_users.py.
    result = invoke("users", "create", "erin", stdin="a long password\na long password\n")
    assert result.exit_code == 1
    assert "error: stdin is not a terminal; pipe the password with --password-stdin" in result.output
    assert "no users yet" in invoke("users", "list").output


def test_help_reads_well() -> None:
    root = click.Group("bastion", commands={"users": users, "roles": roles})
    runner = CliRunner()
    for group in (users, roles):
        listing = runner.invoke(root, [str(group.name), "--help"], prog_name="bastion").output
        for name, command in group.commands.items():
            line = next(line for line in listing.splitlines() if line.strip().startswith(name + " "))
            assert not line.endswith("..."), line
            output = runner.invoke(root, [str(group.name), name, "--help"], prog_name="bastion").output
            assert all(len(line) <= 100 for line in output.splitlines())
            assert (command.help or "").strip().splitlines()[0].endswith(".")
            for param in command.params:
                if isinstance(param, click.Option):
                    assert (param.help or "").strip(), (name, param.opts)


@pytest.mark.parametrize(
    ("command", "state"),
    [("set-password", "sqlite"), ("disable", "sqlite"), ("delete", "sqlite"), ("set-password", "memory")],
)
def test_cli_user_changes_end_the_sessions_of_a_running_server(
    tmp_path: Path, command: str, state: str
) -> None:
    """The command runs in its own process (here: its own services) beside a running server on
    the same data: with the embedded default the fast state is shared too; with ``memory://``
    only the durable session index is, and it is enough."""
    state_url = f"sqlite:///{tmp_path / 'state.db'}" if state == "sqlite" else "memory://"
    config = tmp_path / "bastion.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[storage]\nstate_url = "{state_url}"\n'
        f'database_url = "sqlite:///{tmp_path / "bastion.db"}"\n'
    )
    root = click.Group("bastion", commands={"users": users})
    # The harness's SQLite fast state is the file the command's configuration names.
    for harness in make_harness(tmp_path, state=state):
        laptop, phone = browser(harness), browser(harness)
        status, tokens = redeem(harness, laptop.sign_in())
        assert status == 200, tokens
        phone.sign_in()
        stdin = "a brand new passphrase\n" if command == "set-password" else None
        extra = ["--password-stdin"] if command == "set-password" else []
        result = CliRunner().invoke(
            root,
            ["users", command, "alice", *extra],
            input=stdin,
            obj={"config": str(config)},
            env={"BASTION_KEK": KEK},
        )
        assert result.exit_code == 0, result.output
        for device in (laptop, phone):
            assert device.authorize().startswith("/login?tx=")
        status, body = refresh(harness, tokens["refresh_token"])
        assert (status, body["error"]) == (400, "invalid_grant")

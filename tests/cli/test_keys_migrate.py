"""``bastion keys``, ``bastion migrate``, the key-encryption key, and commands that need a server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import Result

from tests.cli.conftest import Invoke
from tests.cli.conftest import make_invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_migrate_applies_once_then_is_idempotent(invoke: Invoke, config_file: Path) -> None:
    first = invoke("migrate")
    assert first.exit_code == 0, first.output
    applied = re.fullmatch(r"applied (\d+) migration\(s\): (.+); schema at (\S+)\n", first.output)
    assert applied is not None, first.output
    assert int(applied.group(1)) == len(applied.group(2).split(", ")) >= 1
    head = applied.group(3)
    assert (config_file.parent / "data" / "bastion.db").is_file()
    for _ in range(2):
        again = invoke("migrate")
        assert again.exit_code == 0, again.output
        assert again.output == f"schema is up to date ({head})\n"


def test_keys_list_creates_the_first_keys(invoke: Invoke) -> None:
    keys = ok_json(invoke("keys", "list", "--json"))
    assert sorted(k["alg"] for k in keys) == ["ES256", "RS256"]  # access tokens and ID tokens
    for key in keys:
        assert key["state"] == "active"
        assert key["generation"] == 1
        assert key["use"] == "sig"
        assert key["revoked_at"] is None
        assert set(key) >= {"kid", "alg", "created_at", "activates_at", "generation", "state"}
        # Never any key material in the listing, public or private.
        assert not {"public_jwk", "private_key", "sealed", "d", "n"} & set(key)
    assert ok_json(invoke("keys", "list", "--json")) == keys  # listing twice creates nothing


def test_keys_list_table(invoke: Invoke) -> None:
    result = invoke("keys", "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:4] == ["KID", "ALG", "GEN", "STATE"]
    assert len(rows) == 2
    assert all(" active " in row for row in rows)


def test_keys_rotate_publishes_a_pending_key(invoke: Invoke) -> None:
    before = ok_json(invoke("keys", "list", "--json"))
    result = invoke("keys", "rotate", "--alg", "ES256", "--publish-delay", "3600")
    assert result.exit_code == 0, result.output
    match = re.fullmatch(r"new ES256 key (\S+): published now, signs from [\d-]+ [\d:]+ UTC\n", result.output)
    assert match is not None, result.output
    after = {k["kid"]: k for k in ok_json(invoke("keys", "list", "--json"))}
    new = after[match.group(1)]
    assert new["state"] == "pending"
    assert new["generation"] == 2
    assert 3590 <= new["activates_at"] - new["created_at"] <= 3610
    # The old key keeps signing until the new one activates.
    assert all(after[k["kid"]]["state"] == "active" for k in before)


def test_keys_rotate_without_delay_activates_and_retires(invoke: Invoke) -> None:
    before = ok_json(invoke("keys", "list", "--json"))
    result = invoke("keys", "rotate", "--publish-delay", "0")
    assert result.exit_code == 0, result.output
    assert sorted(line.split()[1] for line in result.output.splitlines()) == ["ES256", "RS256"]
    states = {k["kid"]: k["state"] for k in ok_json(invoke("keys", "list", "--json"))}
    assert len(states) == 4
    assert {states[k["kid"]] for k in before} == {"retired"}
    assert sorted(states.values()) == ["active", "active", "retired", "retired"]


def test_keys_rotate_unknown_algorithm(invoke: Invoke) -> None:
    result = invoke("keys", "rotate", "--alg", "HS256")
    assert result.exit_code == 2
    assert "Invalid value for '--alg': 'HS256' is not one of" in result.stderr


def test_short_kek_is_refused(invoke: Invoke) -> None:
    result = invoke("keys", "list", env={"BASTION_KEK": "short"})
    assert result.exit_code == 1
    assert "BASTION_KEK must be at least 32 characters" in result.stderr


def test_kek_file_is_generated_with_a_warning_when_none_is_given(invoke: Invoke, config_file: Path) -> None:
    result = invoke("keys", "list", env={"BASTION_KEK": None})
    assert result.exit_code == 0, result.output
    kek = config_file.parent / "data" / "kek"
    assert kek.is_file()
    assert kek.stat().st_mode & 0o777 == 0o600
    assert "generated a key-encryption key" in result.stderr
    again = invoke("keys", "list", env={"BASTION_KEK": None})
    assert again.exit_code == 0
    assert "generated" not in again.stderr  # the same file is used from now on


def test_kek_file_variable_must_point_to_a_file(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("keys", "list", env={"BASTION_KEK": None, "BASTION_KEK_FILE": str(tmp_path / "none")})
    assert result.exit_code == 1
    assert f"no key-encryption key: set BASTION_KEK or create {tmp_path / 'none'}" in result.stderr


def test_reload_without_a_running_server(invoke: Invoke, config_file: Path) -> None:
    result = invoke("reload")
    assert result.exit_code == 1
    assert "no running `bastion serve` found" in result.stderr
    assert str(config_file.parent / "data" / "bastion.pid") in result.stderr


def test_serve_with_nothing_to_serve(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[authorization_server]\nenabled = false\n')
    result = make_invoke(config)("serve")
    assert result.exit_code == 1
    assert "nothing to serve" in result.stderr
    assert "[gateway]" in result.stderr


def test_serve_refuses_bad_worker_count(invoke: Invoke) -> None:
    result = invoke("serve", "--workers", "0")
    assert result.exit_code == 2
    assert "--workers" in result.stderr

"""``bastion clients``: the lifecycle on a real SQLite store, the ``--json`` shape, error paths."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from click.testing import Result

from tests.cli.conftest import Invoke

#: Keys of ``--json`` output every tool may rely on (``client_secret`` only on create/rotate).
CLIENT_KEYS = {
    "client_id",
    "name",
    "public",
    "grant_types",
    "scopes",
    "redirect_uris",
    "post_logout_redirect_uris",
    "audience",
    "token_format",
    "first_party",
    "disabled",
    "created_at",
    "updated_at",
    "previous_secret_valid_until",
}


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_create_json_shape(invoke: Invoke) -> None:
    created = ok_json(
        invoke(
            "clients",
            "create",
            "--name",
            "billing",
            "--scope",
            "invoices:read invoices:write",
            "--scope",
            "reports",
            "--audience",
            "https://api.example",
            "--json",
        )
    )
    assert set(created) == CLIENT_KEYS | {"client_secret"}
    assert created["name"] == "billing"
    assert created["public"] is False
    assert created["grant_types"] == ["client_credentials"]
    assert created["scopes"] == ["invoices:read", "invoices:write", "reports"]
    assert created["audience"] == "https://api.example"
    assert created["token_format"] == "jwt"
    assert created["disabled"] is False
    assert datetime.fromisoformat(created["created_at"]).tzinfo is not None
    assert len(created["client_secret"]) >= 32


def test_lifecycle(invoke: Invoke) -> None:
    created = ok_json(
        invoke("clients", "create", "--name", "svc", "--scope", "a", "--client-id", "svc-1", "--json")
    )
    assert created["client_id"] == "svc-1"

    listed = ok_json(invoke("clients", "list", "--json"))
    assert [c["client_id"] for c in listed] == ["svc-1"]
    assert set(listed[0]) == CLIENT_KEYS  # never the secret

    shown = ok_json(invoke("clients", "show", "svc-1", "--json"))
    assert set(shown) == CLIENT_KEYS
    assert {k: v for k, v in created.items() if k != "client_secret"} == shown

    rotated = ok_json(invoke("clients", "rotate-secret", "svc-1", "--json"))
    assert set(rotated) == CLIENT_KEYS | {"client_secret"}
    assert rotated["client_secret"] != created["client_secret"]

    disabled = ok_json(invoke("clients", "disable", "svc-1", "--json"))
    assert set(disabled) == CLIENT_KEYS
    assert disabled["disabled"] is True
    assert ok_json(invoke("clients", "show", "svc-1", "--json"))["disabled"] is True
    table = invoke("clients", "list")
    assert "disabled" in table.output.splitlines()[1]

    enabled = ok_json(invoke("clients", "enable", "svc-1", "--json"))
    assert enabled["disabled"] is False

    assert ok_json(invoke("clients", "delete", "svc-1", "--json")) == {"client_id": "svc-1", "deleted": True}
    assert ok_json(invoke("clients", "list", "--json")) == []
    gone = invoke("clients", "show", "svc-1")
    assert gone.exit_code == 1


def test_human_output(invoke: Invoke) -> None:
    result = invoke("clients", "list")
    assert result.exit_code == 0
    assert "no clients yet" in result.output
    assert "bastion clients create" in result.output

    created = invoke("clients", "create", "--name", "svc", "--scope", "a b", "--client-id", "svc-1")
    assert created.exit_code == 0, created.output
    lines = {}
    for line in created.stdout.splitlines():
        name, _, value = line.partition(" ")
        lines[name] = value.strip()
    assert lines["client_id"] == "svc-1"
    assert lines["scopes"] == "a b"
    assert "client_secret" in lines
    assert "shown only once" in created.stderr

    table = invoke("clients", "list")
    header, row = table.output.splitlines()
    assert header.split()[:2] == ["CLIENT", "ID"]
    assert row.split()[0] == "svc-1"
    assert "confidential" in row
    assert "enabled" in row

    shown = invoke("clients", "show", "svc-1")
    assert "client_secret" not in shown.output
    assert invoke("clients", "delete", "svc-1").output.strip() == "deleted svc-1"


def test_public_authorization_code_client(invoke: Invoke) -> None:
    created = ok_json(
        invoke(
            "clients",
            "create",
            "--name",
            "spa",
            "--public",
            "--grant-type",
            "authorization_code",
            "--grant-type",
            "refresh_token",
            "--redirect-uri",
            "http://127.0.0.1:3000/cb",
            "--json",
        )
    )
    assert created["public"] is True
    assert created["grant_types"] == ["authorization_code", "refresh_token"]
    assert created["redirect_uris"] == ["http://127.0.0.1:3000/cb"]
    assert "client_secret" not in created  # a public client has none


def test_public_client_credentials_is_refused(invoke: Invoke) -> None:
    result = invoke("clients", "create", "--name", "bad", "--public", "--grant-type", "client_credentials")
    assert result.exit_code == 1
    assert "public client cannot use client_credentials" in result.stderr
    assert ok_json(invoke("clients", "list", "--json")) == []


def test_invalid_grant_type_is_refused(invoke: Invoke) -> None:
    result = invoke("clients", "create", "--name", "bad", "--grant-type", "password")
    assert result.exit_code == 2
    assert "Invalid value for '--grant-type'" in result.stderr
    assert "'password' is not one of" in result.stderr
    assert "client_credentials" in result.stderr


def test_authorization_code_needs_a_redirect_uri(invoke: Invoke) -> None:
    result = invoke("clients", "create", "--name", "web", "--grant-type", "authorization_code")
    assert result.exit_code == 1
    assert "--redirect-uri" in result.stderr


def test_name_is_required(invoke: Invoke) -> None:
    result = invoke("clients", "create", "--scope", "a")
    assert result.exit_code == 2
    assert "Missing option '--name'" in result.stderr


UNKNOWN_CLIENT_ACTIONS = ["show", "delete", "rotate-secret", "disable", "enable"]


@pytest.mark.parametrize("action", UNKNOWN_CLIENT_ACTIONS)
def test_unknown_client_is_a_clear_error(invoke: Invoke, action: str) -> None:
    result = invoke("clients", action, "no-such-client")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "no client 'no-such-client'" in result.stderr
    assert "database" not in result.stderr  # the database is fine; the client does not exist


def test_duplicate_client_id_is_a_clear_error(invoke: Invoke) -> None:
    assert invoke("clients", "create", "--name", "a", "--client-id", "dup").exit_code == 0
    result = invoke("clients", "create", "--name", "b", "--client-id", "dup")
    assert result.exit_code == 1
    assert "dup" in result.stderr
    assert "database" not in result.stderr


def test_client_commands_need_the_kek_the_keys_were_sealed_with(invoke: Invoke) -> None:
    assert invoke("keys", "list").exit_code == 0  # creates the signing keys, sealed under KEK
    result = invoke("clients", "list", env={"BASTION_KEK": "another-" + "x" * 40})
    assert result.exit_code == 1
    assert "key-encryption key is not the one it was encrypted with" in result.stderr
    assert "BASTION_KEK" in result.stderr

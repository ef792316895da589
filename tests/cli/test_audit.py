"""``bastion audit`` (search, export, types) on the embedded default, and the administration
commands' events: every one is audited with actor ``cli`` and without the secrets it printed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.ops.audit_events import EVENT_TYPES
from bastion.storage.audit_protocols import AuditEvent
from bastion.storage.audit_protocols import rfc3339
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate

from .conftest import Invoke

#: What the administration commands below must emit.
CLI_TYPES = frozenset(
    {
        "client.secret_rotated",
        "client.disabled",
        "client.enabled",
        "client.deleted",
        "client.tokens_revoked",
        "key.imported",
        "key.revoked",
        "user.enabled",
        "user.password_changed",
        "user.roles_changed",
        "user.deleted",
        "role.deleted",
        "ip.banned",
        "ip.unbanned",
        "kek.rotated",
    }
)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def searched(invoke: Invoke, *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ok(invoke("audit", "search", "--json", *args)).splitlines()]


def test_administration_commands_are_audited_as_cli_without_their_secrets(
    invoke: Invoke, config_file: Path, tmp_path: Path
) -> None:
    secrets: list[str] = ["first secret words", "second secret words"]
    created = json.loads(ok(invoke("clients", "create", "--name", "svc", "--scope", "read", "--json")))
    cid = created["client_id"]
    secrets.append(created["client_secret"])
    secrets.append(json.loads(ok(invoke("clients", "rotate-secret", cid, "--json")))["client_secret"])
    for action in ("disable", "enable", "delete"):
        ok(invoke("clients", action, cid))
    ok(invoke("roles", "create", "reader", "--scope", "orders:read"))
    ok(invoke("users", "create", "bob", "--password-stdin", "--role", "reader", input=secrets[0] + "\n"))
    ok(invoke("users", "disable", "bob"))
    ok(invoke("users", "enable", "bob"))
    ok(invoke("users", "set-password", "bob", "--password-stdin", input=secrets[1] + "\n"))
    ok(invoke("users", "set-roles", "bob"))
    ok(invoke("users", "delete", "bob"))
    ok(invoke("roles", "delete", "reader"))
    kid = next(k["kid"] for k in json.loads(ok(invoke("keys", "list", "--json"))) if k["alg"] == "ES256")
    ok(invoke("keys", "revoke", "--yes", "--", kid))
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "legacy.pem").write_bytes(pem)
    ok(invoke("keys", "import", str(tmp_path / "legacy.pem"), "--kid", "legacy-1"))
    ok(invoke("bans", "add", "203.0.113.7", "--for", "1h", "--reason", "scanner"))
    ok(invoke("bans", "remove", "203.0.113.7"))
    ok(invoke("kek", "rotate", "--write-new-kek", str(tmp_path / "new-kek")))  # last: the KEK changes

    events = searched(invoke, "--limit", "1000")
    types = {e["type"] for e in events}
    assert types >= CLI_TYPES, sorted(CLI_TYPES - types)
    assert {e["actor"] for e in events} == {"cli"}
    assert [e["subject"] for e in events if e["type"].startswith("client.")] == [cid] * 6
    [revoked] = [e for e in events if e["type"] == "key.revoked"]
    assert revoked["subject"] == kid
    replacement = [e for e in events if e["type"] == "key.created" and e["reason"] == "replaces_revoked_key"]
    assert [e["subject"] for e in replacement] == [revoked["details"]["replacement"]]
    text = (config_file.parent / "data" / "audit.log").read_text()
    assert len(text.splitlines()) == len(events), "the file and the database hold the same events"
    for secret in [*secrets, pem.decode()]:
        assert secret not in text


def _store_events(config_file: Path, events: list[AuditEvent]) -> None:
    async def go() -> None:
        data = config_file.parent / "data"
        stores = open_stores(f"sqlite:///{data / 'bastion.db'}", "memory://")
        await migrate(stores.db)
        await stores.audit.append(events)
        await stores.close()

    asyncio.run(go())


T0 = 1_738_324_800.0  # 2025-01-31T12:00:00Z
SAMPLE = [
    AuditEvent(T0, "login.failed", "failure", "anonymous", "u1", "web", "203.0.113.7", "wrong_password"),
    AuditEvent(T0 + 60, "login.succeeded", "success", "u1", "u1", "web", "203.0.113.7"),
    AuditEvent(T0 + 120, "token.issued", "success", "web", "u1", "web", details={"jti": "j1"}),
    AuditEvent(
        T0 + 180, "client.created", "success", "cli", "a-client-with-a-long-id", "a-client-with-a-long-id"
    ),
    AuditEvent(
        T0 + 240, "login.failed", "failure", "anonymous", None, "shop", "198.51.100.1", "unknown_user"
    ),
]


def test_search_filters_by_time_type_subject_and_client(invoke: Invoke, config_file: Path) -> None:
    _store_events(config_file, SAMPLE)
    since, until = rfc3339(T0 + 60), rfc3339(T0 + 240)

    def types(*args: str) -> list[str]:
        return [e["type"] for e in searched(invoke, *args)]

    assert types("--since", since, "--until", until) == ["login.succeeded", "token.issued", "client.created"]
    assert types("--type", "login.*") == ["login.failed", "login.succeeded", "login.failed"]
    assert types("--type", "login.failed", "--type", "token.issued") == [
        "login.failed",
        "token.issued",
        "login.failed",
    ]
    assert types("--subject", "u1", "--client", "web") == ["login.failed", "login.succeeded", "token.issued"]
    assert types("--client", "shop") == ["login.failed"]
    assert types("--limit", "2") == ["client.created", "login.failed"], "the latest, oldest first"
    assert types("--since", "2025-02-01") == []
    assert types("--since", "1h") == [], "an hour ago is long after 2025"
    first = searched(invoke, "--limit", "5")[0]
    assert first == {
        "time": "2025-01-31T12:00:00.000Z",
        "ts": T0,
        "type": "login.failed",
        "outcome": "failure",
        "actor": "anonymous",
        "subject": "u1",
        "client": "web",
        "address": "203.0.113.7",
        "reason": "wrong_password",
        "request_id": None,
        "trace_id": None,
        "details": {},
    }


def test_search_prints_an_aligned_table(invoke: Invoke, config_file: Path) -> None:
    assert ok(invoke("audit", "search")) == "no audit events match\n"
    _store_events(config_file, SAMPLE)
    header, *rows = ok(invoke("audit", "search")).splitlines()
    assert header.split() == [
        "TIME",
        "(UTC)",
        "TYPE",
        "OUTCOME",
        "ACTOR",
        "SUBJECT",
        "CLIENT",
        "ADDRESS",
        "REASON",
    ]
    assert len(rows) == len(SAMPLE)
    assert rows[0].startswith("2025-01-31T12:00:00.000Z  login.failed")
    for column, values in (("TYPE", [e.type for e in SAMPLE]), ("CLIENT", [e.client for e in SAMPLE])):
        at = header.index(column)
        assert [row[at:].split()[0] for row in rows] == values
    assert rows[-1][header.index("SUBJECT") :].split()[0] == "-"


def test_export_writes_every_match_oldest_first_as_json_lines(invoke: Invoke, config_file: Path) -> None:
    many = [
        AuditEvent(T0 + i, "token.issued", "success", "svc", "svc", "svc", details={"jti": f"j{i}"})
        for i in range(2500)
    ]
    _store_events(config_file, [*many[1500:], *many[:1500]])  # stored out of time order
    result = invoke("audit", "export", "--since", rfc3339(T0 + 10), "--type", "token.issued")
    lines = ok(result).splitlines()
    assert [json.loads(line)["details"]["jti"] for line in lines] == [f"j{i}" for i in range(10, 2500)]
    assert result.stderr == "exported 2490 event(s)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--type", "login.nope"), "'login.nope' matches no event type"),
        (("--type", "nothing.*"), "'nothing.*' matches no event type"),
        (("--since", "yesterday"), "Invalid value for --since: 'yesterday' is neither a duration ago"),
        (("--until", "2025-01-31T12:00:00"), "Invalid value for --until"),
        (("--limit", "0"), "Invalid value for '--limit'"),
    ],
)
def test_bad_filters_are_refused_naming_the_option(
    invoke: Invoke, args: tuple[str, ...], message: str
) -> None:
    result = invoke("audit", "search", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_types_lists_the_vocabulary(invoke: Invoke) -> None:
    lines = ok(invoke("audit", "types")).splitlines()
    assert [line.split()[0] for line in lines] == list(EVENT_TYPES)

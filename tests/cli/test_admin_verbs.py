"""The CLI verbs the admin API shares: clients update and rotate-secret --overlap, users show
and update, sessions and consents; aligned tables, --json and RFC 3339 times everywhere."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from click.testing import Result

from bastion.cli.config import load_settings
from bastion.cli.context import open_services
from bastion.services import consent
from bastion.services import sessions
from bastion.services import users

from .conftest import KEK
from .conftest import Invoke

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def ok_json(result: Result) -> Any:
    return json.loads(ok(result))


def test_clients_update_changes_what_is_given_and_is_audited(invoke: Invoke) -> None:
    ok(invoke("clients", "create", "--name", "svc", "--scope", "a", "--client-id", "svc-1"))
    updated = ok_json(
        invoke(
            "clients",
            "update",
            "svc-1",
            "--name",
            "billing",
            "--scope",
            "b c",
            "--token-format",
            "opaque",
            "--json",
        )
    )
    assert (updated["name"], updated["scopes"], updated["token_format"]) == ("billing", ["b", "c"], "opaque")
    assert updated["grant_types"] == ["client_credentials"]  # not given: kept
    refused = invoke("clients", "update", "svc-1", "--grant-type", "authorization_code")
    assert refused.exit_code == 1
    assert "redirect-uri" in refused.output
    assert invoke("clients", "update", "svc-1").exit_code == 2
    events = [
        json.loads(line)
        for line in ok(invoke("audit", "search", "--type", "client.updated", "--json")).splitlines()
    ]
    assert [e["details"]["changed"] for e in events] == [["name", "scopes", "token_format"]]
    assert events[0]["actor"] == "cli"


def test_rotate_secret_with_an_overlap_keeps_the_old_secret_until_then(invoke: Invoke) -> None:
    ok(invoke("clients", "create", "--name", "svc", "--client-id", "svc-1"))
    rotated = ok_json(invoke("clients", "rotate-secret", "svc-1", "--overlap", "1h", "--json"))
    assert RFC3339.fullmatch(rotated["previous_secret_valid_until"])
    assert invoke("clients", "rotate-secret", "svc-1", "--overlap", "soon").exit_code == 2
    too_long = invoke("clients", "rotate-secret", "svc-1", "--overlap", "31d")
    assert too_long.exit_code == 1
    assert "30 days" in too_long.output
    event = json.loads(
        ok(invoke("audit", "search", "--type", "client.secret_rotated", "--json")).splitlines()[0]
    )
    assert event["details"]["overlap"] == 3600


def test_clients_list_aligns_its_columns(invoke: Invoke) -> None:
    ok(invoke("clients", "create", "--name", "a", "--client-id", "short"))
    ok(invoke("clients", "create", "--name", "a much longer name", "--client-id", "a-much-longer-client-id"))
    header, *rows = ok(invoke("clients", "list")).splitlines()
    assert len(rows) == 2
    for column in ("NAME", "TYPE", "GRANTS", "SCOPES", "STATUS", "CREATED (UTC)"):
        at = header.index(column)
        for row in rows:  # every cell starts under its heading, after a gap
            assert row[at - 2 : at] == "  ", (column, row)
            assert row[at] != " ", (column, row)
    assert all(RFC3339.search(row) for row in rows)


def _seed(config: Path) -> None:
    """A signed-in session and a consent of alice, made as the server makes them."""

    async def go() -> None:
        settings, _ = load_settings(str(config), {"BASTION_KEK": KEK})
        async with open_services(settings) as services:
            user = await users.get_user(services, "alice")
            assert user is not None
            client = await services.clients.get("web")
            assert client is not None
            for sid in ("sid-one", "sid-two"):
                await sessions.start(services, sid, user.user_id, services.clock(), 3600)
            await consent.remember(services, user, client, ["openid", "profile"])

    asyncio.run(go())


def test_users_show_sessions_and_consents(invoke: Invoke, config_file: Path) -> None:
    ok(
        invoke(
            "users",
            "create",
            "alice",
            "--password-stdin",
            "--email",
            "a@example.com",
            input="correct horse\n",
        )
    )
    ok(invoke("clients", "create", "--name", "web", "--client-id", "web"))
    shown = ok_json(invoke("users", "show", "alice", "--json"))
    assert (shown["username"], shown["email"]) == ("alice", "a@example.com")
    assert RFC3339.fullmatch(shown["created_at"])
    assert "password" not in json.dumps(shown)
    assert "a@example.com" in ok(invoke("users", "show", "alice"))
    assert invoke("users", "show", "nobody").exit_code == 1
    assert ok_json(invoke("users", "update", "alice", "--email", "", "--json"))["email"] is None

    _seed(config_file)
    listed = ok_json(invoke("sessions", "list", "alice", "--json"))
    assert [s["sid"] for s in listed] == ["sid-one", "sid-two"]
    assert RFC3339.fullmatch(listed[0]["expires_at"])
    assert "sid-two" in ok(invoke("sessions", "list", "alice"))
    assert ok(invoke("sessions", "revoke", "alice", "sid-one")).strip() == "ended 1 session(s) of alice"
    assert invoke("sessions", "revoke", "alice", "sid-one").exit_code == 1
    assert invoke("sessions", "revoke", "alice").exit_code == 2
    assert ok(invoke("sessions", "revoke", "alice", "--all")).strip() == "ended 1 session(s) of alice"
    assert ok_json(invoke("sessions", "list", "alice", "--json")) == []

    consents = ok_json(invoke("consents", "list", "alice", "--json"))
    assert [(c["client_id"], c["scopes"]) for c in consents] == [("web", ["openid", "profile"])]
    assert "openid profile" in ok(invoke("consents", "list", "alice"))
    ok(invoke("consents", "revoke", "alice", "web"))
    assert ok_json(invoke("consents", "list", "alice", "--json")) == []
    assert invoke("consents", "revoke", "alice", "web").exit_code == 1
    types = {
        json.loads(line)["type"]
        for line in ok(
            invoke("audit", "search", "--type", "consent.*", "--type", "login_session.*", "--json")
        ).splitlines()
    }
    assert types == {"consent.granted", "consent.revoked", "login_session.revoked"}


def test_every_list_command_has_json(invoke: Invoke) -> None:
    for command in (
        ("clients", "list"),
        ("users", "list"),
        ("roles", "list"),
        ("keys", "list"),
        ("bans", "list"),
    ):
        assert isinstance(ok_json(invoke(*command, "--json")), list), command

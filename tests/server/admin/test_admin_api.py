"""The admin API end to end through its ASGI app, on SQLite files and on PostgreSQL: who may
call it, every resource, secret rotation with an overlap, and problem details for bad input."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx2 as httpx
import pytest

from bastion.services import consent
from bastion.services import sessions
from bastion.services import users

from .conftest import Admin

pytestmark = pytest.mark.anyio

#: Event types this module emits (the audit trail's coverage test collects them).
ADMIN_TYPES = frozenset(
    {"admin.call", "client.updated", "user.updated", "consent.revoked", "login_session.revoked"}
)
PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert {"type", "title"} <= set(body)
    return body  # type: ignore[no-any-return]


async def test_no_default_credentials_and_rfc6750_challenges(admin: Admin) -> None:
    problem(await admin.api.get("/clients"), 401)
    assert (await admin.api.get("/clients")).headers["www-authenticate"] == 'Bearer realm="bastion-admin"'
    bad = await admin.api.get("/clients", headers={"authorization": "Bearer not-a-token"})
    problem(bad, 401)
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    basic = await admin.api.get("/clients", headers={"authorization": "Basic b3BzOng="})
    assert 'error="invalid_request"' in basic.headers["www-authenticate"]

    plain, secret = await admin.services.clients.create(name="svc", scopes=["read"], client_id="svc")
    assert secret is not None
    token = (await admin.issue(plain.client_id, secret, "read")).json()["access_token"]
    scoped = await admin.api.get("/clients", headers={"authorization": f"Bearer {token}"})
    problem(scoped, 403)
    assert 'error="insufficient_scope", scope="bastion:admin"' in scoped.headers["www-authenticate"]

    # A refresh of the admin client's state: revoked tokens and disabled clients stop at once.
    ops_secret = (await admin.api.post("/clients/ops/secret", headers=admin.auth)).json()["client_secret"]
    second = (await admin.issue("ops", ops_secret)).json()["access_token"]
    revoked = await admin.public.post("/revoke", data={"token": second}, auth=("ops", ops_secret))
    assert revoked.status_code == 200
    problem(await admin.api.get("/clients", headers={"authorization": f"Bearer {second}"}), 401)
    admin.clock.now += 901  # the first token has expired
    problem(await admin.api.get("/clients", headers=admin.auth), 401)

    refused = [e for e in admin.events if e.type == "admin.call" and e.outcome == "denied"]
    assert {e.reason for e in refused} >= {
        "no_token",
        "invalid_token",
        "invalid_request",
        "insufficient_scope",
    }
    assert {e.actor for e in refused} == {"anonymous"}


async def test_clients_register_read_change_disable_delete(admin: Admin) -> None:
    admin.clock.now += 1  # registered after ops
    created = await admin.api.post(
        "/clients",
        headers=admin.auth,
        json={"name": "billing", "scopes": ["invoices:read"], "client_id": "billing"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["client_secret"]
    assert (await admin.api.get("/clients/billing", headers=admin.auth)).json()["scopes"] == ["invoices:read"]
    changed = await admin.api.patch(
        "/clients/billing",
        headers=admin.auth,
        json={"name": "Billing", "scopes": ["invoices:read", "invoices:write"], "token_format": "opaque"},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["token_format"]) == ("Billing", "opaque")
    rule = problem(
        await admin.api.patch(
            "/clients/billing", headers=admin.auth, json={"grant_types": ["authorization_code"]}
        ),
        400,
    )
    assert "redirect" in str(rule["detail"])
    problem(
        await admin.api.post("/clients", headers=admin.auth, json={"name": "x", "client_id": "billing"}), 409
    )
    assert (await admin.api.post("/clients/billing/disable", headers=admin.auth)).json()["disabled"] is True
    assert (await admin.api.post("/clients/billing/enable", headers=admin.auth)).json()["disabled"] is False

    first = (await admin.api.get("/clients?limit=1", headers=admin.auth)).json()
    assert [c["client_id"] for c in first["items"]] == ["ops"]
    rest = (await admin.api.get(f"/clients?limit=1&cursor={first['next_cursor']}", headers=admin.auth)).json()
    assert [c["client_id"] for c in rest["items"]] == ["billing"]
    assert rest["next_cursor"] is None

    assert (await admin.api.delete("/clients/billing", headers=admin.auth)).status_code == 204
    problem(await admin.api.get("/clients/billing", headers=admin.auth), 404)
    problem(await admin.api.delete("/clients/billing", headers=admin.auth), 404)

    updated = next(e for e in admin.events if e.type == "client.updated")
    assert (updated.actor, updated.subject) == ("ops", "billing")
    assert updated.details["changed"] == ["name", "scopes", "token_format"]
    calls = [e for e in admin.events if e.type == "admin.call" and e.outcome == "success"]
    assert {e.actor for e in calls} == {"ops"}
    assert ("PATCH", "/clients/billing", 200) in {
        (e.details["method"], e.details["path"], e.details["status"]) for e in calls
    }


async def test_a_rotated_secret_keeps_working_during_the_overlap_only(admin: Admin) -> None:
    _, old = await admin.services.clients.create(name="svc", scopes=["read"], client_id="svc")
    assert old is not None
    rotated = await admin.api.post("/clients/svc/secret", headers=admin.auth, json={"overlap": 60})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["client_secret"]
    assert rotated.json()["client"]["previous_secret_valid_until"] is not None

    # Both secrets work during the overlap, also when used at once; a wrong one never does.
    answers = await asyncio.gather(*(admin.issue("svc", secret, "read") for secret in [old, new] * 10))
    assert [a.status_code for a in answers] == [200] * 20
    assert (await admin.issue("svc", old + "x", "read")).status_code == 401

    admin.clock.now += 61
    assert (await admin.issue("svc", old, "read")).status_code == 401
    assert (await admin.issue("svc", new, "read")).status_code == 200

    # Without an overlap the replaced secret stops at once.
    newest = (await admin.api.post("/clients/svc/secret", headers=admin.auth)).json()["client_secret"]
    assert (await admin.issue("svc", new, "read")).status_code == 401
    assert (await admin.issue("svc", newest, "read")).status_code == 200
    rotation = [e for e in admin.events if e.type == "client.secret_rotated" and e.subject == "svc"]
    assert [e.details["overlap"] for e in rotation] == [60, 0]
    assert {e.actor for e in rotation} == {"ops"}
    for event in admin.events:  # never a secret or token in the trail
        assert not {old, new, newest, admin.token} & set(map(str, event.details.values()))
    problem(
        await admin.api.post("/clients/svc/secret", headers=admin.auth, json={"overlap": 31 * 86400}), 400
    )


async def test_users_roles_consents_and_sessions(admin: Admin) -> None:
    role = await admin.api.post(
        "/roles", headers=admin.auth, json={"name": "staff", "scopes": ["orders:read"]}
    )
    assert role.status_code == 201, role.text
    problem(await admin.api.post("/roles", headers=admin.auth, json={"name": "staff", "scopes": ["x"]}), 409)
    created = await admin.api.post(
        "/users",
        headers=admin.auth,
        json={"username": "alice", "password": "correct horse", "roles": ["staff"]},
    )
    assert created.status_code == 201, created.text
    assert "password" not in created.text
    problem(
        await admin.api.post("/users", headers=admin.auth, json={"username": "alice", "password": "x" * 8}),
        409,
    )
    unknown_role = await admin.api.post(
        "/users", headers=admin.auth, json={"username": "bob", "password": "x" * 8, "roles": ["nope"]}
    )
    assert "unknown role" in str(problem(unknown_role, 400)["detail"])
    patched = await admin.api.patch(
        "/users/alice", headers=admin.auth, json={"email": "alice@example.com", "name": "Alice", "roles": []}
    )
    assert (patched.json()["email"], patched.json()["roles"]) == ("alice@example.com", [])
    assert (await admin.api.patch("/users/alice", headers=admin.auth, json={"email": None})).json()[
        "email"
    ] is None

    user = await users.get_user(admin.services, "alice")
    assert user is not None
    web, _ = await admin.services.clients.create(name="web", client_id="web")
    await consent.remember(admin.services, user, web, ["openid"])
    for sid in ("s1", "s2", "s3"):
        await sessions.start(admin.services, sid, user.user_id, admin.clock(), 3600)

    consents = (await admin.api.get("/users/alice/consents", headers=admin.auth)).json()["items"]
    assert [(c["client_id"], c["scopes"]) for c in consents] == [("web", ["openid"])]
    assert (await admin.api.delete("/users/alice/consents/web", headers=admin.auth)).status_code == 204
    problem(await admin.api.delete("/users/alice/consents/web", headers=admin.auth), 404)

    listed = (await admin.api.get("/users/alice/sessions", headers=admin.auth)).json()["items"]
    assert [s["sid"] for s in listed] == ["s1", "s2", "s3"]
    assert (await admin.api.delete("/users/alice/sessions/s1", headers=admin.auth)).status_code == 204
    assert not await sessions.alive(admin.services, "s1")
    problem(await admin.api.delete("/users/alice/sessions/s1", headers=admin.auth), 404)
    ended = await admin.api.delete("/users/alice/sessions", headers=admin.auth)
    assert ended.json() == {"ended": 2}

    assert (await admin.api.post("/users/alice/disable", headers=admin.auth)).json()["disabled"] is True
    assert (await admin.api.post("/users/alice/enable", headers=admin.auth)).json()["disabled"] is False
    reset = await admin.api.post(
        "/users/alice/password", headers=admin.auth, json={"password": "new passphrase"}
    )
    assert reset.status_code == 204
    problem(
        await admin.api.post("/users/alice/password", headers=admin.auth, json={"password": "short"}), 400
    )
    assert [u["username"] for u in (await admin.api.get("/users", headers=admin.auth)).json()["items"]] == [
        "alice"
    ]
    assert (await admin.api.delete("/users/alice", headers=admin.auth)).status_code == 204
    problem(await admin.api.get("/users/alice", headers=admin.auth), 404)
    assert (await admin.api.delete("/roles/staff", headers=admin.auth)).status_code == 204
    problem(await admin.api.delete("/roles/staff", headers=admin.auth), 404)
    types = {e.type for e in admin.events if e.actor == "ops"}
    assert types >= {"consent.revoked", "login_session.revoked", "user.updated", "user.roles_changed"}


async def test_keys_bans_and_audit_search(admin: Admin) -> None:
    keys = (await admin.api.get("/keys", headers=admin.auth)).json()["items"]
    assert {k["state"] for k in keys} == {"active"}
    assert all("d" not in k["public_jwk"] for k in keys)  # never a private member
    rotated = await admin.api.post("/keys/rotate", headers=admin.auth, json={"alg": "ES256"})
    assert rotated.status_code == 201, rotated.text
    kid = rotated.json()["items"][0]["kid"]
    problem(await admin.api.post("/keys/rotate", headers=admin.auth, json={"alg": "PS256"}), 400)
    revoked = (await admin.api.post(f"/keys/{kid}/revoke", headers=admin.auth)).json()
    assert (revoked["key"]["state"], revoked["replacement"]) == ("revoked", None)
    problem(await admin.api.post("/keys/nokid/revoke", headers=admin.auth), 404)

    ban = await admin.api.post(
        "/bans", headers=admin.auth, json={"network": "203.0.113.7", "duration": 600, "reason": "scanner"}
    )
    assert ban.status_code == 201, ban.text
    net = await admin.api.post(
        "/bans", headers=admin.auth, json={"network": "2001:db8::/32", "duration": 60, "reason": "scanner"}
    )
    assert net.json()["network"] == "2001:db8::/32"
    problem(
        await admin.api.post(
            "/bans", headers=admin.auth, json={"network": "1.2.3", "duration": 6, "reason": "x"}
        ),
        400,
    )
    assert len((await admin.api.get("/bans", headers=admin.auth)).json()["items"]) == 2
    assert (await admin.api.delete("/bans/2001:db8::/32", headers=admin.auth)).status_code == 204
    problem(await admin.api.delete("/bans/2001:db8::/32", headers=admin.auth), 404)

    await admin.services.audit.drain()
    found = (await admin.api.get("/audit/events?type=ip.*&limit=1", headers=admin.auth)).json()
    assert [e["type"] for e in found["items"]] == ["ip.banned"]
    after = (
        await admin.api.get(f"/audit/events?type=ip.*&cursor={found['next_cursor']}", headers=admin.auth)
    ).json()
    assert [e["type"] for e in after["items"]] == ["ip.banned", "ip.unbanned"]
    assert after["items"][0]["actor"] == "ops"
    by_subject = (await admin.api.get("/audit/events?subject=203.0.113.7", headers=admin.auth)).json()[
        "items"
    ]
    assert [e["subject"] for e in by_subject] == ["203.0.113.7"]
    problem(await admin.api.get("/audit/events?type=nothing.like.this", headers=admin.auth), 400)
    problem(await admin.api.get("/audit/events?since=yesterday", headers=admin.auth), 400)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "field"),
    [
        ("POST", "/clients", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "(body)"),
        ("POST", "/clients", {"content": b"[]", "headers": {"content-type": "application/json"}}, 400, "(body)"),
        ("POST", "/clients", {"json": {"name": 7}}, 400, "name"),
        ("POST", "/clients", {"json": {"name": "x", "public": "yes"}}, 400, "public"),
        ("POST", "/clients", {"json": {"name": "x", "colour": "red"}}, 400, "colour"),
        ("POST", "/clients", {"json": {"name": "x\u0000"}}, 400, "name"),
        ("POST", "/clients", {"json": {"name": "x", "scopes": ["a b"]}}, 400, "scopes.0"),
        ("PATCH", "/clients/ops", {"json": {}}, 400, "(body)"),
        ("PATCH", "/clients/ops", {"json": {"name": None}}, 400, "name"),
        ("POST", "/users", {"json": {"username": "a", "password": 12345678}}, 400, "password"),
        ("GET", "/clients?limit=0", {}, 400, "limit"),
        ("GET", "/clients?cursor=%%%", {}, 400, "cursor"),
        ("POST", "/clients", {"content": b'{"name":"x"}', "headers": {"content-type": "text/plain"}}, 415, None),
        ("POST", "/clients", {"content": b'{"name":"' + b"x" * 20_000 + b'"}',
                              "headers": {"content-type": "application/json"}}, 413, None),
        ("PUT", "/clients", {}, 405, None),
        ("GET", "/nowhere", {}, 404, None),
        ("GET", "/clients/%C3%A9t%C3%A9", {}, 404, None),
        ("GET", "/users/%00", {}, 404, None),
    ],
)  # fmt: skip
async def test_bad_requests_are_problem_details(
    admin: Admin, method: str, path: str, kwargs: dict[str, object], status: int, field: str | None
) -> None:
    kwargs = dict(kwargs)  # shared by the store parameters: pop from a copy
    headers = {**admin.auth, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    body = problem(await admin.api.request(method, path, headers=headers, **kwargs), status)  # type: ignore[arg-type]
    if field is not None:
        assert body["type"] == "urn:bastion:problem:validation"
        assert field in [e["field"] for e in body["errors"]]  # type: ignore[attr-defined]
        assert str(body["detail"]).startswith(field)


async def test_405_lists_the_allowed_methods_and_a_chunked_flood_is_refused(admin: Admin) -> None:
    response = await admin.api.put("/clients/ops", headers=admin.auth)
    problem(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}

    async def flood():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b" " * 1024

    chunked = await admin.api.post(
        "/clients", headers={**admin.auth, "content-type": "application/json"}, content=flood()
    )
    problem(chunked, 413)


async def test_the_database_failing_mid_run_is_a_503_problem_not_a_500(admin: Admin, tmp_path: Path) -> None:
    """The embedded database loses its tables under a running admin API: every answer is a 503
    problem document with Retry-After (the token check reads the clients table too)."""
    database = tmp_path / "bastion.db"
    if not database.exists():
        pytest.skip("the fault is made on the embedded default's SQLite file")
    assert (await admin.api.get("/clients", headers=admin.auth)).status_code == 200
    wipe = sqlite3.connect(database)
    wipe.executescript("DROP TABLE clients; DROP TABLE users;")
    wipe.close()
    admin.services.clients.forget(admin.ops_id)
    for method, path, body in (
        ("GET", "/clients", None),
        ("POST", "/clients", {"name": "x", "grant_types": ["client_credentials"]}),
        ("GET", "/users", None),
    ):
        answer = await admin.api.request(method, path, headers=admin.auth, json=body)
        assert answer.status_code == 503, (method, path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"]
        assert "Traceback" not in answer.text

"""``POST /revocations``: the revocation list, through the real ASGI app, on SQLite and PostgreSQL.

Who may read it (client authentication as for introspection, and the ``bastion:revocations``
scope), what it holds (revoked unexpired ``jti`` values, disabled clients), and the cursor that
makes a poll return only what changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bastion.ops.audit import AuditLog
from bastion.server.app import create_app
from bastion.services.container import Services
from bastion.services.crypto import Sealer
from bastion.services.revocation_list import CURSOR_OVERLAP
from bastion.services.revocation_list import REVOCATIONS_SCOPE
from bastion.settings import AuthorizationServerSettings
from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.sql.migrate import migrate
from bastion.tokens import MAX_LEEWAY

ISSUER = "http://127.0.0.1:8000"
TTL = 900
#: An empty form has no body for httpx to label: say what it is.
FORM = {"content-type": "application/x-www-form-urlencoded"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Server:
    def __init__(self, stores: Stores, tmp: Path) -> None:
        self.stores = stores
        self.clock = Clock()
        self.services = Services.create(
            AuthorizationServerSettings(issuer=ISSUER),
            stores,
            Sealer(b"k" * 40),
            AuditLog(tmp / "audit.log"),
            clock=self.clock,
        )
        self.app = create_app(self.services)


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Server:
    if request.param == "sqlite":
        urls = (f"sqlite:///{tmp_path / 'b.db'}", f"sqlite:///{tmp_path / 'state.db'}")
        schema = None
    else:
        url, schema = request.getfixturevalue("postgres_schema")
        urls = (url, "memory://")

    async def migrated() -> None:
        stores = open_stores(*urls, schema=schema)
        try:
            await migrate(stores.db)
        finally:
            await stores.close()

    asyncio.run(migrated())
    return Server(open_stores(*urls, schema=schema), tmp_path)


@pytest.fixture
def client(server: Server) -> Iterator[TestClient]:
    with TestClient(server.app, base_url=ISSUER) as test_client:
        yield test_client
        test_client.portal.call(server.stores.close)  # type: ignore[union-attr]


def register(client: TestClient, server: Server, **kwargs: Any) -> tuple[str, str | None]:
    kwargs.setdefault("name", "svc")
    created, secret = client.portal.call(lambda: server.services.clients.create(**kwargs))  # type: ignore[union-attr]
    return created.client_id, secret


def issue(client: TestClient, cid: str, secret: str | None) -> str:
    response = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret or ""))
    assert response.status_code == 200
    return str(response.json()["access_token"])


def jti_of(client: TestClient, token: str, reader: tuple[str, str | None]) -> str:
    response = client.post("/introspect", data={"token": token}, auth=(reader[0], reader[1] or ""))
    return str(response.json()["jti"])


def revoke(client: TestClient, cid: str, secret: str | None, token: str) -> None:
    assert client.post("/revoke", data={"token": token}, auth=(cid, secret or "")).status_code == 200


def poll(client: TestClient, reader: tuple[str, str | None], cursor: str | None = None) -> dict[str, Any]:
    form = {} if cursor is None else {"cursor": cursor}
    response = client.post("/revocations", data=form, headers=FORM, auth=(reader[0], reader[1] or ""))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def test_only_authenticated_clients_with_the_scope_may_read_it(client: TestClient, server: Server) -> None:
    reader = register(client, server, scopes=(REVOCATIONS_SCOPE,))
    other = register(client, server, scopes=("read",))
    public = register(
        client,
        server,
        public=True,
        grant_types=("authorization_code",),
        redirect_uris=("https://app.example/cb",),
        scopes=(REVOCATIONS_SCOPE,),
    )

    anonymous = client.post("/revocations", headers=FORM)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_client"
    assert anonymous.headers["www-authenticate"].startswith("Basic ")
    assert anonymous.headers["cache-control"] == "no-store"

    wrong = client.post("/revocations", headers=FORM, auth=(reader[0], "not-the-secret"))
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"

    public_answer = client.post("/revocations", data={"client_id": public[0]})
    assert public_answer.status_code == 401
    assert public_answer.json()["error"] == "invalid_client"

    forbidden = client.post("/revocations", headers=FORM, auth=(other[0], other[1] or ""))
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == "access_denied"
    assert REVOCATIONS_SCOPE in forbidden.json()["error_description"]

    # client_secret_post works like client_secret_basic (RFC 6749 §2.3.1).
    posted = client.post("/revocations", data={"client_id": reader[0], "client_secret": reader[1] or ""})
    assert posted.status_code == 200
    assert posted.json()["jtis"] == []

    assert client.get("/revocations", auth=(reader[0], reader[1] or "")).status_code == 405
    malformed = client.post("/revocations", data={"cursor": "yesterday"}, auth=(reader[0], reader[1] or ""))
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "invalid_request"

    server.clock.now += 1  # past the client cache
    client.portal.call(server.services.clients.set_disabled, reader[0])  # type: ignore[union-attr]
    server.services.clients.forget(reader[0])
    assert client.post("/revocations", headers=FORM, auth=(reader[0], reader[1] or "")).status_code == 401


def test_a_poll_with_the_cursor_returns_only_what_changed(client: TestClient, server: Server) -> None:
    reader = register(client, server, scopes=(REVOCATIONS_SCOPE,))
    holder = register(client, server, scopes=("read",))
    first, second, kept = (issue(client, *holder) for _ in range(3))
    first_jti, second_jti = jti_of(client, first, reader), jti_of(client, second, reader)
    revoke(client, *holder, first)

    start = poll(client, reader)
    assert start["full"] is True
    assert [jti for jti, _ in start["jtis"]] == [first_jti]
    until = start["jtis"][0][1]
    assert until == pytest.approx(server.clock.now + TTL + MAX_LEEWAY, abs=2), "exp plus MAX_LEEWAY"
    assert start["clients"] == []
    cursor = start["cursor"]

    # Within CURSOR_OVERLAP of the cursor an entry may come again (applying it is idempotent).
    assert [jti for jti, _ in poll(client, reader, cursor)["jtis"]] == [first_jti]
    server.clock.now += CURSOR_OVERLAP + 1
    cursor = poll(client, reader, cursor)["cursor"]
    assert poll(client, reader, cursor)["jtis"] == [], "nothing changed since the cursor"
    revoke(client, *holder, second)
    changed = poll(client, reader, cursor)
    assert changed["full"] is False
    assert [jti for jti, _ in changed["jtis"]] == [second_jti], "the earlier revocation is not repeated"
    assert sorted(jti for jti, _ in poll(client, reader)["jtis"]) == sorted([first_jti, second_jti])
    assert jti_of(client, kept, reader) not in {jti for jti, _ in poll(client, reader)["jtis"]}

    # Within the overlap, a revocation stamped just before the cursor (another process's clock
    # running behind, a slow transaction) is still returned.
    late = issue(client, *holder)
    late_jti = jti_of(client, late, reader)
    cursor = poll(client, reader)["cursor"]
    server.clock.now -= 5
    revoke(client, *holder, late)
    server.clock.now += 5
    assert late_jti in {jti for jti, _ in poll(client, reader, cursor)["jtis"]}

    # Expired revocations leave the list; a cursor older than anything remembered gets it all.
    old_cursor = cursor
    server.clock.now += TTL + MAX_LEEWAY + CURSOR_OVERLAP + 10
    gone = poll(client, reader, old_cursor)
    assert gone["full"] is True
    assert gone["jtis"] == []


def test_disabled_clients_are_in_the_list(client: TestClient, server: Server) -> None:
    reader = register(client, server, scopes=(REVOCATIONS_SCOPE,))
    holder = register(client, server, scopes=("read",))
    cursor = poll(client, reader)["cursor"]
    server.clock.now += CURSOR_OVERLAP + 1
    disabled_at = server.clock.now
    client.portal.call(server.services.clients.set_disabled, holder[0])  # type: ignore[union-attr]

    for body in (poll(client, reader), poll(client, reader, cursor)):
        assert body["clients"] == [[holder[0], disabled_at, disabled_at + TTL + MAX_LEEWAY]]
    # Once every token it held has expired, a disabled client is no longer listed.
    server.clock.now += TTL + MAX_LEEWAY + 1
    assert poll(client, reader)["clients"] == []


def test_the_list_is_advertised_in_the_metadata(client: TestClient) -> None:
    metadata = client.get("/.well-known/oauth-authorization-server").json()
    assert metadata["revocation_list_endpoint"] == ISSUER + "/revocations"

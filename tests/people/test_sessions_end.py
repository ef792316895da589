"""A password reset, a disable or a delete ends every login session of the user, through the
whole ASGI app, on the embedded default (SQLite database, SQLite-file fast state), on memory
fast state, and on PostgreSQL with Redis.

After the change, every browser of the user is asked to sign in again (no code), a code issued
before it cannot be redeemed, no new refresh-token family appears, and the refresh tokens issued
before are refused - while another user's session carries on.
"""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import Cookie
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlalchemy import select

from bastion.services.container import Services
from bastion.services.users import create_user
from bastion.services.users import delete_user
from bastion.services.users import people
from bastion.services.users import set_disabled
from bastion.services.users import set_password
from bastion.storage.sql.schema_people import login_sessions
from bastion.storage.sql.schema_people import refresh_families

from .flows import PASSWORD
from .flows import VERIFIER
from .flows import query
from .support import CHEAP_PASSWORDS
from .test_endpoints import Harness
from .test_endpoints import authorize_url
from .test_endpoints import code_for
from .test_endpoints import make_harness

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture(params=["sqlite", "memory", "postgres+redis"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """The sign-in app on SQLite with SQLite-file fast state (the embedded default), on SQLite
    with memory fast state, and on PostgreSQL with Redis."""
    postgres = request.getfixturevalue("postgres_schema") if request.param == "postgres+redis" else None
    backend = "redis" if postgres else request.param
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    yield from make_harness(tmp_path, postgres=postgres, state=backend, redis_url=redis_url)


@dataclass
class Browser:
    """One browser's cookie jar, swapped into the harness's client for each request."""

    harness: Harness
    jar: list[Cookie]

    def use(self) -> None:
        self.harness.client.cookies.clear()
        for cookie in self.jar:
            self.harness.client.cookies.jar.set_cookie(cookie)

    def keep(self) -> None:
        self.jar = list(self.harness.client.cookies.jar)

    def sign_in(self, username: str = "alice", url: str | None = None) -> str:
        self.use()
        code = code_for(self.harness, url, username=username)
        self.keep()
        return code

    def authorize(self) -> str:
        """Where ``/authorize`` sends this browser: the client (with a code) or the login page."""
        self.use()
        response = self.harness.client.get(authorize_url())
        assert response.status_code == 302, response.text
        self.keep()
        return str(response.headers["location"])


def browser(harness: Harness) -> Browser:
    return Browser(harness, [])


def _token(harness: Harness, data: dict[str, str]) -> tuple[int, dict[str, Any]]:
    harness.client.cookies.clear()
    response = harness.client.post("/token", data=data)
    return response.status_code, response.json()


def refresh(harness: Harness, token: str) -> tuple[int, dict[str, Any]]:
    return _token(harness, {"grant_type": "refresh_token", "refresh_token": token, "client_id": "web"})


def redeem(harness: Harness, code: str) -> tuple[int, dict[str, Any]]:
    return _token(
        harness,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "https://app.example/cb",
            "code_verifier": VERIFIER,
            "client_id": "web",
        },
    )


def user_id(harness: Harness, username: str) -> str:
    user = harness.run(people(harness.services).users.get_user_by_username, username)
    assert user is not None
    return str(user.user_id)


async def _count(services: Services, table: Any, column: Any, value: str) -> int:
    async with services.stores.db.read() as conn:
        found = (await conn.execute(select(func.count()).select_from(table).where(column == value))).scalar()
    return int(found or 0)


def families_of(harness: Harness, subject: str) -> int:
    return int(harness.run(_count, harness.services, refresh_families, refresh_families.c.subject, subject))


def sessions_of(harness: Harness, subject: str) -> int:
    return int(harness.run(_count, harness.services, login_sessions, login_sessions.c.user_id, subject))


async def _reset(services: Services) -> None:
    await set_password(services, "alice", NEW_PASSWORD, passwords=CHEAP_PASSWORDS)


async def _disable(services: Services) -> None:
    await set_disabled(services, "alice")


async def _delete(services: Services) -> None:
    assert await delete_user(services, "alice")


ACTIONS: dict[str, Callable[[Services], Awaitable[None]]] = {
    "set_password": _reset,
    "disable": _disable,
    "delete": _delete,
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_every_session_of_the_user_ends_and_others_carry_on(harness: Harness, action: str) -> None:
    harness.run(create_user, harness.services, "bob", PASSWORD, roles=["reader"], passwords=CHEAP_PASSWORDS)
    laptop, phone, bobs = browser(harness), browser(harness), browser(harness)
    status, laptop_tokens = redeem(harness, laptop.sign_in())
    assert status == 200, laptop_tokens
    status, phone_tokens = redeem(harness, phone.sign_in())
    assert status == 200, phone_tokens
    status, bob_tokens = redeem(harness, bobs.sign_in("bob"))
    assert status == 200, bob_tokens
    # A code the laptop got (signed in and consented already) but has not redeemed yet.
    pending_code = query(laptop.authorize())["code"]
    alice = user_id(harness, "alice")
    assert sessions_of(harness, alice) == 2
    families = families_of(harness, alice)
    assert families == 2

    harness.run(ACTIONS[action], harness.services)

    assert sessions_of(harness, alice) == 0
    ended = [e for e in harness.events if e.type == "login_sessions.ended"]
    assert [(e.subject, e.details["count"]) for e in ended] == [(alice, 2)]
    for device in (laptop, phone):
        # The old cookie is a stranger's now: the login page, no code.
        assert device.authorize().startswith("/login?tx=")
    # The code not yet redeemed dies with its login session.
    assert redeem(harness, pending_code) == (
        400,
        {"error": "invalid_grant", "error_description": "the login session of this code has ended"},
    )
    assert families_of(harness, alice) == families, "no new refresh-token family"
    for tokens in (laptop_tokens, phone_tokens):
        status, body = refresh(harness, tokens["refresh_token"])
        assert (status, body["error"]) == (400, "invalid_grant")
    # Bob is untouched: his browser still gets a code, his refresh token still works.
    assert "code" in query(bobs.authorize())
    status, body = refresh(harness, bob_tokens["refresh_token"])
    assert status == 200, body
    assert sessions_of(harness, user_id(harness, "bob")) == 1


def test_re_enabling_a_user_does_not_bring_sessions_back(harness: Harness) -> None:
    laptop = browser(harness)
    status, tokens = redeem(harness, laptop.sign_in())
    assert status == 200, tokens
    harness.run(set_disabled, harness.services, "alice")
    harness.run(set_disabled, harness.services, "alice", False)
    assert laptop.authorize().startswith("/login?tx=")
    assert refresh(harness, tokens["refresh_token"])[0] == 400
    # Signing in again works and starts a fresh session.
    status, again = redeem(harness, laptop.sign_in())
    assert status == 200, again


def test_logout_ends_the_session_in_the_index(harness: Harness) -> None:
    laptop = browser(harness)
    laptop.sign_in()
    alice = user_id(harness, "alice")
    assert sessions_of(harness, alice) == 1
    laptop.use()
    page = harness.client.get("/logout")
    assert page.status_code == 200
    csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    done = harness.client.post("/logout", data={"csrf_token": csrf})
    assert done.status_code == 200, done.text
    assert sessions_of(harness, alice) == 0


def test_sign_in_again_in_one_browser_replaces_its_session(harness: Harness) -> None:
    laptop = browser(harness)
    laptop.sign_in()
    # prompt=login: the same browser signs in again; its old session id is ended.
    laptop.sign_in(url=authorize_url(prompt="login"))
    assert sessions_of(harness, user_id(harness, "alice")) == 1

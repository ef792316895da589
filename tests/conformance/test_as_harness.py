"""The harness of the authorization-server conformance tests, and a check that it works.

The people tests' :func:`tests.people.test_endpoints.make_harness` builds the whole ASGI app
(sign-in routes included) over SQLite and SQLite-file fast state, on the real clock. The
conformance tests need to move time (code expiry, ``max_age``, refresh idle and absolute
lifetimes), so :func:`make_clocked_harness` builds the same app with a settable
:class:`~tests.people.support.Clock` passed to every service, and settings of the test's
choosing. The browser helpers (``login``, ``consent``, ``code_for``, ``exchange``) of the people
tests work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bastion.protocol import jose
from bastion.protocol.models import Client
from tests.people.flows import query
from tests.people.support import Clock
from tests.people.test_endpoints import ISSUER
from tests.people.test_endpoints import Harness
from tests.people.test_endpoints import authorize_url
from tests.people.test_endpoints import code_for
from tests.people.test_endpoints import consent
from tests.people.test_endpoints import exchange
from tests.people.test_endpoints import make_harness

#: The redirect URI of the confidential client ``conf``.
CONF_REDIRECT = "https://conf.example/cb"


@dataclass
class ClockedHarness(Harness):
    """The people tests' harness plus the clock every service reads."""

    clock: Clock

    def tick(self, seconds: float) -> None:
        """Move time forward."""
        self.clock.now += seconds

    def confidential_client(self, **overrides: Any) -> tuple[Client, str]:
        """Register the confidential client ``conf``; returns it and its secret."""
        options: dict[str, Any] = {
            "name": "Back office",
            "public": False,
            "grant_types": ["authorization_code", "refresh_token"],
            "scopes": ["openid", "profile", "email", "offline_access", "orders:read"],
            "redirect_uris": [CONF_REDIRECT],
            "post_logout_redirect_uris": ["https://conf.example/bye"],
            "client_id": "conf",
        }
        options.update(overrides)
        created, secret = self.run(self.services.clients.create, **options)
        assert secret is not None
        return created, secret


def make_clocked_harness(
    tmp_path: Path,
    *,
    issuer: str = ISSUER,
    postgres: tuple[str, str] | None = None,
    **settings: Any,
) -> Iterator[ClockedHarness]:
    """The authorization server with sign-in routes, the public client ``web``, the role
    ``reader`` and the user ``alice``, every service on one settable clock.

    Args:
        tmp_path: where the SQLite database and the audit log go.
        issuer: the issuer identifier.
        postgres: ``(url, schema)`` of a PostgreSQL schema to use instead of SQLite (the
            ``postgres_schema`` fixture).
        settings: further :class:`AuthorizationServerSettings` fields.
    """
    clock = Clock()
    for harness in make_harness(
        tmp_path,
        issuer,
        postgres=postgres,
        clock=clock,
        wrap=lambda client, services, events: ClockedHarness(client, services, events, clock),
        **settings,
    ):
        assert isinstance(harness, ClockedHarness)
        yield harness


def obtain_code(harness: Harness, url: str | None = None) -> str:
    """A code for ``url``, signing in and consenting only when the server asks for it."""
    response = harness.client.get(url or authorize_url())
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    if location.startswith("/login"):
        return code_for(harness, url)
    if location.startswith("/consent"):
        location = consent(harness, location).headers["location"]
    return query(location)["code"]


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a compact JWS (not verified: callers verify separately when it matters)."""
    payload: dict[str, Any] = orjson.loads(jose.parse_compact(token).payload)
    return payload


def test_clocked_harness_runs_a_sign_in_on_its_clock(tmp_path: Path) -> None:
    for harness in make_clocked_harness(tmp_path):
        start = int(harness.clock.now)
        code = code_for(harness, authorize_url())
        harness.tick(30)
        tokens = exchange(harness, code)
        claims = claims_of(tokens["id_token"])
        assert claims["auth_time"] == start
        assert claims["iat"] == start + 30
        assert tokens["token_type"] == "Bearer"

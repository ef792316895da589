"""Refresh-token reuse detection through the whole ASGI app (RFC 9700 §4.14.2, OAuth 2.1 §4.3.1).

By default a rotated refresh token presented again - even in the same second - is theft: the
answer is ``invalid_grant`` and the whole family dies with its access tokens. The opt-in
``insecure_refresh_reuse_window`` brings back the old behaviour: within it, the same pair again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conformance.test_as_harness import ClockedHarness
from tests.conformance.test_as_harness import make_clocked_harness
from tests.conformance.test_as_harness import obtain_code
from tests.conformance.test_as_token import assert_error
from tests.conformance.test_as_token import introspect
from tests.conformance.test_as_token import refresh
from tests.conformance.test_as_token import resource_server
from tests.people.test_endpoints import exchange


def _userinfo_status(harness: ClockedHarness, access_token: str) -> int:
    response = harness.client.get("/userinfo", headers={"authorization": f"Bearer {access_token}"})
    return response.status_code


def _rotated_once(harness: ClockedHarness) -> tuple[dict[str, Any], dict[str, Any]]:
    first = exchange(harness, obtain_code(harness))
    second = refresh(harness, first["refresh_token"])
    assert second.status_code == 200, second.text
    body: dict[str, Any] = second.json()
    assert body["refresh_token"] != first["refresh_token"]
    return first, body


def test_default_has_no_reuse_window(tmp_path: Path) -> None:
    for harness in make_clocked_harness(tmp_path):
        assert harness.services.settings.insecure_refresh_reuse_window == 0


def test_rotated_token_presented_at_once_revokes_the_family_by_default(tmp_path: Path) -> None:
    for harness in make_clocked_harness(tmp_path):
        api = resource_server(harness)
        first, second = _rotated_once(harness)
        assert introspect(harness, second["access_token"], api)["active"] is True
        assert _userinfo_status(harness, second["access_token"]) == 200
        # The clock has not moved: 0 s after the rotation.
        assert_error(refresh(harness, first["refresh_token"]), 400, "invalid_grant")
        # The whole family is dead: the newest refresh token and every access token of it.
        assert_error(refresh(harness, second["refresh_token"]), 400, "invalid_grant")
        for access in (first["access_token"], second["access_token"]):
            assert introspect(harness, access, api) == {"active": False}
            assert _userinfo_status(harness, access) == 401
        reuse = [e for e in harness.events if e.type == "refresh_token.reuse_detected"]
        assert len(reuse) == 1
        assert not [e for e in harness.events if e.type == "refresh_token.grace_replay"]


def test_opt_in_window_replays_the_same_pair_then_counts_as_theft(tmp_path: Path) -> None:
    for harness in make_clocked_harness(tmp_path, insecure_refresh_reuse_window=5):
        api = resource_server(harness)
        first, second = _rotated_once(harness)
        harness.tick(5)
        again = refresh(harness, first["refresh_token"])
        assert again.status_code == 200, again.text
        assert again.json()["refresh_token"] == second["refresh_token"]
        assert again.json()["access_token"] == second["access_token"]
        assert introspect(harness, second["access_token"], api)["active"] is True
        harness.tick(0.5)
        assert_error(refresh(harness, first["refresh_token"]), 400, "invalid_grant")
        assert_error(refresh(harness, second["refresh_token"]), 400, "invalid_grant")
        assert introspect(harness, second["access_token"], api) == {"active": False}

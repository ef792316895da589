"""The audit trail of a realistic run through the real ASGI app: every expected event type is
there, every event from a request carries its request id and address, and no line holds any
token, code, secret or password the run handled. A last test checks that the flows tested here
and elsewhere emit every documented event type."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bastion.ops.audit import AuditEvent
from bastion.ops.audit_events import EVENT_TYPES
from bastion.services.users import set_disabled

from .flows import PASSWORD
from .flows import VERIFIER
from .flows import query
from .support import web_client
from .test_endpoints import Harness
from .test_endpoints import authorize_url
from .test_endpoints import code_for
from .test_endpoints import consent
from .test_endpoints import exchange
from .test_endpoints import login
from .test_endpoints import make_harness

#: What the run below must emit.
FLOW_TYPES = frozenset(
    {
        "key.created",
        "role.created",
        "user.created",
        "client.created",
        "token.issued",
        "login.failed",
        "login.succeeded",
        "consent.granted",
        "consent.denied",
        "authorization_code.issued",
        "authorization_code.replayed",
        "token.refreshed",
        "token.refused",
        "token.revoked",
        "refresh_token.reuse_detected",
        "refresh_token.revoked",
        "client.auth_failed",
        "client.auth_throttled",
        "client.rate_limited",
        "logout.succeeded",
        "login_sessions.ended",
        "user.disabled",
        "login.throttled",
    }
)
REQUEST_ID = "audit-run-7f3a"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_ADDRESS = "203.0.113.9"


def _token(harness: Harness, **data: str) -> Any:
    return harness.client.post("/token", data=data)


def _run_flows(harness: Harness, secrets: list[str]) -> None:
    client = harness.client
    services = harness.services
    _svc, svc_secret = harness.run(
        services.clients.create, name="svc", scopes=["orders:read"], client_id="svc", audience="https://api"
    )
    _rs, rs_secret = harness.run(services.clients.create, name="rs", client_id="rs")
    secrets += [svc_secret, rs_secret, PASSWORD, VERIFIER]

    machine = client.post("/token", data={"grant_type": "client_credentials"}, auth=("svc", svc_secret))
    assert machine.status_code == 200, machine.text
    secrets.append(machine.json()["access_token"])

    failed = login(harness, password="wrong horse battery")
    assert failed.status_code == 400
    secrets.append("wrong horse battery")
    first_code = code_for(harness)
    first = exchange(harness, first_code)
    secrets += [first_code, first["access_token"], first["refresh_token"], first["id_token"]]

    refreshed = _token(
        harness, grant_type="refresh_token", refresh_token=first["refresh_token"], client_id="web"
    )
    assert refreshed.status_code == 200, refreshed.text
    secrets += [
        refreshed.json()["access_token"],
        refreshed.json()["refresh_token"],
        refreshed.json()["id_token"],
    ]
    reuse = _token(harness, grant_type="refresh_token", refresh_token=first["refresh_token"], client_id="web")
    assert reuse.json()["error"] == "invalid_grant"
    replay = _token(
        harness,
        grant_type="authorization_code",
        code=first_code,
        redirect_uri="https://app.example/cb",
        code_verifier=VERIFIER,
        client_id="web",
    )
    assert replay.json()["error"] == "invalid_grant"

    # Signed in and consented: straight back with a code.
    second_code = query(client.get(authorize_url()).headers["location"])["code"]
    second = exchange(harness, second_code)
    secrets += [second_code, *(second[k] for k in ("access_token", "refresh_token", "id_token"))]
    revoked = client.post("/revoke", data={"token": second["refresh_token"], "client_id": "web"})
    assert revoked.status_code == 200
    third_code = query(client.get(authorize_url()).headers["location"])["code"]
    third = exchange(harness, third_code)
    secrets += [third_code, *(third[k] for k in ("access_token", "refresh_token", "id_token"))]
    assert (
        client.post("/revoke", data={"token": third["access_token"], "client_id": "web"}).status_code == 200
    )

    inactive = client.post("/introspect", data={"token": third["access_token"]}, auth=("rs", rs_secret))
    assert inactive.json() == {"active": False}
    live = client.post("/introspect", data={"token": machine.json()["access_token"]}, auth=("rs", rs_secret))
    assert live.json()["active"] is True
    wrong = client.post("/introspect", data={"token": "x"}, auth=("rs", "not-the-secret"))
    assert wrong.status_code == 401
    for _ in range(3):  # per_client_address = 2: the second failure locks the pair
        guessed = _token(harness, grant_type="client_credentials", client_id="svc", client_secret="guess-1")
    assert guessed.status_code == 429
    statuses = [
        client.post("/introspect", data={"token": "x"}, auth=("rs", rs_secret)).status_code for _ in range(4)
    ]
    assert statuses[-1] == 429, statuses  # burst 3, then one a minute
    secrets += ["not-the-secret", "guess-1"]

    harness.run(web_client, services, client_id="web2", name="Other")
    denied_url = authorize_url(client_id="web2")
    location = client.get(denied_url).headers["location"]
    assert location.startswith("/consent"), location
    denied = consent(harness, location, decision="deny")
    assert query(denied.headers["location"])["error"] == "access_denied"

    logout_url = "/logout?" + urlencode(
        {"id_token_hint": third["id_token"], "post_logout_redirect_uri": "https://app.example/bye"}
    )
    page = client.get(logout_url)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    assert client.post("/logout", data=fields).status_code == 303

    code_for(harness)  # a session again, which disabling alice ends
    harness.run(set_disabled, services, "alice", True)
    for _ in range(6):  # lockout_after = 4
        throttled = login(harness, username="mallory", password="guess-2")
    assert throttled.status_code == 429
    secrets.append("guess-2")


def test_a_full_run_audits_every_step_with_its_request_and_leaks_nothing(tmp_path: Path) -> None:
    harnesses = make_harness(
        tmp_path,
        peer="10.0.0.2",
        trusted_proxies=("10.0.0.0/8",),
        client_auth_throttle={"per_client_address": 2, "window": 60},
        client_rate_limit={"requests": 1, "per": 60, "burst": 3},
    )
    harness = next(harnesses)
    harness.client.headers.update(
        {
            "x-request-id": REQUEST_ID,
            "x-forwarded-for": CLIENT_ADDRESS,
            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
        }
    )
    secrets: list[str] = []
    _run_flows(harness, secrets)
    events = list(harness.events)
    with contextlib.suppress(StopIteration):
        next(harnesses)  # shut the app down: the audit log is flushed and closed

    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == len(events)
    written = [json.loads(line) for line in lines]
    assert {e["type"] for e in written} >= FLOW_TYPES, sorted(FLOW_TYPES - {e["type"] for e in written})
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"a token or secret in the audit trail: {line}"

    from_requests = [e for e in events if e.request_id is not None]
    assert {e.request_id for e in from_requests} == {REQUEST_ID}
    assert {e.address for e in from_requests} == {CLIENT_ADDRESS}
    assert {e.trace_id for e in from_requests} == {TRACE_ID}  # the gateway's access line has it too
    assert {line["trace_id"] for line in written if line["request_id"]} == {TRACE_ID}
    by_type: dict[str, AuditEvent] = {}
    for event in events:
        by_type.setdefault(event.type, event)  # the first of each type
    issued = by_type["token.issued"]
    assert (issued.actor, issued.client, issued.request_id) == ("svc", "svc", REQUEST_ID)
    assert issued.details["jti"]
    assert "access_token" not in issued.details
    assert by_type["login.failed"].reason == "wrong_password"
    assert by_type["login.failed"].client == "web"
    assert by_type["login.failed"].actor == "anonymous"
    assert by_type["refresh_token.reuse_detected"].outcome == "denied"
    assert by_type["refresh_token.reuse_detected"].client == "web"
    assert by_type["client.auth_failed"].details["endpoint"] == "introspect"
    assert by_type["client.rate_limited"].actor == "rs"
    assert by_type["consent.denied"].client == "web2"
    assert by_type["user.disabled"].actor == "system"


def test_every_documented_event_type_is_emitted_by_a_test() -> None:
    from tests.cli.test_audit import CLI_TYPES
    from tests.gateway.policy.test_policy_refusals import GATEWAY_TYPES
    from tests.ops.test_alerting import ALERT_TYPES
    from tests.server.admin.test_admin_api import ADMIN_TYPES
    from tests.services.test_keys import KEY_STEP_TYPES

    from .test_services import OTHER_PEOPLE_TYPES

    covered = (
        FLOW_TYPES
        | CLI_TYPES
        | KEY_STEP_TYPES
        | OTHER_PEOPLE_TYPES
        | GATEWAY_TYPES
        | ALERT_TYPES
        | ADMIN_TYPES
    )
    assert sorted(set(EVENT_TYPES) - covered) == []
    assert sorted(covered - set(EVENT_TYPES)) == []

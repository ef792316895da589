"""The admin API fuzzed from its OpenAPI document (``docs/admin-openapi.json``) on a real
``bastion serve``, with the same harness as the authorization server's machine endpoints.

The admin scope is read from the document's security schemes, so the test follows the admin API
as it is. Two
runs: with a Bastion access token carrying the admin scope, and without one. Each answer: no
5xx, conforms to the document, and every 4xx is ``application/problem+json`` (RFC 9457), a 401
with a ``Bearer`` challenge (RFC 6750 §3).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response

from tests.conformance.openapi_fuzz import examples
from tests.conformance.openapi_fuzz import fuzz
from tests.conformance.openapi_fuzz import problem_details_form
from tests.conformance.openapi_fuzz import url_client
from tests.e2e.harness import Bastion

DOCUMENT = Path(__file__).parents[2] / "docs" / "admin-openapi.json"
#: The scope used when the document names none in an OAuth 2.0 security scheme.
DEFAULT_SCOPE = "bastion:admin"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not DOCUMENT.exists(), reason="docs/admin-openapi.json does not exist: no admin API to fuzz yet"
    ),
]


def admin_scope(document: dict[str, Any]) -> str:
    """The scope the document's OAuth 2.0 security schemes ask for, else :data:`DEFAULT_SCOPE`."""
    scopes: list[str] = []
    for scheme in document.get("components", {}).get("securitySchemes", {}).values():
        for flow in scheme.get("flows", {}).values():
            scopes += list(flow.get("scopes", {}))
    for requirement in document.get("security", []):
        for listed in requirement.values():
            scopes += listed
    return " ".join(dict.fromkeys(scopes)) or DEFAULT_SCOPE


def bearer_challenge(ctx: CheckContext, response: Response, case: Any) -> bool | None:
    """RFC 6750 §3: a 401 names the ``Bearer`` scheme."""
    if response.status_code == 401:
        challenge = next((v[0] for k, v in response.headers.items() if k.lower() == "www-authenticate"), "")
        assert challenge.startswith("Bearer"), f"401 without a Bearer challenge: {challenge!r}"
    return None


def wait_for(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        try:
            response = httpx.get(url + "/openapi.json", timeout=2)
            if response.status_code == 200:
                served: dict[str, Any] = response.json()
                return served
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the admin listener at {url} did not answer /openapi.json")
        time.sleep(0.1)


def test_fuzz_admin_api(tmp_path: Path) -> None:
    document = json.loads(DOCUMENT.read_text())
    server = Bastion(tmp_path)
    port = server.admin_port  # authorization_server.admin_listen, a free port of its own
    scope = admin_scope(document)
    created = server.cli_json("clients", "create", "--name", "admin-fuzz", "--scope", scope)
    server.start()
    try:
        token = httpx.post(
            server.issuer + "/token",
            data={"grant_type": "client_credentials", "scope": scope},
            auth=(created["client_id"], created["client_secret"]),
        )
        assert token.status_code == 200, token.text
        root = f"http://127.0.0.1:{port}"
        served = wait_for(root)
        served.pop("servers", None)
        expected = {name: value for name, value in document.items() if name != "servers"}
        assert served == expected, "docs/admin-openapi.json differs from the document the admin API serves"
        base = urlsplit((document.get("servers") or [{"url": ""}])[0]["url"]).path.rstrip("/")
        checks = [problem_details_form, bearer_challenge]
        with url_client(root + base) as client:
            fuzz(
                client,
                document,
                authorization="Bearer " + token.json()["access_token"],
                max_examples=examples(15),
                extra=checks,
            )
            fuzz(client, document, max_examples=examples(5), extra=checks)
    finally:
        server.stop()

"""The OpenAPI document the authorization server serves at ``/openapi.json``: the copy in
docs/ is the same, and only what the server serves is described."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bastion.server.openapi import openapi_document
from tests.people.test_endpoints import Harness
from tests.people.test_endpoints import make_harness

DOCS = Path(__file__).parents[2] / "docs" / "openapi.json"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_the_served_document_is_the_one_in_docs(harness: Harness) -> None:
    response = harness.client.get("/openapi.json")
    assert response.status_code == 200
    served = response.json()
    assert served.pop("servers") == [{"url": harness.services.settings.issuer}]
    assert served == json.loads(DOCS.read_text()), (
        "regenerate: python -c 'import json; from bastion.server.openapi import openapi_document; "
        "print(json.dumps(openapi_document(), indent=2, ensure_ascii=False))' > docs/openapi.json"
    )
    assert served == openapi_document()


def test_without_sign_in_only_the_machine_grants_are_described(client: TestClient) -> None:
    # tests/server/conftest.py: the app without the sign-in routes.
    document = client.get("/openapi.json").json()
    assert "/.well-known/openid-configuration" not in document["paths"]
    assert "/token" in document["paths"]
    variants = document["paths"]["/token"]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"
    ]["schema"]["oneOf"]
    assert [v["properties"]["grant_type"]["const"] for v in variants] == ["client_credentials"]


def test_the_document_is_not_advertised(harness: Harness) -> None:
    metadata = harness.client.get("/.well-known/openid-configuration").json()
    assert not any("openapi" in str(value) for value in metadata.values())

"""The admin API's OpenAPI document: served without a token, equal to docs/admin-openapi.json,
and true to the routes (every path and method, closed request schemas, bearer security)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli
from bastion.server.admin.app import all_operations
from bastion.server.admin.app import openapi_document
from bastion.server.admin.routing import routes

from .conftest import Admin

DOC = Path(__file__).parents[3] / "docs" / "admin-openapi.json"


def test_the_document_in_docs_matches_the_api() -> None:
    result = CliRunner().invoke(cli, ["admin", "openapi"])
    assert result.exit_code == 0
    assert DOC.read_text() == result.output, "regenerate: bastion admin openapi > docs/admin-openapi.json"


def test_every_route_is_described_with_closed_bodies_and_bearer_security() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    described = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    served = {
        (route.path.replace(":path", ""), method)
        for route in routes(all_operations(None))  # type: ignore[arg-type]
        for method in (route.methods or ())
        if method != "HEAD"
    }
    assert described == served
    schemas = doc["components"]["schemas"]
    for item in doc["paths"].values():
        for operation in item.values():
            assert operation["security"] == [{"bearer": ["bastion:admin"]}]
            assert {"401", "403"} <= set(operation["responses"])
            body = operation.get("requestBody")
            if body is not None:
                name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                assert schemas[name]["additionalProperties"] is False, name
                assert {"400", "413", "415"} <= set(operation["responses"])


@pytest.mark.anyio
async def test_the_document_is_served_without_a_token(admin: Admin) -> None:
    response = await admin.api.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads(DOC.read_text())
    assert not [e for e in admin.events if e.type == "admin.call"]

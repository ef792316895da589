"""The fuzz harness fails when it should: a 5xx, an error outside its protocol's form, or an
answer the document does not describe each fail the run."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.conformance.openapi_fuzz import fuzz
from tests.conformance.openapi_fuzz import oauth_error_form
from tests.conformance.openapi_fuzz import problem_details_form

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def document(path: str, responses: dict[str, Any]) -> dict[str, Any]:
    body = {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            path: {
                "post": {
                    "requestBody": {
                        "required": True,
                        "content": {"application/x-www-form-urlencoded": {"schema": body}},
                    },
                    "responses": responses,
                }
            }
        },
    }


def app_answering(status: int, body: dict[str, Any], media_type: str = "application/json") -> Starlette:
    async def endpoint(_: Request) -> Response:
        return JSONResponse(body, status, media_type=media_type, headers={"cache-control": "no-store"})

    return Starlette(routes=[Route("/introspect", endpoint, methods=["POST"])])


def run(app: Starlette, responses: dict[str, Any], check: Any) -> None:
    with TestClient(app, base_url="http://testserver") as client:
        fuzz(client, document("/introspect", responses), max_examples=3, extra=[check])


def failure(app: Starlette, responses: dict[str, Any], check: Any) -> str:
    """The messages of the run's failures (schemathesis raises a group of them)."""
    try:
        run(app, responses, check)
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is the latter
        messages = [str(exc)]
        if isinstance(exc, BaseExceptionGroup):
            messages += [str(inner) for inner in exc.exceptions]
        return "\n".join(messages)
    raise AssertionError("the run passed")


def json_response(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {"description": "d", "content": {media_type: {"schema": schema}}}


def test_a_server_error_fails_the_run() -> None:
    assert "answered 500" in failure(
        app_answering(500, {"error": "server_error"}), {"500": json_response(ERROR)}, oauth_error_form
    )


def test_an_unregistered_oauth_error_code_fails_the_run() -> None:
    assert "unregistered error code" in failure(
        app_answering(400, {"error": "bogus"}), {"400": json_response(ERROR)}, oauth_error_form
    )


def test_an_oauth_401_without_a_challenge_fails_the_run() -> None:
    app = app_answering(401, {"error": "invalid_client"})
    assert "401 without a Basic challenge" in failure(app, {"401": json_response(ERROR)}, oauth_error_form)


def test_an_undocumented_status_fails_the_run() -> None:
    assert "Undocumented" in failure(
        app_answering(400, {"error": "invalid_request"}), {"200": json_response({})}, oauth_error_form
    )


def test_a_problem_whose_status_disagrees_fails_the_run() -> None:
    problem = {"type": "about:blank", "title": "Bad", "status": 404}
    app = app_answering(400, problem, "application/problem+json")
    assert "status member 404 on a 400" in failure(
        app, {"400": json_response({"type": "object"}, "application/problem+json")}, problem_details_form
    )


def test_conforming_answers_pass() -> None:
    run(app_answering(400, {"error": "invalid_request"}), {"400": json_response(ERROR)}, oauth_error_form)
    problem = {"type": "about:blank", "title": "Bad", "status": 400}
    app = app_answering(400, problem, "application/problem+json")
    run(app, {"400": json_response({"type": "object"}, "application/problem+json")}, problem_details_form)

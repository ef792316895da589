"""Fuzz an HTTP API from its OpenAPI document with schemathesis, and check every answer.

:func:`fuzz` drives any API Bastion serves: give it a client already pointed at the server (a
Starlette ``TestClient`` over the real ASGI app, or an ``httpx`` client on a real server's
loopback URL, see :func:`url_client`), the OpenAPI document, and the ``Authorization`` header to
send (``None`` for the unauthenticated run). schemathesis generates the requests, valid
(positive) and invalid (negative), from the document; each is sent through that client and its
answer checked:

- no 5xx (``not_a_server_error``);
- status, content type, documented headers and body conform to the document;
- the checks passed in ``extra``: :func:`oauth_error_form` (RFC 6749 / 7662 / 7009 errors) and
  :func:`problem_details_form` (RFC 9457) are here.

Runs are bounded and deterministic: ``derandomize`` and a fixed number of examples per operation
and mode, no example database. ``BASTION_FUZZ_EXAMPLES`` raises the number for a longer local
session, and ``BASTION_FUZZ_SEED`` replaces ``derandomize`` with that seed (see docs/testing.md).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import requests
import schemathesis
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import seed
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import content_type_conformance
from schemathesis.specs.openapi.checks import response_headers_conformance
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.checks import status_code_conformance

Check = Callable[[CheckContext, Response, Case], bool | None]

#: RFC 6749 §5.2 codes, §4.1.2.1 codes the token endpoint answers with (registered in §11.4),
#: RFC 7009 §2.2.1 and RFC 8707 §2.
OAUTH_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "temporarily_unavailable",
        "unsupported_token_type",
        "invalid_target",
    }
)
_DESCRIPTION = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]*")


def examples(default: int) -> int:
    """Examples per operation and mode: ``BASTION_FUZZ_EXAMPLES`` if set, else ``default``."""
    return int(os.environ.get("BASTION_FUZZ_EXAMPLES") or default)


def _not_a_server_error(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    # schemathesis' own not_a_server_error re-sends some probes through its transport, which
    # cannot reach an in-process app held by another client: the rule itself is this.
    assert response.status_code < 500, f"{case.method} {case.path} answered {response.status_code}"
    return None


def _header(response: Response, name: str) -> str | None:
    for key, values in response.headers.items():
        if key.lower() == name:
            return values[0]
    return None


def _json_body(response: Response) -> Any:
    content_type = (_header(response, "content-type") or "").split(";")[0].strip()
    assert content_type in ("application/json", "application/problem+json"), (
        f"{response.status_code} with Content-Type {content_type!r}"
    )
    return json.loads(response.content)


def oauth_error_form(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx of a form endpoint is RFC 6749 §5.2 JSON, in the status its code calls for.

    - ``{"error": <registered code>}``, ``error_description`` within RFC 6749's characters,
      ``Cache-Control: no-store``, never ``application/problem+json``;
    - ``invalid_client`` is 401 with ``WWW-Authenticate: Basic`` (§5.2), and every 401 is it;
    - ``temporarily_unavailable`` is 429 or 503 with ``Retry-After``; ``access_denied`` 403;
      405 names ``Allow: POST``; the rest are 400 (413 for an oversized body);
    - a 200 from introspection is ``{"active": false}`` alone or an active token's claims
      (RFC 7662 §2.2); a 200 from revocation is an empty object (RFC 7009 §2.2).
    """
    status = response.status_code
    path = case.operation.path
    if status == 200:
        body = _json_body(response)
        if path == "/introspect":
            assert isinstance(body.get("active"), bool), body
            if not body["active"]:
                assert body == {"active": False}, f"an inactive answer says more: {body}"
        elif path == "/revoke":
            assert body == {}, body
        return None
    if not 400 <= status < 500:
        return None
    content_type = (_header(response, "content-type") or "").split(";")[0].strip()
    assert content_type == "application/json", f"{status} with Content-Type {content_type!r}"
    assert "no-store" in (_header(response, "cache-control") or ""), "an error without no-store"
    body = _json_body(response)
    assert isinstance(body, dict), body
    error = body.get("error")
    assert error in OAUTH_ERROR_CODES, f"unregistered error code {error!r}"
    assert set(body) <= {"error", "error_description", "error_uri"}, body
    description = body.get("error_description")
    if description is not None:
        assert isinstance(description, str), body
        assert _DESCRIPTION.fullmatch(description), (
            f"error_description outside RFC 6749's set: {description!r}"
        )
    if status == 401 or error == "invalid_client":
        assert (status, error) == (401, "invalid_client"), body
        challenge = _header(response, "www-authenticate") or ""
        assert challenge.startswith("Basic "), f"401 without a Basic challenge: {challenge!r}"
    elif error == "temporarily_unavailable":
        assert status in (429, 503), body
        assert (_header(response, "retry-after") or "").isdigit(), "no Retry-After"
    elif error == "access_denied":
        assert status == 403, body
    elif status == 405:
        assert error == "invalid_request"
        assert _header(response, "allow") == "POST"
    else:
        assert status in (400, 413), f"{error} answered {status}"
    return None


def problem_details_form(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx is ``application/problem+json`` (RFC 9457): an object whose ``status``, when
    present, is the response's, with string ``title``/``detail`` and a URI-reference ``type``."""
    status = response.status_code
    if not 400 <= status < 500:
        return None
    content_type = (_header(response, "content-type") or "").split(";")[0].strip()
    assert content_type == "application/problem+json", f"{status} with Content-Type {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict), body
    if "status" in body:
        assert body["status"] == status, f"status member {body['status']!r} on a {status}"
    for member in ("title", "detail", "type", "instance"):
        if member in body:
            assert isinstance(body[member], str), body
    return None


#: What every run checks, before the extra checks.
BASE_CHECKS: tuple[Check, ...] = (
    _not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)


@dataclass
class FuzzReport:
    """What a run sent and got back: how many requests per (operation, status)."""

    statuses: dict[tuple[str, int], int] = field(default_factory=dict)

    def add(self, label: str, status: int) -> None:
        key = (label, status)
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def reached(self, label: str, status: int) -> bool:
        """Whether ``label`` (``"POST /token"``) answered ``status`` at least once."""
        return self.statuses.get((label, status), 0) > 0


def url_client(url: str) -> httpx.Client:
    """A client for a server listening at ``url`` (its loopback address)."""
    return httpx.Client(base_url=url, timeout=30.0, follow_redirects=False)


def _send(client: httpx.Client, case: Case, headers: Mapping[str, str]) -> httpx.Response:
    """Send ``case`` through ``client``, encoded exactly as schemathesis' own transport would."""
    base = str(client.base_url).rstrip("/")
    kwargs = case.as_transport_kwargs(base_url=base, headers=dict(headers))
    prepared = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        data=kwargs.get("data"),
        json=kwargs.get("json"),
        cookies=kwargs.get("cookies"),
    ).prepare()
    body = prepared.body
    content = body.encode() if isinstance(body, str) else body
    url = urlsplit(prepared.url or "")
    target = url.path + (f"?{url.query}" if url.query else "")
    # A field value has no leading or trailing whitespace (RFC 9110 §5.5): a generated
    # "Bearer " (an empty token) goes out as "Bearer", which the server must refuse all the same.
    sent = {name: value.strip() for name, value in prepared.headers.items()}
    return client.request(prepared.method or "GET", target, headers=sent, content=content or b"")


def fuzz(
    client: httpx.Client,
    document: dict[str, Any],
    *,
    authorization: str | None = None,
    max_examples: int = 25,
    extra: Iterable[Check] = (),
    values: Mapping[str, st.SearchStrategy[str | None]] | None = None,
    modes: Iterable[GenerationMode] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
    operations: Callable[[str], bool] = lambda label: True,
) -> FuzzReport:
    """Fuzz every operation of ``document`` through ``client`` and check each answer.

    Args:
        client: a client with ``base_url`` set: ``TestClient(app)`` or :func:`url_client`.
        document: the OpenAPI document (its ``servers`` are ignored: ``client`` says where).
        authorization: the ``Authorization`` header sent with every request, if any.
        max_examples: examples per operation and generation mode (see :func:`examples`).
        extra: checks beyond :data:`BASE_CHECKS`.
        values: real values (tokens, codes, client ids) that replace generated body fields of
            the same name in about half of the examples, so the fuzz reaches the logic behind
            them and not only the "unknown token" paths; ``None`` drops the field (a
            ``client_secret`` in the body beside a Basic header is refused before any logic).
        modes: positive (valid by the document) and/or negative (invalid) examples.
        operations: which operations (``"POST /token"``) to fuzz.

    Raises:
        AssertionError: a check failed (hypothesis shrinks and reports the smallest example).
    """
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": authorization} if authorization is not None else {}
    checks = [*BASE_CHECKS, *extra]
    replacements = dict(values or {})
    report = FuzzReport()
    pinned = os.environ.get("BASTION_FUZZ_SEED")
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operations(operation.label):
            continue
        inputs = (operation.body, operation.query, operation.headers, operation.path_parameters)
        for mode in modes:
            if mode is GenerationMode.NEGATIVE and not any(len(part) for part in inputs):
                continue  # nothing to make invalid
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=max_examples,
                derandomize=pinned is None,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy, data=st.data())
            def run(case: Case, data: st.DataObject) -> None:
                if isinstance(case.body, dict):
                    for name, values_of in replacements.items():
                        if name in case.body and data.draw(st.booleans(), label=f"real {name}"):
                            value = data.draw(values_of, label=name)
                            if value is None:
                                del case.body[name]
                            else:
                                case.body[name] = value
                response = _send(client, case, headers)
                report.add(case.operation.label, response.status_code)
                case.validate_response(response, checks=checks, headers=headers)

            if pinned is not None:
                run = seed(int(pinned))(run)
            try:
                run()
            except Unsatisfiable:
                # Every input the document allows is valid (optional strings only): no
                # negative example exists.
                if mode is not GenerationMode.NEGATIVE:
                    raise
    return report

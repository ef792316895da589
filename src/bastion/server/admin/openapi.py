"""The admin API's OpenAPI 3.1 document, made from the operation table and the body models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from bastion import __version__
from bastion.server.admin.auth import ADMIN_SCOPE
from bastion.server.admin.models import ProblemOut
from bastion.server.admin.problems import MEDIA_TYPE
from bastion.server.admin.routing import Operation

_PATH_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")
_PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "client_id": {"type": "string", "minLength": 1, "maxLength": 255},
    "username": {"type": "string", "minLength": 1, "maxLength": 200},
    "sid": {"type": "string", "minLength": 1, "maxLength": 64},
    "name": {"type": "string", "minLength": 1, "maxLength": 128},
    "kid": {"type": "string", "minLength": 1, "maxLength": 128},
    "network": {"type": "string", "minLength": 2, "maxLength": 64},
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No content",
    400: "Invalid request: the problem's `errors` name each field",
    401: "No valid access token (RFC 6750 challenge in WWW-Authenticate)",
    403: "The access token lacks the bastion:admin scope",
    404: "Not found",
    409: "Conflict: it exists already",
    413: "The body is too large",
    415: "The body is not application/json",
    503: "Storage is unavailable; retry later",
}


def document(operations: Sequence[Operation], models: Sequence[type[BaseModel]] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    used: list[type[BaseModel]] = [ProblemOut, *models]
    for op in operations:
        for model in (op.body, *op.responses.values()):
            if model is not None and model not in used:
                used.append(model)
    _, schemas = models_json_schema(
        [(m, "validation" if m is op_body(operations, m) else "serialization") for m in used],
        ref_template="#/components/schemas/{model}",
    )
    components = schemas.get("$defs", {})
    components["Problem"] = components.pop(ProblemOut.__name__)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        path = _PATH_PARAM.sub(r"{\1}", op.path)
        entry: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "security": [{"bearer": [ADMIN_SCOPE]}],
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _PARAM_SCHEMAS[name]}
            for name in _PATH_PARAM.findall(op.path)
        ]
        parameters += [
            {
                "name": p.name,
                "in": "query",
                "required": False,
                "description": p.description,
                "schema": p.schema,
                **({"style": "form", "explode": True} if p.repeated else {}),
            }
            for p in op.query
        ]
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": not op.body_optional,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}
                },
            }
        responses: dict[str, Any] = {}
        for status, model in sorted(op.responses.items()):
            if status >= 400:
                responses[str(status)] = _problem(_REASONS[status])
            elif model is None:
                responses[str(status)] = {"description": _REASONS[status]}
            else:
                responses[str(status)] = {
                    "description": _REASONS[status],
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                    },
                }
        errors = [401, 403, 503]
        if op.body is not None or op.query:
            errors.append(400)
        if op.body is not None:
            errors += [413, 415]
        if parameters and any(p["in"] == "path" for p in parameters):
            errors.append(404)
        for status in sorted(errors):
            responses.setdefault(str(status), _problem(_REASONS[status]))
        entry["responses"] = responses
        paths.setdefault(path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Bastion admin API",
            "version": __version__,
            "description": (
                "Administration of a Bastion authorization server: clients, users, roles, consents, "
                "sessions, signing keys, the gateway's bans and the audit trail. Served on its own "
                "listener (authorization_server.admin_listen). Every call needs an access token of "
                f"this server with the `{ADMIN_SCOPE}` scope; errors are RFC 9457 problem details. "
                "See docs/admin-api.md."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        f"An access token of this server carrying the `{ADMIN_SCOPE}` scope (client "
                        "credentials grant of a client allowed it)."
                    ),
                }
            },
        },
    }


def op_body(operations: Sequence[Operation], model: type[BaseModel]) -> type[BaseModel] | None:
    """``model`` when some operation takes it as its body (validation schema), else ``None``."""
    return model if any(op.body is model for op in operations) else None

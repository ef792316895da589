"""The OpenAPI 3.1 document of the authorization server's machine endpoints.

It describes what :mod:`bastion.server.endpoints` and :mod:`bastion.server.app` accept and
answer, for client developers and for the schemathesis fuzz run in the tests: ``/token`` (every
grant this server handles, ``client_secret_basic`` and ``client_secret_post``, RFC 6749 §5.2
errors), ``/introspect`` (RFC 7662), ``/revoke`` (RFC 7009), ``/revocations``, ``/jwks.json`` and
the two metadata documents. The interactive sign-in routes (``/authorize``, the login and consent
pages) are browser pages and are not described.

The document is served at ``/openapi.json`` and is advertised nowhere in the metadata: RFC 8414
and OpenID Connect Discovery are what clients read; this is documentation. A copy without
``servers`` lives in ``docs/openapi.json`` (a test keeps the two identical).
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Iterable
from typing import Any

#: RFC 6749 §5.2: error_description "MUST NOT include characters outside the set
#: %x20-21 / %x23-5B / %x5D-7E" (the same rule as :mod:`bastion.protocol.errors`).
DESCRIPTION_PATTERN = r"^[\x20-\x21\x23-\x5B\x5D-\x7E]*$"

#: The grant types the token endpoint can handle (the sign-in routes add the last two).
GRANT_TYPES = ("client_credentials", "authorization_code", "refresh_token")

#: Every path this module can describe, in document order.
PATHS = (
    "/token",
    "/introspect",
    "/revoke",
    "/revocations",
    "/jwks.json",
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
)

#: The error codes each form endpoint can answer with (RFC 6749 §5.2, plus §4.1.2.1's
#: ``temporarily_unavailable`` for throttling and outages, RFC 7009 §2.2.1's
#: ``unsupported_token_type`` and ``access_denied`` for the revocation list).
ERROR_CODES: dict[str, tuple[str, ...]] = {
    "/token": (
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "temporarily_unavailable",
    ),
    "/introspect": ("invalid_request", "invalid_client", "temporarily_unavailable"),
    "/revoke": (
        "invalid_request",
        "invalid_client",
        "unauthorized_client",
        "unsupported_token_type",
        "temporarily_unavailable",
    ),
    "/revocations": ("invalid_request", "invalid_client", "access_denied", "temporarily_unavailable"),
}

_REF = "#/components/schemas/"
_NO_STORE = {
    "description": "RFC 6749 §5.1: token responses are never cached.",
    "required": True,
    "schema": {"type": "string", "pattern": "no-store"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before trying again (RFC 9110 §10.2.3).",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_WWW_AUTHENTICATE = {
    "description": "RFC 6749 §5.2: a 401 names the authentication scheme (HTTP Basic).",
    "required": True,
    "schema": {"type": "string", "pattern": "^Basic realm="},
}


def _client_auth_properties() -> dict[str, Any]:
    return {
        "client_id": {
            "type": "string",
            "description": "The client (`client_secret_post`, or a public client identifying itself).",
        },
        "client_secret": {
            "type": "string",
            "description": "`client_secret_post` (RFC 6749 §2.3.1): not together with HTTP Basic.",
        },
    }


def _form(schema: dict[str, Any], description: str) -> dict[str, Any]:
    # RFC 6749 §3.1: unrecognized parameters are ignored; each is one string all the same
    # (a repeated parameter is refused).
    for variant in schema.get("oneOf", [schema]):
        variant["additionalProperties"] = {"type": "string"}
    return {
        "required": True,
        "description": description,
        "content": {"application/x-www-form-urlencoded": {"schema": schema}},
    }


def _json(schema_name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF + schema_name}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(codes: Iterable[str], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"Cache-Control": _NO_STORE, **(headers or {})},
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": _REF + "OAuthError"},
                        {"properties": {"error": {"enum": list(codes)}}},
                    ]
                }
            }
        },
    }
    return response


def _form_errors(path: str) -> dict[str, Any]:
    """The error responses every form endpoint shares (see ``FormEndpoint``)."""
    codes = ERROR_CODES[path]
    bad = [
        code for code in codes if code not in ("invalid_client", "temporarily_unavailable", "access_denied")
    ]
    responses = {
        "400": _error(bad, "The request is malformed or refused (RFC 6749 §5.2)."),
        "401": _error(
            ["invalid_client"],
            "Client authentication failed: unknown client, wrong secret, none sent, or a "
            "malformed `Authorization` header.",
            {"WWW-Authenticate": _WWW_AUTHENTICATE},
        ),
        "405": _error(
            ["invalid_request"],
            "Only POST is allowed.",
            {"Allow": {"required": True, "schema": {"type": "string", "const": "POST"}}},
        ),
        "413": _error(["invalid_request"], "The body exceeds `max_body_bytes`."),
        "429": _error(
            ["temporarily_unavailable"],
            "Too many failed client authentications, or over the client's request rate.",
            {"Retry-After": _RETRY_AFTER},
        ),
        "503": _error(
            ["temporarily_unavailable"],
            "A store cannot answer right now; retry later.",
            {"Retry-After": _RETRY_AFTER},
        ),
    }
    if "access_denied" in codes:
        responses["403"] = _error(["access_denied"], "The client may not read this.")
    return dict(sorted(responses.items()))


def _form_post(
    path: str,
    *,
    summary: str,
    description: str,
    body: dict[str, Any],
    ok: dict[str, Any],
    public: bool,
) -> dict[str, Any]:
    # client_secret_post and a public client's client_id are body parameters, which OpenAPI
    # security schemes cannot name: the empty requirement stands for them.
    security: list[dict[str, list[str]]] = [{"client_secret_basic": []}, {}]
    auth = (
        "Client authentication: `client_secret_basic` (HTTP Basic) or `client_secret_post` "
        "(`client_id` and `client_secret` in the body), exactly one"
        + ("; a public client sends `client_id` alone. " if public else "; confidential clients only. ")
    )
    return {
        "post": {
            "operationId": path.strip("/").replace(".", "_").replace("/", "_"),
            "summary": summary,
            "description": auth + description,
            "security": security,
            "requestBody": body,
            "responses": {"200": ok, **_form_errors(path)},
        }
    }


def _token_request(grant_types: Collection[str]) -> dict[str, Any]:
    variants: list[dict[str, Any]] = []
    if "client_credentials" in grant_types:
        variants.append(
            {
                "title": "client_credentials (RFC 6749 §4.4)",
                "type": "object",
                "required": ["grant_type"],
                "properties": {
                    "grant_type": {"const": "client_credentials"},
                    "scope": {"$ref": _REF + "Scope"},
                    "resource": {"$ref": _REF + "Resource"},
                    **_client_auth_properties(),
                },
            }
        )
    if "authorization_code" in grant_types:
        variants.append(
            {
                "title": "authorization_code with PKCE (RFC 6749 §4.1.3, RFC 7636 §4.5)",
                "type": "object",
                "required": ["grant_type", "code", "redirect_uri", "code_verifier"],
                "properties": {
                    "grant_type": {"const": "authorization_code"},
                    "code": {"type": "string", "minLength": 1},
                    "redirect_uri": {"type": "string", "format": "uri"},
                    "code_verifier": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9._~-]{43,128}$",
                        "description": "RFC 7636 §4.1; the challenge was S256.",
                    },
                    "resource": {"$ref": _REF + "Resource"},
                    **_client_auth_properties(),
                },
            }
        )
    if "refresh_token" in grant_types:
        variants.append(
            {
                "title": "refresh_token (RFC 6749 §6)",
                "type": "object",
                "required": ["grant_type", "refresh_token"],
                "properties": {
                    "grant_type": {"const": "refresh_token"},
                    "refresh_token": {"type": "string", "minLength": 1},
                    "scope": {"$ref": _REF + "Scope"},
                    "resource": {"$ref": _REF + "Resource"},
                    **_client_auth_properties(),
                },
            }
        )
    return {"oneOf": variants}


def _schemas() -> dict[str, Any]:
    jwk_private = dict.fromkeys(("d", "p", "q", "dp", "dq", "qi", "k", "oth"), False)
    return {
        "OAuthError": {
            "description": "RFC 6749 §5.2 error response.",
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "error_description": {"type": "string", "pattern": DESCRIPTION_PATTERN},
                "error_uri": {"type": "string", "format": "uri"},
            },
        },
        "Scope": {
            "description": "Space-separated scope tokens (RFC 6749 §3.3).",
            "type": "string",
            "pattern": r"^[\x21\x23-\x5B\x5D-\x7E]+( [\x21\x23-\x5B\x5D-\x7E]+)*$",
        },
        "Resource": {
            "description": "RFC 8707 resource indicator: the client's registered audience.",
            "type": "string",
            "format": "uri",
        },
        "TokenResponse": {
            "description": "RFC 6749 §5.1 (plus `id_token`, OpenID Connect Core §3.1.3.3).",
            "type": "object",
            "required": ["access_token", "token_type", "expires_in"],
            "properties": {
                "access_token": {"type": "string", "minLength": 1},
                "token_type": {"const": "Bearer"},
                "expires_in": {"type": "integer", "minimum": 1},
                "scope": {"type": "string"},
                "refresh_token": {"type": "string", "minLength": 1},
                "id_token": {"type": "string", "minLength": 1},
            },
        },
        "IntrospectionResponse": {
            "description": 'RFC 7662 §2.2: `{"active": false}` alone for anything not live.',
            "oneOf": [
                {
                    "type": "object",
                    "required": ["active"],
                    "properties": {"active": {"const": False}},
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "required": ["active", "token_type", "client_id", "iss", "exp"],
                    "properties": {
                        "active": {"const": True},
                        "token_type": {"enum": ["Bearer", "refresh_token"]},
                        "scope": {"type": "string"},
                        "client_id": {"type": "string"},
                        "sub": {"type": "string"},
                        "aud": {
                            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
                        },
                        "iss": {"type": "string"},
                        "exp": {"type": "integer"},
                        "iat": {"type": "integer"},
                        "jti": {"type": "string"},
                    },
                },
            ],
        },
        "RevocationList": {
            "description": "Revoked token ids and disabled clients, for services that poll.",
            "type": "object",
            "required": ["jtis", "clients", "cursor", "full"],
            "additionalProperties": False,
            "properties": {
                "jtis": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "description": "[token id, refuse until (epoch seconds)]",
                        "items": {"type": ["string", "number"]},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                },
                "clients": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "description": "[client id, tokens issued before, refuse until]",
                        "items": {"type": ["string", "number"]},
                        "minItems": 3,
                        "maxItems": 3,
                    },
                },
                "cursor": {"type": "string"},
                "full": {"type": "boolean"},
            },
        },
        "JWKSet": {
            "description": "RFC 7517 §5: public members only.",
            "type": "object",
            "required": ["keys"],
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["kty", "kid", "alg", "use"],
                        "properties": {
                            "kty": {"enum": ["EC", "RSA", "OKP"]},
                            "kid": {"type": "string", "minLength": 1},
                            "alg": {"type": "string"},
                            "use": {"const": "sig"},
                            "crv": {"type": "string"},
                            "x": {"type": "string"},
                            "y": {"type": "string"},
                            "n": {"type": "string"},
                            "e": {"type": "string"},
                            **jwk_private,
                        },
                    },
                }
            },
        },
        "AuthorizationServerMetadata": {
            "description": "RFC 8414 §2.",
            "type": "object",
            "required": [
                "issuer",
                "token_endpoint",
                "jwks_uri",
                "response_types_supported",
                "grant_types_supported",
            ],
            "properties": {
                "issuer": {"type": "string", "format": "uri"},
                "token_endpoint": {"type": "string", "format": "uri"},
                "jwks_uri": {"type": "string", "format": "uri"},
                "introspection_endpoint": {"type": "string", "format": "uri"},
                "revocation_endpoint": {"type": "string", "format": "uri"},
                "response_types_supported": {"type": "array", "items": {"type": "string"}},
                "grant_types_supported": {"type": "array", "items": {"type": "string"}},
                "code_challenge_methods_supported": {
                    "type": "array",
                    "items": {"const": "S256"},
                },
            },
        },
        "OpenIDProviderMetadata": {
            "description": "OpenID Connect Discovery 1.0 §3 (over the RFC 8414 document).",
            "allOf": [
                {"$ref": _REF + "AuthorizationServerMetadata"},
                {
                    "type": "object",
                    "required": [
                        "authorization_endpoint",
                        "subject_types_supported",
                        "id_token_signing_alg_values_supported",
                    ],
                    "properties": {
                        "authorization_endpoint": {"type": "string", "format": "uri"},
                        "userinfo_endpoint": {"type": "string", "format": "uri"},
                        "subject_types_supported": {"type": "array", "items": {"type": "string"}},
                        "id_token_signing_alg_values_supported": {
                            "type": "array",
                            "items": {"type": "string"},
                            "contains": {"const": "RS256"},
                        },
                    },
                },
            ],
        },
    }


def _paths(grant_types: Collection[str]) -> dict[str, Any]:
    token_fields = {"token": {"type": "string", "minLength": 1}}
    public_grants = [grant for grant in grant_types if grant != "client_credentials"]
    return {
        "/token": _form_post(
            "/token",
            summary="Token endpoint (RFC 6749 §3.2)",
            description=(
                f"Grant types: {', '.join(grant_types)}"
                + (f" (a public client: {', '.join(public_grants)} only)" if public_grants else "")
                + ". Parameters come once each, in the body only: secrets or tokens in the URL "
                "are refused."
            ),
            body=_form(_token_request(grant_types), "One grant's parameters."),
            ok=_json("TokenResponse", "Tokens issued.", {"Cache-Control": _NO_STORE}),
            public=bool(public_grants),
        ),
        "/introspect": _form_post(
            "/introspect",
            summary="Token introspection (RFC 7662)",
            description="RFC 7662 §2.1: the protected resource authenticates as a client.",
            body=_form(
                {
                    "type": "object",
                    "required": ["token"],
                    "properties": {
                        **token_fields,
                        "token_type_hint": {"type": "string"},
                        **_client_auth_properties(),
                    },
                },
                "The token to introspect; the hint is not needed (every kind is searched).",
            ),
            ok=_json(
                "IntrospectionResponse",
                "The token's state; unknown, expired or revoked tokens are inactive.",
                {"Cache-Control": _NO_STORE},
            ),
            public=False,
        ),
        "/revoke": _form_post(
            "/revoke",
            summary="Token revocation (RFC 7009)",
            description=(
                "A client revokes its own token; unknown, expired or malformed tokens are a no-op "
                "(200). Revoking a refresh token revokes its grant's access tokens too."
            ),
            body=_form(
                {
                    "type": "object",
                    "required": ["token"],
                    "properties": {
                        **token_fields,
                        "token_type_hint": {"enum": ["access_token", "refresh_token"]},
                        **_client_auth_properties(),
                    },
                },
                "The token to revoke; any other `token_type_hint` is `unsupported_token_type`.",
            ),
            ok={
                "description": "Revoked, or nothing to revoke (RFC 7009 §2.2).",
                "headers": {"Cache-Control": _NO_STORE},
                "content": {
                    "application/json": {"schema": {"type": "object", "maxProperties": 0}},
                },
            },
            public=True,
        ),
        "/revocations": _form_post(
            "/revocations",
            summary="Revocation list (Bastion's own)",
            description="Clients with the scope `bastion:revocations` only.",
            body=_form(
                {
                    "type": "object",
                    "properties": {
                        "cursor": {
                            "type": "string",
                            "description": "The `cursor` of the previous answer.",
                        },
                        **_client_auth_properties(),
                    },
                },
                "Optionally the cursor of the previous answer.",
            ),
            ok=_json(
                "RevocationList",
                "What was revoked or disabled (since the cursor).",
                {"Cache-Control": _NO_STORE},
            ),
            public=False,
        ),
        "/jwks.json": {
            "get": {
                "operationId": "jwks",
                "summary": "The public signing keys (RFC 7517)",
                "security": [],
                "responses": {"200": _json("JWKSet", "The JWK Set.")},
            }
        },
        "/.well-known/oauth-authorization-server": {
            "get": {
                "operationId": "oauth_authorization_server_metadata",
                "summary": "Authorization server metadata (RFC 8414)",
                "security": [],
                "responses": {"200": _json("AuthorizationServerMetadata", "The metadata.")},
            }
        },
        "/.well-known/openid-configuration": {
            "get": {
                "operationId": "openid_configuration",
                "summary": "OpenID Provider metadata (OpenID Connect Discovery 1.0)",
                "security": [],
                "responses": {"200": _json("OpenIDProviderMetadata", "The metadata.")},
            }
        },
    }


def openapi_document(
    *,
    issuer: str | None = None,
    grant_types: Collection[str] = GRANT_TYPES,
    paths: Collection[str] = PATHS,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document.

    Args:
        issuer: the server's issuer identifier, given as the one ``servers`` entry (none without).
        grant_types: the grant types the token endpoint handles.
        paths: the paths the server serves (only those are described).
    """
    described = _paths([grant for grant in GRANT_TYPES if grant in grant_types])
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Bastion authorization server: machine endpoints",
            "version": "1",
            "description": (
                "Errors of the form endpoints are RFC 6749 §5.2 JSON (`error`, optional "
                "`error_description`) with `Cache-Control: no-store`; never a 500."
            ),
        },
    }
    if issuer is not None:
        document["servers"] = [{"url": issuer}]
    document["paths"] = {path: described[path] for path in PATHS if path in paths}
    document["components"] = {
        "securitySchemes": {
            "client_secret_basic": {
                "type": "http",
                "scheme": "basic",
                "description": "RFC 6749 §2.3.1: form-urlencoded client id and secret.",
            },
        },
        "schemas": _schemas(),
    }
    return document

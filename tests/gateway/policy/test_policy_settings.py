"""``[gateway]`` settings: validation, cross-references and documentation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from pydantic import ValidationError

from bastion.gateway import settings as module
from bastion.gateway.settings import GatewaySettings
from bastion.gateway.settings import RouteSettings

ISSUER = {"issuer": "https://auth.example", "audience": "https://api.example"}


def gateway(**overrides: Any) -> GatewaySettings:
    data: dict[str, Any] = {
        "issuers": [ISSUER],
        "upstreams": {"catalog": {"targets": ["127.0.0.1:9000"]}},
        "routes": [{"prefix": "/catalog", "upstream": "catalog", "scopes": {"GET": ["catalog:read"]}}],
    }
    data.update(overrides)
    return GatewaySettings.model_validate(data)


def test_defaults_and_a_full_example() -> None:
    settings = gateway(trusted_proxies=["10.0.0.0/8", "::1/128"], strip_headers=["X-User-Id"])
    assert settings.listen == "127.0.0.1:8080"
    assert settings.admin_listen == "127.0.0.1:9100"
    assert settings.strip_headers == ("x-user-id",)
    route = settings.routes[0]
    assert route.auth == "required"
    assert route.forward_authorization is False
    assert route.scopes_for("GET") == ("catalog:read",)
    assert route.scopes_for("HEAD") == ("catalog:read",)
    assert route.scopes_for("POST") is None  # not covered: refused (deny by default)
    assert settings.issuer("https://auth.example").algorithms == ("ES256", "RS256")


def test_frozen_and_no_unknown_keys() -> None:
    settings = gateway()
    with pytest.raises(ValidationError):
        settings.listen = "0.0.0.0:1"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="lisen"):
        gateway(lisen="0.0.0.0:80")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"routes": [{"prefix": "/orders", "upstream": "orders"}]},
            "route '/orders': unknown upstream 'orders'",
        ),
        (
            {"routes": [{"prefix": "/a", "upstream": "catalog", "issuers": ["https://other"]}]},
            "route '/a': unknown issuer 'https://other'",
        ),
        (
            {"issuers": [{"issuer": "https://auth.example"}]},
            "route '/catalog': no audience",
        ),
        ({"issuers": []}, "route '/catalog': auth is required but no issuer"),
        (
            {
                "routes": [
                    {"prefix": "/a", "upstream": "catalog"},
                    {"prefix": "/a", "upstream": "catalog"},
                ]
            },
            "duplicate prefix",
        ),
        ({"tls_cert": "cert.pem"}, "tls_cert and tls_key go together"),
        ({"listen": "8080"}, "host:port"),
        ({"strip_headers": ["X User"]}, "not a header name"),
        ({"issuers": [ISSUER, ISSUER]}, "issuers must be unique"),
        ({"upstreams": {"catalog": {"targets": []}}}, "targets"),
        ({"upstreams": {"catalog": {"targets": ["nohost"]}}}, "host:port"),
        ({"realm": 'a"b'}, "realm"),
    ],
)
def test_invalid_settings_name_the_problem(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        gateway(**overrides)


def test_auth_none_routes_need_no_issuer() -> None:
    settings = gateway(issuers=[], routes=[{"prefix": "/", "upstream": "catalog", "auth": "none"}])
    assert settings.routes[0].auth == "none"


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"prefix": "api"}, "not a canonical path"),
        ({"prefix": "/api/"}, "must not end with '/'"),
        ({"prefix": "/a/../b"}, "not a canonical path"),
        ({"prefix": "/%61pi"}, "use '/api'"),
        ({"prefix": "/a?x"}, "not a canonical path"),
        ({"prefix": "/a", "strip_prefix": True, "rewrite_prefix": "/b"}, "not both"),
        ({"prefix": "/a", "rewrite_prefix": "/b//c"}, "not a canonical path"),
        ({"prefix": "/a", "scopes": {"get": ["x"]}}, "upper-case method"),
        ({"prefix": "/a", "scopes": {"GET": ["a b"]}}, "invalid scope"),
        ({"prefix": "/a", "scopes": {"GET": ['a"']}}, "invalid scope"),
        ({"prefix": "/a", "read_timeout": 0}, "greater than 0"),
        ({"prefix": "/a", "methods": ["get"]}, "upper-case method"),
        ({"prefix": "/a", "methods": []}, "at least one method"),
        ({"prefix": "/a", "methods": ["GET", "GET"]}, "more than once"),
        ({"prefix": "/a", "methods": ["TRACE"]}, "never forwarded"),
        ({"prefix": "/a", "methods": ["CONNECT"]}, "never forwarded"),
        (
            {"prefix": "/a", "methods": ["GET", "POST"], "scopes": {"GET": ["r"]}},
            "method POST is in methods but the scopes table does not cover it",
        ),
        ({"prefix": "/a", "content_types": ["json"]}, "not a media type"),
        ({"prefix": "/a", "content_types": ["application/json; charset=utf-8"]}, "not a media type"),
        ({"prefix": "/a", "content_types": []}, "at least one media type"),
        ({"prefix": "/a", "max_body": -1}, "greater than or equal to 0"),
        ({"prefix": "/a", "max_header_bytes": 0}, "greater than or equal to 1"),
        ({"prefix": "/a", "match": "regex"}, "'prefix' or 'exact'"),
        ({"prefix": "/a", "claim_headers": {"email": "X Email"}}, "not a header name"),
        ({"prefix": "/a", "claim_headers": {"email": "X_User_Email"}}, "has '_'"),
        ({"prefix": "/a", "claim_headers": {"sub": "X-Bastion-Subject"}}, "the gateway owns"),
        ({"prefix": "/a", "claim_headers": {"x": "X-Forwarded-For"}}, "the gateway owns"),
        ({"prefix": "/a", "claim_headers": {"x": "Authorization"}}, "the gateway owns"),
        ({"prefix": "/a", "claim_headers": {"x": "Cookie"}}, "the gateway owns"),
        ({"prefix": "/a", "claim_headers": {"": "X-A"}}, "claim name is empty"),
        ({"prefix": "/a", "claim_headers": {"a": "X-A", "b": "x-a"}}, "set from two claims"),
        ({"prefix": "/a", "host": "api.example.com:8080"}, "not a host name"),
        ({"prefix": "/a", "host": "*.example.com"}, "not a host name"),
        ({"prefix": "/a", "host": "https://api.example.com"}, "not a host name"),
        ({"prefix": "/a", "host": "a..example"}, "not a host name"),
        ({"prefix": "/a", "host": ""}, "not a host name"),
        ({"prefix": "/a", "host": "[::1]:80"}, "not a host name"),
    ],
)
def test_invalid_routes(route: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RouteSettings.model_validate({"upstream": "u", **route})


def test_introspection_secret_comes_from_exactly_one_place() -> None:
    base = {"issuer": "https://auth.example", "audience": "a"}
    with pytest.raises(ValidationError, match="exactly one"):
        gateway(issuers=[{**base, "introspection": {"client_id": "gw"}}])
    with pytest.raises(ValidationError, match="exactly one"):
        gateway(
            issuers=[
                {
                    **base,
                    "introspection": {
                        "client_id": "gw",
                        "client_secret_env": "A",
                        "client_secret_file": "/f",
                    },
                }
            ]
        )
    with pytest.raises(ValidationError, match="client_secret"):
        gateway(issuers=[{**base, "introspection": {"client_id": "gw", "client_secret": "x"}}])
    ok = gateway(issuers=[{**base, "introspection": {"client_id": "gw", "client_secret_env": "GW_SECRET"}}])
    assert ok.issuers[0].introspection is not None


def test_scope_star_is_the_default_for_unlisted_methods() -> None:
    route = RouteSettings(prefix="/a", upstream="u", scopes={"GET": ("r",), "*": ("w",)})
    assert route.scopes_for("GET") == ("r",)
    assert route.scopes_for("DELETE") == ("w",)
    # HEAD takes GET's scopes (RFC 9110 §9.3.2), not the "*" entry's.
    assert route.scopes_for("HEAD") == ("r",)
    own = RouteSettings(prefix="/a", upstream="u", scopes={"GET": ("r",), "HEAD": ("h",), "*": ("w",)})
    assert own.scopes_for("HEAD") == ("h",)
    only_star = RouteSettings(prefix="/a", upstream="u", scopes={"*": ("w",)})
    assert only_star.scopes_for("HEAD") == ("w",)


@pytest.mark.parametrize("method", ["HEAD", "POST", "OPTIONS", "PROPFIND", "PURGE"])
def test_a_scope_table_denies_the_methods_it_does_not_cover(method: str) -> None:
    listed = RouteSettings(prefix="/a", upstream="u", scopes={"PUT": ("w",)})
    assert listed.scopes_for(method) is None
    assert listed.scopes_for("PUT") == ("w",)
    # No table at all: any valid token is enough, for every method.
    assert RouteSettings(prefix="/a", upstream="u").scopes_for(method) == ()


def test_a_route_limit_cannot_exceed_the_gateways() -> None:
    route = {"prefix": "/a", "upstream": "catalog", "auth": "none"}
    with pytest.raises(ValidationError, match=r"route '/a': max_body is above gateway\.limits\.max_body"):
        gateway(limits={"max_body": 100}, routes=[{**route, "max_body": 101}])
    with pytest.raises(ValidationError, match="max_header_bytes is above"):
        gateway(limits={"max_header_bytes": 2048}, routes=[{**route, "max_header_bytes": 2049}])
    ok = gateway(limits={"max_body": 100}, routes=[{**route, "max_body": 100}])
    assert ok.routes[0].max_body == 100


def test_route_names_tell_host_and_kind() -> None:
    assert RouteSettings(prefix="/a", upstream="u").name == "/a"
    assert RouteSettings(prefix="/a", upstream="u", match="exact").name == "=/a"
    host = RouteSettings(prefix="/a", upstream="u", host="API.Example.com.")
    assert host.host == "api.example.com"
    assert host.name == "api.example.com/a"
    assert RouteSettings(prefix="/a", upstream="u", host="[2001:DB8::1]").host == "[2001:db8::1]"


def test_routes_are_duplicates_only_with_the_same_host_kind_and_path() -> None:
    route = {"prefix": "/a", "upstream": "catalog", "auth": "none"}
    ok = gateway(routes=[route, {**route, "match": "exact"}, {**route, "host": "x.example"}])
    assert [r.name for r in ok.routes] == ["/a", "=/a", "x.example/a"]
    with pytest.raises(ValidationError, match=r"route 'x\.example/a': duplicate"):
        gateway(routes=[{**route, "host": "x.example"}, {**route, "host": "X.EXAMPLE"}])


def test_claim_headers_are_stripped_on_every_route() -> None:
    settings = gateway(
        strip_headers=["X-User-Id"],
        routes=[
            {
                "prefix": "/a",
                "upstream": "catalog",
                "claim_headers": {"email": "X-User-Email", "roles": "X-Bastion-Roles"},
            },
            {"prefix": "/b", "upstream": "catalog", "claim_headers": {"email": "X-User-Email"}},
        ],
    )
    assert settings.routes[0].claim_headers == {"email": "x-user-email", "roles": "x-bastion-roles"}
    assert settings.stripped_headers == ("x-user-id", "x-user-email", "x-bastion-roles")
    with pytest.raises(ValidationError, match="claim_headers needs auth"):
        gateway(
            routes=[{"prefix": "/a", "upstream": "catalog", "auth": "none", "claim_headers": {"e": "X-E"}}]
        )


def test_content_types_are_lower_cased_once() -> None:
    route = RouteSettings(prefix="/a", upstream="u", content_types=("Application/JSON", "application/json"))
    assert route.content_types == ("application/json",)


@pytest.mark.parametrize(
    ("route", "allowed"),
    [
        ({}, None),
        ({"scopes": {"GET": ["r"], "*": ["w"]}}, None),
        ({"scopes": {"POST": ["w"], "GET": ["r"]}}, ("POST", "GET", "HEAD")),
        ({"scopes": {"HEAD": ["h"], "GET": ["r"]}}, ("HEAD", "GET")),
        ({"methods": ["GET", "PUT"]}, ("GET", "HEAD", "PUT")),
        ({"methods": ["POST"], "scopes": {"*": ["w"]}}, ("POST",)),
        ({"methods": ["GET"], "scopes": {"GET": ["r"], "*": ["w"]}}, ("GET", "HEAD")),
        # Without authentication the scope table is not consulted, so it does not restrict.
        ({"auth": "none", "scopes": {"GET": ["r"]}}, None),
    ],
)
def test_one_place_computes_the_allowed_methods(
    route: dict[str, Any], allowed: tuple[str, ...] | None
) -> None:
    assert (
        RouteSettings.model_validate({"prefix": "/a", "upstream": "u", **route}).allowed_methods() == allowed
    )


def _models() -> list[type[BaseModel]]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.__name__
    ]


@pytest.mark.parametrize("model", _models(), ids=lambda model: model.__name__)
def test_every_option_is_documented(model: type[BaseModel]) -> None:
    """``settings.py`` is the single documented source of options: no field without a description."""
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "forbid"
    for name, info in model.model_fields.items():
        assert info.description, f"{model.__name__}.{name} has no docstring"

"""Route table matching and prefix rewriting."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bastion.gateway.routing import Route
from bastion.gateway.routing import RouteTable
from bastion.gateway.routing import rewrite_path
from bastion.gateway.settings import RouteSettings


@dataclass
class Group:
    name: str


def route(prefix: str, **options: object) -> Route:
    settings = RouteSettings(prefix=prefix, upstream="u", **options)  # type: ignore[arg-type]
    return Route(settings=settings, upstream=Group("u"), policies=())


TABLE = RouteTable([route("/api"), route("/api/admin"), route("/catalog/items"), route("/Case")])


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/api", "/api"),
        ("/api/", "/api"),
        ("/api/x", "/api"),
        ("/api/x/y", "/api"),
        ("/api/admin", "/api/admin"),
        ("/api/admin/", "/api/admin"),
        ("/api/admin/users", "/api/admin"),
        ("/api/administrator", "/api"),
        ("/catalog/items", "/catalog/items"),
        ("/catalog/items/1", "/catalog/items"),
        ("/Case/x", "/Case"),
    ],
)
def test_longest_prefix_on_segment_boundaries(path: str, prefix: str) -> None:
    found = TABLE.match(path)
    assert found is not None
    assert found.name == prefix


@pytest.mark.parametrize("path", ["/", "/apix", "/ap", "/catalog", "/catalog/itemsx", "/case/x", "/API"])
def test_no_match(path: str) -> None:
    assert TABLE.match(path) is None


def test_root_route_catches_the_rest() -> None:
    table = RouteTable([route("/"), route("/api")])
    assert table.match("/") is not None
    assert table.match("/")
    assert table.match("/anything/else").name == "/"  # type: ignore[union-attr]
    assert table.match("/api/x").name == "/api"  # type: ignore[union-attr]
    assert len(table) == 2


def test_duplicate_prefix_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        RouteTable([route("/api"), route("/api")])


@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "expected"),
    [
        ("/api/x", "/api", "", "/x"),
        ("/api", "/api", "", "/"),
        ("/api/", "/api", "", "/"),
        ("/api/x", "/api", "/v2", "/v2/x"),
        ("/api", "/api", "/v2", "/v2"),
        ("/api/x", "/api", "/", "/x"),
        ("/x/y", "/", "/v1", "/v1/x/y"),
        ("/", "/", "/v1", "/v1/"),
    ],
)
def test_rewrite_path(path: str, prefix: str, replacement: str, expected: str) -> None:
    assert rewrite_path(path, prefix, replacement) == expected


def test_route_upstream_path_and_retry() -> None:
    assert route("/api").upstream_path("/api/x") == "/api/x"
    assert route("/api", strip_prefix=True).upstream_path("/api/x") == "/x"
    assert route("/api", rewrite_prefix="/internal").upstream_path("/api/x") == "/internal/x"
    retrying = route("/api", retry=True)
    assert retrying.may_retry("GET")
    assert retrying.may_retry("PUT")
    assert not retrying.may_retry("POST")
    assert not retrying.may_retry("PATCH")
    assert not route("/api").may_retry("GET")

"""Route table matching and prefix rewriting."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bastion.gateway.routing import Route
from bastion.gateway.routing import RouteTable
from bastion.gateway.routing import request_host
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


# -- exact and host routes ---------------------------------------------------------------------------

KINDS = RouteTable(
    [
        route("/"),
        route("/api"),
        route("/api/read", match="exact"),
        route("/", host="api.example.com"),
        route("/admin", host="api.example.com"),
        route("/status", host="api.example.com", match="exact"),
        route("/v6", host="[::1]"),
    ]
)


@pytest.mark.parametrize(
    ("path", "host", "name"),
    [
        ("/api/read", None, "=/api/read"),
        ("/api/read/", None, "/api"),
        ("/api/read/x", None, "/api"),
        ("/api/reader", None, "/api"),
        ("/api/rea", None, "/api"),
        ("/api", None, "/api"),
        ("/other", None, "/"),
        # A host route wins over a host-less one, even over a longer prefix.
        ("/api/read", b"api.example.com", "api.example.com/"),
        ("/admin/users", b"api.example.com", "api.example.com/admin"),
        ("/status", b"api.example.com", "api.example.com=/status"),
        ("/status/", b"api.example.com", "api.example.com/"),
        # The host is case-insensitive, its port and one trailing dot do not count.
        ("/admin", b"API.Example.COM", "api.example.com/admin"),
        ("/admin", b"api.example.com:8443", "api.example.com/admin"),
        ("/admin", b"api.example.com.", "api.example.com/admin"),
        ("/admin", b"api.example.com.:80", "api.example.com/admin"),
        # Other hosts, no host, and hosts that only look alike use the host-less routes.
        ("/admin", b"www.example.com", "/"),
        ("/admin", None, "/"),
        ("/admin", b"api.example.com..", "/"),
        ("/admin", b"api%2eexample.com", "/"),
        ("/admin", b"", "/"),
        ("/v6/x", b"[::1]:8080", "[::1]/v6"),
        ("/v6/x", b"[::2]", "/"),
    ],
)
def test_host_and_exact_routes(path: str, host: bytes | None, name: str) -> None:
    found = KINDS.match(path, host)
    assert found is not None
    assert found.name == name


def test_a_host_without_a_matching_route_falls_back_to_host_less_ones() -> None:
    table = RouteTable([route("/admin", host="api.example.com"), route("/public")])
    assert table.match("/public/x", b"api.example.com").name == "/public"  # type: ignore[union-attr]
    assert table.match("/nothing", b"api.example.com") is None
    assert table.match("/admin", b"other.example.com") is None


@pytest.mark.parametrize(
    ("path", "host", "confusable"),
    [
        # A trailing "/" is the exact route to Express (non-strict): refused when another route
        # would take it here.
        ("/api/read/", None, True),
        ("/API/READ", None, True),
        ("/api/read.", None, True),
        ("/api/read/x", None, False),
        ("/api/reader", None, False),
        ("/api/x/", None, False),
        # A protected host route reached through the host-less catch-all by case or dots.
        ("/ADMIN/users", b"api.example.com", True),
        ("/admin./users", b"API.EXAMPLE.COM:443", True),
        ("/STATUS", b"api.example.com", True),
        ("/status/", b"api.example.com", True),
        ("/ADMIN/users", b"www.example.com", False),
        ("/ADMIN/users", None, False),
    ],
)
def test_loose_forms_of_exact_and_host_routes_are_confusable(
    path: str, host: bytes | None, confusable: bool
) -> None:
    found = KINDS.match(path, host)
    assert found is not None
    assert KINDS.confusable(path, found, host) is confusable


def test_routes_are_unique_by_host_kind_and_path() -> None:
    table = RouteTable(
        [
            route("/a"),
            route("/a", match="exact"),
            route("/a", host="x.example"),
            route("/a", host="y.example"),
        ]
    )
    assert len(table) == 4
    with pytest.raises(ValueError, match=r"duplicate route 'x\.example=/a'"):
        RouteTable(
            [route("/a", host="x.example", match="exact"), route("/a", host="X.example.", match="exact")]
        )


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        (b"api.example.com", "api.example.com"),
        (b"API.example.com:8080", "api.example.com"),
        (b"api.example.com.", "api.example.com"),
        (b"[2001:DB8::1]:443", "[2001:db8::1]"),
        (b"192.0.2.1:80", "192.0.2.1"),
        (b"a%41.example", None),
        (b"", None),
        (None, None),
    ],
)
def test_request_host(raw: bytes | None, host: str | None) -> None:
    assert request_host(raw) == host


def test_a_protected_host_route_is_not_reached_through_the_host_less_catch_all() -> None:
    table = RouteTable([route("/"), route("/admin", host="api.example.com")])
    for path in ("/ADMIN/users", "/admin./users", "/Admin"):
        found = table.match(path, b"api.example.com")
        assert found is not None
        assert found.name == "/"
        assert table.confusable(path, found, b"api.example.com")
        assert not table.confusable(path, found, b"www.example.com")

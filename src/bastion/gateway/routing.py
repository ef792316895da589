"""The route table: canonical path (and ``Host``) → route.

Three kinds of route, tried in this order for a request:

1. routes of the request's host (``host = "api.example.com"``), when it names one — the host is
   the ``Host`` field lower-cased, without its port and a trailing dot (:func:`request_host`);
2. routes without a host.

Within each set, an exact route (``match = "exact"``) for the path wins; otherwise the longest
prefix on segment boundaries: ``/api`` matches ``/api``, ``/api/`` and ``/api/x`` but never
``/apix``. Matching is case-sensitive and runs on the canonical path from
:mod:`bastion.gateway.paths`, so no encoded or dotted form can reach a route other than the one
its canonical path names. Lookup is one dict probe for the host, one for the exact path, then the
path's own prefixes from the longest down (one probe per segment), so its cost does not grow with
the number of routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Generic
from typing import TypeVar

from bastion.gateway.settings import IDEMPOTENT_METHODS
from bastion.gateway.settings import RouteSettings

if TYPE_CHECKING:
    from bastion.gateway.contract import UpstreamGroup
    from bastion.gateway.policies import Policy

__all__ = ["Route", "RouteTable", "loose_path", "request_host", "rewrite_path"]

_T = TypeVar("_T")

#: Segment endings Windows file systems and IIS ignore: trailing dots and spaces.
_LOOSE_END_RE = re.compile(r"(?:\.|%20)+(?=/|$)")
#: What makes a canonical path's loose form differ from it.
_LOOSE_NEEDED_RE = re.compile(r"[A-Z]|(?:\.|%20)(?:/|$)")


def loose_path(path: str) -> str:
    """``path`` as an upstream that ignores case and trailing dots or spaces reads it.

    Express's router, IIS, ASP.NET and Windows file servers match paths case-insensitively, and
    Windows drops trailing ``.`` and `` `` from names: for them ``/ADMIN.`` is ``/admin``.

    >>> loose_path("/Admin./x%20")
    '/admin/x'
    """
    return _LOOSE_END_RE.sub("", path.lower())


def rewrite_path(path: str, prefix: str, replacement: str) -> str:
    """Replace ``prefix`` at the start of ``path`` with ``replacement``.

    Both prefixes are canonical and without a trailing ``/`` (``/`` itself allowed); ``path``
    is known to match ``prefix`` on a segment boundary.

    >>> rewrite_path("/api/x", "/api", "")
    '/x'
    >>> rewrite_path("/api", "/api", "/v2")
    '/v2'
    """
    rest = path if prefix == "/" else path[len(prefix) :]
    base = replacement.rstrip("/")
    if not rest:
        return base or "/"
    return base + rest


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route: settings plus the objects requests through it use."""

    settings: RouteSettings
    upstream: UpstreamGroup
    #: The ordered policy chain (see :mod:`bastion.gateway.policies`).
    policies: tuple[Policy, ...]

    @property
    def name(self) -> str:
        """The route's label in logs and metrics (:attr:`RouteSettings.name`)."""
        return self.settings.name

    def upstream_path(self, path: str) -> str:
        """The path sent upstream for canonical ``path`` (prefix stripped or rewritten)."""
        settings = self.settings
        if settings.strip_prefix:
            return rewrite_path(path, settings.prefix, "")
        if settings.rewrite_prefix is not None:
            return rewrite_path(path, settings.prefix, settings.rewrite_prefix)
        return path

    def may_retry(self, method: str) -> bool:
        """Whether the engine may retry ``method`` on this route (RFC 9110 §9.2.2)."""
        return self.settings.retry and method in IDEMPOTENT_METHODS


def request_host(raw: bytes | None) -> str | None:
    """The host a ``Host`` field value names, as host routes are keyed; ``None`` for none.

    RFC 9110 §7.2: ``Host = uri-host [ ":" port ]``; the host is case-insensitive (RFC 3986
    §3.2.2) and the port plays no part in choosing a route. One trailing dot is dropped (the
    fully qualified ``api.example.com.`` is the same name). A percent-encoded host matches no
    host route (the engine has already refused what is not ``uri-host [ ":" port ]``).

    >>> request_host(b"API.Example.com.:8443")
    'api.example.com'
    >>> request_host(b"[::1]:8080")
    '[::1]'
    """
    if not raw or b"%" in raw:
        return None
    text = raw.decode("ascii", "replace").lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else None
    host = text.partition(":")[0]
    return host.removesuffix(".") or None


class _Paths(Generic[_T]):
    """Exact paths and prefixes of one host (or of the host-less routes)."""

    __slots__ = ("exact", "prefixes")

    def __init__(self) -> None:
        self.exact: dict[str, _T] = {}
        self.prefixes: dict[str, _T] = {}

    def match(self, path: str) -> _T | None:
        if self.exact:
            found = self.exact.get(path)
            if found is not None:
                return found
        prefixes = self.prefixes
        if not prefixes:
            return None
        candidate = path
        while True:
            found = prefixes.get(candidate)
            if found is not None:
                return found
            cut = candidate.rfind("/")
            if cut <= 0:
                return prefixes.get("/") if candidate != "/" else None
            candidate = candidate[:cut]


class RouteTable:
    """Host, exact and longest-prefix matching (see the module docstring).

    Matching is exact (case-sensitive). :meth:`confusable` then tells whether a lenient upstream
    (case-insensitive, ignoring trailing dots, and a trailing ``/`` for an exact route) would
    place the same path under another route: ``/ADMIN/users`` matches a public ``/`` route
    exactly but is ``/admin/users`` to Express.
    """

    __slots__ = ("_any", "_exact_is_loose", "_has_exact", "_hosts", "_loose_any", "_loose_hosts", "_routes")

    def __init__(self, routes: Iterable[Route]) -> None:
        """Index ``routes`` by host, kind and path.

        Raises:
            ValueError: two routes share host, kind and path.
        """
        self._routes: dict[str, Route] = {}
        self._any: _Paths[Route] = _Paths()
        self._hosts: dict[str, _Paths[Route]] = {}
        self._loose_any: _Paths[list[Route]] = _Paths()
        self._loose_hosts: dict[str, _Paths[list[Route]]] = {}
        for route in routes:
            if route.name in self._routes:
                raise ValueError(f"duplicate route {route.name!r}")
            self._routes[route.name] = route
            settings = route.settings
            exact = settings.match == "exact"
            if settings.host is None:
                paths, loose = self._any, self._loose_any
            else:
                paths = self._hosts.setdefault(settings.host, _Paths())
                loose = self._loose_hosts.setdefault(settings.host, _Paths())
            (paths.exact if exact else paths.prefixes)[settings.prefix] = route
            (loose.exact if exact else loose.prefixes).setdefault(loose_path(settings.prefix), []).append(
                route
            )
        # The loose form of a path is the path itself unless it has upper case or a trailing dot
        # or space (or, with exact routes, a trailing "/"), when every route's path is loose.
        self._exact_is_loose = all(
            loose_path(route.settings.prefix) == route.settings.prefix for route in self._routes.values()
        )
        self._has_exact = any(route.settings.match == "exact" for route in self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)

    def routes(self) -> list[Route]:
        """All routes, in no particular order."""
        return list(self._routes.values())

    def match(self, path: str, host: bytes | None = None) -> Route | None:
        """The route for canonical ``path`` on a request whose ``Host`` field is ``host``."""
        if self._hosts and host is not None:
            paths = self._hosts.get(request_host(host) or "")
            if paths is not None:
                found = paths.match(path)
                if found is not None:
                    return found
        return self._any.match(path)

    def confusable(self, path: str, route: Route, host: bytes | None = None) -> bool:
        """Whether the loose form of canonical ``path`` (:func:`loose_path`) falls under a route
        other than ``route`` (the exact match), with the same host and kind rules: a request the
        gateway would authorize under one route and a lenient upstream serve as another's. The
        gateway refuses those (400).

        For exact routes the loose form also drops a trailing ``/``: Express (non-strict) and
        many frameworks serve ``/api/read/`` with the ``/api/read`` handler.
        """
        if (
            self._exact_is_loose
            and not _LOOSE_NEEDED_RE.search(path)
            and not (self._has_exact and path.endswith("/"))
        ):
            return False  # the loose form is the path itself
        loose = loose_path(path)
        found = None
        if self._loose_hosts and host is not None:
            paths = self._loose_hosts.get(request_host(host) or "")
            if paths is not None:
                found = _loose_match(paths, loose)
        if found is None:
            found = _loose_match(self._loose_any, loose)
        return found is not None and route not in found


def _loose_match(paths: _Paths[list[Route]], loose: str) -> list[Route] | None:
    if paths.exact and len(loose) > 1:
        found = paths.exact.get(loose.rstrip("/") or "/")
        if found is not None:
            return found
    return paths.match(loose)

"""The route table: canonical path → route, longest prefix on segment boundaries.

A prefix ``/api`` matches ``/api``, ``/api/`` and ``/api/x`` but never ``/apix``; matching is
case-sensitive and runs on the canonical path from :mod:`bastion.gateway.paths`, so no encoded
or dotted form can reach a route other than the one its canonical path names. Lookup walks the
path's own prefixes from the longest down (one dict probe per segment), so its cost does not
grow with the number of routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bastion.gateway.settings import IDEMPOTENT_METHODS
from bastion.gateway.settings import RouteSettings

if TYPE_CHECKING:
    from bastion.gateway.contract import UpstreamGroup
    from bastion.gateway.policies import Policy

__all__ = ["Route", "RouteTable", "loose_path", "rewrite_path"]

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
        """The route's label in logs and metrics: its prefix."""
        return self.settings.prefix

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


class RouteTable:
    """Longest-prefix matching on segment boundaries.

    Matching is exact (case-sensitive). :meth:`confusable` then tells whether a lenient upstream
    (case-insensitive, ignoring trailing dots) would place the same path under another route:
    ``/ADMIN/users`` matches a public ``/`` route exactly but is ``/admin/users`` to Express.
    """

    __slots__ = ("_exact_is_loose", "_loose", "_routes")

    def __init__(self, routes: Iterable[Route]) -> None:
        """Index ``routes`` by prefix.

        Raises:
            ValueError: two routes share a prefix.
        """
        self._routes: dict[str, Route] = {}
        for route in routes:
            if route.name in self._routes:
                raise ValueError(f"duplicate route prefix {route.name!r}")
            self._routes[route.name] = route
        self._loose: dict[str, list[Route]] = {}
        for prefix, found in self._routes.items():
            self._loose.setdefault(loose_path(prefix), []).append(found)
        self._exact_is_loose = all(loose_path(prefix) == prefix for prefix in self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def routes(self) -> list[Route]:
        """All routes, in no particular order."""
        return list(self._routes.values())

    def match(self, path: str) -> Route | None:
        """The route with the longest prefix matching canonical ``path``, or ``None``."""
        routes = self._routes
        candidate = path
        while True:
            route = routes.get(candidate)
            if route is not None:
                return route
            cut = candidate.rfind("/")
            if cut <= 0:
                return routes.get("/") if candidate != "/" else None
            candidate = candidate[:cut]

    def confusable(self, path: str, route: Route) -> bool:
        """Whether :func:`loose_path` of canonical ``path`` falls under a route other than
        ``route`` (the exact match): a request the gateway would authorize under one route and a
        lenient upstream serve as another's. The gateway refuses those (400).
        """
        if self._exact_is_loose and not _LOOSE_NEEDED_RE.search(path):
            return False  # the loose form is the path itself
        loose = self._loose
        candidate = loose_path(path)
        while True:
            found = loose.get(candidate)
            if found is not None:
                return route not in found
            cut = candidate.rfind("/")
            if cut <= 0:
                found = loose.get("/") if candidate != "/" else None
                return found is not None and route not in found
            candidate = candidate[:cut]

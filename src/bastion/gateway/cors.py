"""Cross-origin resource sharing on a route: the Fetch standard's CORS protocol at the gateway.

A route with a ``cors`` block (:class:`~bastion.gateway.settings.CorsSettings`) gets two
policies:

* :class:`CorsPolicy`, first in the chain: works out the CORS headers of the response for the
  request's ``Origin`` and puts them in ``Exchange.response_headers``, so that every answer
  carries them — the upstream's, and the gateway's own 401, 403, 405 or 429 alike (an
  application must be able to read why it was refused, and its ``WWW-Authenticate``);
* :class:`PreflightPolicy`, after the address checks: answers a CORS preflight (``OPTIONS``
  with ``Origin`` and ``Access-Control-Request-Method``) itself. A preflight carries no
  credentials ("a CORS-preflight request never includes credentials", Fetch §3.2.2), so it is
  answered before the token is looked for, and it is never forwarded: the upstream never sees
  an unauthenticated ``OPTIONS`` on a protected route.

Rules, each for a reason:

* Origins are compared exactly with the configured list. The ``Access-Control-Allow-Origin``
  sent back is the request's own origin, never ``*`` — unless the route is configured with
  ``origins = ["*"]``, which settings allow only without credentials (Fetch §3.2.5: with
  credentials, ``*`` "does not match"; reflecting any origin instead would let every site read
  a user's responses).
* ``null`` never matches, even under ``*``: sandboxed frames, ``data:`` and ``file:`` pages all
  send it, so allowing it would allow any page that chooses to sandbox itself.
* ``Vary: Origin`` goes on every response of a CORS route, the allowed and the refused alike:
  the answer depends on the origin, and a shared cache must not hand one origin's answer (with
  or without ``Access-Control-Allow-Origin``) to another (Fetch §3.2.4, "CORS protocol and HTTP
  caches").
* The upstream's own ``Access-Control-*`` response headers are dropped on a CORS route, so a
  service (or a framework default such as ``Access-Control-Allow-Origin: *``) cannot widen what
  the gateway decided.
* A preflight is judged against what the actual request would meet: the requested method must
  be one the route accepts (its ``methods``, else its ``scopes`` table, deny by default: the
  same :meth:`~bastion.gateway.settings.RouteSettings.allowed_methods` that gives ``Allow``),
  and every requested header must be allowed.
* A refused preflight is 403 problem+json without any ``Access-Control-*`` header. Fetch
  (§4.8, CORS-preflight fetch) fails a preflight whose status is not ok *or* whose CORS check
  fails, so to the browser a 204 without the headers (Kong's choice) and a 403 are the same
  refusal; the 403 also says so to the operator (access log, metrics by status) and to a
  developer using ``curl``. Envoy passes a preflight it does not allow on to the upstream; here
  it is never forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Final

from bastion.gateway.contract import Headers
from bastion.gateway.contract import Reply
from bastion.gateway.problems import problem
from bastion.gateway.settings import RouteSettings

if TYPE_CHECKING:
    from bastion.gateway.policies import Exchange

__all__ = ["ALWAYS_EXPOSED", "CorsPolicy", "CorsRules", "PreflightPolicy", "upstream_filter"]

_TOKEN: Final = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2
_NEVER: Final = frozenset({b"CONNECT", b"TRACE"})
_ACAO: Final = b"access-control-allow-origin"
_PREFIX: Final = b"access-control-"
#: Headers the gateway itself sets that explain a refusal or identify the request: always
#: exposed on a CORS route, so an application can read its 401's challenge, a 429's wait and the
#: id to quote (none is CORS-safelisted, Fetch §2.2.6).
ALWAYS_EXPOSED: Final = ("www-authenticate", "retry-after", "ratelimit", "ratelimit-policy", "x-request-id")
_VARY: Final = (b"vary", b"origin")
_VARY_PREFLIGHT: Final = (b"vary", b"origin, access-control-request-method, access-control-request-headers")


class CorsRules:
    """A route's CORS settings compiled to bytes, and the two answers built from them."""

    __slots__ = (
        "allow_headers",
        "allow_methods",
        "any_origin",
        "credentials",
        "expose",
        "headers",
        "max_age",
        "methods",
        "origins",
    )

    def __init__(self, route: RouteSettings) -> None:
        """Compile ``route.cors`` (which must be set) with the route's accepted methods."""
        cors = route.cors
        if cors is None:
            raise ValueError(f"route {route.name!r} has no cors settings")
        self.any_origin = cors.origins == ("*",)
        self.origins = frozenset(origin.encode("ascii") for origin in cors.origins)
        self.credentials = cors.credentials
        methods = cors.methods if cors.methods is not None else route.allowed_methods()
        self.methods = frozenset(m.encode("ascii") for m in methods) if methods is not None else None
        self.allow_methods = ", ".join(methods).encode("ascii") if methods is not None else None
        headers = list(cors.headers)
        if route.auth != "none" and "authorization" not in headers:
            headers.insert(0, "authorization")  # the route cannot be used without it
        self.headers = frozenset(name.encode("ascii") for name in headers)
        self.allow_headers = ", ".join(headers).encode("ascii") if headers else None
        self.expose = ", ".join(dict.fromkeys((*ALWAYS_EXPOSED, *cors.expose_headers))).encode("ascii")
        self.max_age = str(cors.max_age).encode("ascii")

    def allows(self, origin: bytes | None) -> bool:
        """Whether responses may be shared with ``origin`` (never ``null``, never none)."""
        if origin is None or origin == b"null":
            return False
        return self.any_origin or origin in self.origins

    def _allow_origin(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(_ACAO, b"*" if self.any_origin else origin)]
        if self.credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    def actual(self, origin: bytes | None) -> Headers:
        """The CORS headers of a response to an actual (not preflight) request from ``origin``."""
        if origin is None or not self.allows(origin):
            return [_VARY]
        return [_VARY, *self._allow_origin(origin), (b"access-control-expose-headers", self.expose)]

    def preflight(self, origin: bytes | None, method: bytes, requested: list[bytes]) -> Reply:
        """The answer to a preflight: 204 with the allow headers, or a 403 refusal.

        Args:
            origin: the ``Origin`` value (``None`` when absent or repeated).
            method: the ``Access-Control-Request-Method`` value.
            requested: the ``Access-Control-Request-Headers`` values (comma-separated lists).
        """
        if origin is None or not self.allows(origin):
            return _refused("The origin is not allowed to call this route")
        if (
            not _TOKEN.match(method)
            or method in _NEVER
            or (self.methods is not None and method not in self.methods)
        ):
            return _refused("The requested method is not allowed on this route")
        for value in requested:
            for part in value.split(b","):
                name = part.strip(b" \t").lower()
                if name and name not in self.headers:
                    return _refused("A requested header is not allowed on this route")
        headers: Headers = [_VARY_PREFLIGHT, *self._allow_origin(origin)]
        headers.append((b"access-control-allow-methods", self.allow_methods or method))
        if self.allow_headers is not None:
            headers.append((b"access-control-allow-headers", self.allow_headers))
        headers.append((b"access-control-max-age", self.max_age))
        return Reply(status=204, headers=headers)


def _refused(detail: str) -> Reply:
    headers, body = problem(403, detail)
    headers.append(_VARY_PREFLIGHT)
    return Reply(status=403, headers=headers, body=body)


def _fields(headers: Headers) -> tuple[bytes | None, bytes | None, list[bytes]]:
    """``Origin`` (``None`` when absent or sent twice), ``Access-Control-Request-Method`` and
    the ``Access-Control-Request-Headers`` values, in one pass."""
    origin: bytes | None = None
    origins = 0
    method: bytes | None = None
    requested: list[bytes] = []
    for name, value in headers:
        if name == b"origin":
            origin = value
            origins += 1
        elif name == b"access-control-request-method":
            method = value
        elif name == b"access-control-request-headers":
            requested.append(value)
    return (origin if origins == 1 else None), method, requested


def _is_preflight(exchange: Exchange, origin: bytes | None, method: bytes | None) -> bool:
    return exchange.method == "OPTIONS" and method is not None and origin is not None


class CorsPolicy:
    """Put the route's CORS response headers for the request's origin on the exchange (never
    refuses; preflights are left to :class:`PreflightPolicy`)."""

    name = "cors"

    def __init__(self, rules: CorsRules) -> None:
        """Apply ``rules``."""
        self._rules = rules

    def check(self, exchange: Exchange) -> None:
        """Set ``exchange.response_headers``."""
        origin, method, _ = _fields(exchange.head.headers)
        if _is_preflight(exchange, origin, method):
            return
        headers = self._rules.actual(origin)
        exchange.response_headers = (
            headers if exchange.response_headers is None else [*exchange.response_headers, *headers]
        )


class PreflightPolicy:
    """Answer CORS preflights on the route: 204 with the allow headers, or 403."""

    name = "cors_preflight"

    def __init__(self, rules: CorsRules) -> None:
        """Answer with ``rules``."""
        self._rules = rules

    def check(self, exchange: Exchange) -> Reply | None:
        """A reply for a preflight; ``None`` for any other request."""
        if exchange.method != "OPTIONS":
            return None
        origin, method, requested = _fields(exchange.head.headers)
        if method is None or not _is_preflight(exchange, origin, method):
            # An OPTIONS without Access-Control-Request-Method (or Origin) is no preflight:
            # an ordinary request, through the rest of the chain.
            return None
        return self._rules.preflight(origin, method, requested)


def upstream_filter(
    inner: Callable[[int, Headers], Headers], added: Headers | None
) -> Callable[[int, Headers], Headers]:
    """Wrap a ``Forward.response_headers`` filter for a CORS route: drop every
    ``Access-Control-*`` header the upstream sent, then add ``added`` (the gateway's)."""

    def _filter(status: int, headers: Headers) -> Headers:
        out = [(name, value) for name, value in inner(status, headers) if not name.startswith(_PREFIX)]
        if added:
            out.extend(added)
        return out

    return _filter

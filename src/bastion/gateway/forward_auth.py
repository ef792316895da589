"""Forward-auth mode: the gateway decides for a request that a proxy in front of it holds.

nginx ``auth_request``, Traefik ``ForwardAuth`` and Envoy's HTTP ``ext_authz`` ask an
authorization endpoint about each request before they proxy it themselves. The endpoint
(``[gateway.forward_auth]``, ``/_bastion/auth`` by default) rebuilds the original request head
from the ask and runs it through the very pipeline the gateway's own proxy runs
(:meth:`bastion.gateway.app.GatewayHandler.decide`: canonical target, route, header scan, policy
chain). Nothing is ever forwarded to an upstream; the decision becomes the answer:

* the proxy would forward it → ``200`` with no content and the identity headers the upstream
  would have got (``X-Bastion-Subject``/``-Client``/``-Scopes``, the route's claim headers);
  none on an ``auth = "none"`` route;
* the proxy would refuse it → the very same reply: status, ``WWW-Authenticate``,
  ``application/problem+json``. nginx passes 401 and 403 on and turns every other status into
  500, Traefik and Envoy pass them all on: a refusal is a refusal whichever proxy relays it;
* the gateway would answer it itself with a status below 400 (no built-in policy does) → 403:
  a 2xx here would tell the proxy to forward a request the gateway never meant to.

Where the original request comes from (``mode``):

* ``headers``: exactly one pair of ``X-Original-Method`` + ``X-Original-URI`` (nginx, set by
  ``proxy_set_header`` in its config) or ``X-Forwarded-Method`` + ``X-Forwarded-Uri``
  (Traefik), each field once, and the host from ``X-Forwarded-Host`` (required). Anything else
  — a half pair, both pairs, a repeated field — is refused with 400. Requiring both halves
  means a proxy configured without the method field fails every request at once instead of
  letting a client's own ``X-Original-Method`` choose the method checked; refusing both pairs
  means a client's copy of the other pair (which nginx and Traefik pass on) can only get its
  own request refused.
* ``path_prefix`` (Envoy ``ext_authz`` with ``path_prefix``): the request's own method, its
  target below ``path``, the host from ``X-Forwarded-Host`` or else ``Host``.

Only peers in ``trusted_proxies`` are answered (anybody else: 403). A client that reached the
endpoint directly would otherwise choose the URI it is authorized for: ask about ``/public``
and replay the ``200`` (or the identity headers) in front of ``/admin`` — the
``X-Forwarded-Uri``/``X-Forwarded-Prefix`` confusions of oauth2-proxy's skip-auth rules and of
Traefik with ``trustForwardHeader``. The original URI is the raw target the client sent
(nginx ``$request_uri``, not the normalised ``$uri``), so it gets the same refusals (dot
segments, encoded slashes, ``;`` parameters, double encodings, case confusions) as through the
proxy, and its query never takes part in routing.

Body checks (``max_body``, and ``content_types``, which looks only at requests with a body) do
not apply: the body never passes through the gateway in this mode; the proxy in front limits it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Final

from bastion.gateway.contract import Decision
from bastion.gateway.contract import Forward
from bastion.gateway.contract import Headers
from bastion.gateway.contract import Reply
from bastion.gateway.contract import RequestHead
from bastion.gateway.headers import TrustedProxies
from bastion.gateway.paths import PathError
from bastion.gateway.paths import parse_target
from bastion.gateway.policies import problem
from bastion.gateway.settings import ForwardAuthSettings

__all__ = ["ForwardAuth", "Refuse"]

#: ``(reply, head, reason) -> reply``: the handler's way of answering a request it refuses
#: before routing (adds ``X-Request-Id``, logs and counts).
Refuse = Callable[[Reply, RequestHead, str], Reply]
#: The proxy pipeline's decision for a request head.
Decide = Callable[[RequestHead], Decision | Awaitable[Decision]]

_ORIGINAL_METHOD: Final = b"x-original-method"
_ORIGINAL_URI: Final = b"x-original-uri"
_FORWARDED_METHOD: Final = b"x-forwarded-method"
_FORWARDED_URI: Final = b"x-forwarded-uri"
_FORWARDED_HOST: Final = b"x-forwarded-host"
#: The fields that describe the original request: read here, never seen by the policies.
_ASK_FIELDS: Final = frozenset({_ORIGINAL_METHOD, _ORIGINAL_URI, _FORWARDED_METHOD, _FORWARDED_URI})
#: RFC 9110 §9.1: method = token (case-sensitive); bounded.
_METHOD_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")
#: RFC 9110 §7.2 ``uri-host [ ":" port ]``, as the engine checks ``Host`` (no userinfo, path or
#: whitespace).
_HOST_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::[0-9]{1,5})?"
)
_NO_STORE: Final = (b"cache-control", b"no-store")
_UNTRUSTED: Final = "Forward-auth requests are answered for trusted proxies only"
_BAD_ASK: Final = "The forward-auth request does not name one original request"
_SELF_ANSWERED: Final = "The gateway answers this request itself, which forward-auth cannot relay"


class _BadAsk(Exception):
    pass


class ForwardAuth:
    """The forward-auth endpoint of one handler (see the module docstring)."""

    __slots__ = ("_path", "_prefix_mode", "_proxies", "_raw", "_under")

    def __init__(self, settings: ForwardAuthSettings, proxies: TrustedProxies) -> None:
        """Answer at ``settings.path`` in ``settings.mode`` for the peers ``proxies`` trusts."""
        self._path = settings.path
        self._raw = settings.path.encode("ascii")
        self._under = settings.path + "/"
        self._prefix_mode = settings.mode == "path_prefix"
        self._proxies = proxies

    def claims(self, target: bytes) -> bool:
        """Whether the request target ``target`` is for the endpoint (before any other check).

        Decided on the canonical path, so an escaped spelling of the endpoint's path is the
        endpoint too; a target without ``%`` is canonical or refused, so the common case costs
        a prefix comparison.
        """
        raw = self._raw
        if target.startswith(raw):
            rest = target[len(raw) :]
            if not rest or rest[0] == 0x3F:  # "?"
                return True
            if rest[0] == 0x2F:  # "/"
                return self._prefix_mode
        path_end = target.find(b"?")
        if b"%" not in (target if path_end < 0 else target[:path_end]):
            return False
        try:
            path = parse_target(target).path
        except PathError:
            return False  # refused by the pipeline like any other target
        return path == self._path or (self._prefix_mode and path.startswith(self._under))

    def check(self, head: RequestHead, decide: Decide, refuse: Refuse) -> Decision | Awaitable[Decision]:
        """Answer the ask ``head``: the proxy pipeline's ``decide`` on the original request."""
        if not self._proxies.is_trusted(head.client[0]):
            return refuse(problem(403, "Forbidden", _UNTRUSTED), head, "forward_auth_untrusted")
        try:
            original = self._original_prefix(head) if self._prefix_mode else self._original_headers(head)
        except _BadAsk:
            return refuse(problem(400, "Bad Request", _BAD_ASK), head, "forward_auth_request")
        decision = decide(original)
        if isinstance(decision, (Reply, Forward)):
            return _answer(decision)
        return _later(decision)

    def _original_headers(self, head: RequestHead) -> RequestHead:
        found: dict[bytes, list[bytes]] = {}
        kept: Headers = []
        for name, value in head.headers:
            if name in _ASK_FIELDS:
                found.setdefault(name, []).append(value.strip(b" \t"))
            elif name != b"host":
                kept.append((name, value))
        nginx = _ORIGINAL_METHOD in found or _ORIGINAL_URI in found
        traefik = _FORWARDED_METHOD in found or _FORWARDED_URI in found
        if nginx == traefik:
            raise _BadAsk  # neither pair, or both
        method_field, uri_field = (
            (_ORIGINAL_METHOD, _ORIGINAL_URI) if nginx else (_FORWARDED_METHOD, _FORWARDED_URI)
        )
        methods = found.get(method_field, [])
        uris = found.get(uri_field, [])
        if len(methods) != 1 or len(uris) != 1 or not uris[0]:
            raise _BadAsk
        if not _METHOD_RE.fullmatch(methods[0]):
            raise _BadAsk
        host = _forwarded_host(head.headers)
        if host is None:
            raise _BadAsk
        kept.append((b"host", host))
        return _head(head, methods[0], uris[0], kept)

    def _original_prefix(self, head: RequestHead) -> RequestHead:
        target = head.target
        raw = self._raw
        if target.startswith(raw + b"/"):
            original = target[len(raw) :]
        else:  # an escaped spelling of the prefix: take the rest of the canonical target
            try:
                canonical = parse_target(target)
            except PathError:
                raise _BadAsk from None
            rest = canonical.path[len(self._path) :]
            if not rest.startswith("/"):
                raise _BadAsk
            original = canonical.with_path(rest)
        host = _forwarded_host(head.headers)
        headers = [(name, value) for name, value in head.headers if name != b"host" or host is None]
        if host is not None:
            headers.append((b"host", host))
        return _head(head, head.method, original, headers)


def _forwarded_host(headers: Headers) -> bytes | None:
    """The one well-formed ``X-Forwarded-Host`` value; ``None`` when there is none.

    Raises:
        _BadAsk: several values, or one that is not ``uri-host [ ":" port ]``.
    """
    values = [value.strip(b" \t") for name, value in headers if name == _FORWARDED_HOST]
    if not values:
        return None
    if len(values) > 1 or not _HOST_RE.fullmatch(values[0]):
        raise _BadAsk
    return values[0]


def _head(ask: RequestHead, method: bytes, target: bytes, headers: Headers) -> RequestHead:
    return RequestHead(
        method=method,
        target=target,
        headers=headers,
        client=ask.client,
        http_version=ask.http_version,
        tls=ask.tls,
        started=ask.started,
    )


async def _later(pending: Awaitable[Decision]) -> Decision:
    return _answer(await pending)


def _answer(decision: Decision) -> Reply:
    """The forward-auth answer for the proxy pipeline's ``decision`` (module docstring)."""
    if isinstance(decision, Forward):
        headers: Headers = [*(decision.identity or ()), _NO_STORE]
        if decision.response_headers is not None:
            headers.extend(decision.response_headers(200, []))  # Server, X-Request-Id
        return Reply(status=200, headers=headers, on_complete=decision.on_complete)
    if decision.status >= 400:
        return decision
    refused = problem(403, "Forbidden", _SELF_ANSWERED)
    refused.headers.extend(
        (name, value) for name, value in decision.headers if name in (b"x-request-id", b"server")
    )
    refused.on_complete = decision.on_complete
    return refused

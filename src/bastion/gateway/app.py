"""The gateway's composition: settings → route table → handler → engine, plus reload.

:func:`create_gateway` is the entry point for :mod:`bastion.cli`. Everything that touches the
outside world is injected: token verifiers (or a factory for them), the engine's server and
upstream-group factories, the TLS context, the access-log sink and the metrics registry.

Per request, :class:`GatewayHandler` (a :data:`~bastion.gateway.contract.Handler`):

1. canonicalises the target (:mod:`~bastion.gateway.paths`; refused → 400) — before anything
   else looks at the path;
2. scans the headers once and resolves client address and request id
   (:mod:`~bastion.gateway.headers`);
3. finds the route by ``Host`` and path (:mod:`~bastion.gateway.routing`; none → 404; a path
   that a case-insensitive upstream ignoring trailing dots would place under another route →
   400);
4. runs the route's policy chain (:mod:`~bastion.gateway.policies`), synchronously while it can;
5. answers with a ``Reply`` or a ``Forward`` whose ``on_complete`` logs and counts.

With ``[gateway.forward_auth]`` enabled, a request for its endpoint from a trusted proxy is
answered by :mod:`~bastion.gateway.forward_auth`, which runs steps 1-4 (:meth:`GatewayHandler.decide`)
on the original request the proxy describes and turns the decision into its answer.

Reload builds a complete new handler from new settings, reusing the upstream groups and token
verifiers whose settings did not change (keeping their pools, JWKS and token caches), and swaps
it in with the engine's ``set_handler``: requests already running finish on the old handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ssl
import sys
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Final
from typing import Protocol

import aiohttp
from prometheus_client import CollectorRegistry

from bastion.gateway.autoban import BanGuard
from bastion.gateway.autoban import kind_of
from bastion.gateway.contract import Decision
from bastion.gateway.contract import Forward
from bastion.gateway.contract import Handler
from bastion.gateway.contract import Headers
from bastion.gateway.contract import Outcome
from bastion.gateway.contract import Reply
from bastion.gateway.contract import RequestHead
from bastion.gateway.contract import UpstreamGroup
from bastion.gateway.cors import upstream_filter
from bastion.gateway.forward_auth import ForwardAuth
from bastion.gateway.headers import HeaderRules
from bastion.gateway.headers import forward_headers
from bastion.gateway.headers import identity_headers
from bastion.gateway.headers import reply_headers
from bastion.gateway.headers import response_filter
from bastion.gateway.headers import scan_request
from bastion.gateway.headers import trusted_request_id
from bastion.gateway.limits import EngineLimits
from bastion.gateway.observe import AccessLog
from bastion.gateway.observe import AdminServer
from bastion.gateway.observe import CachedKeysCollector
from bastion.gateway.observe import GatewayMetrics
from bastion.gateway.paths import PathError
from bastion.gateway.paths import parse_target
from bastion.gateway.policies import Exchange
from bastion.gateway.policies import PolicyContext
from bastion.gateway.policies import PolicyFactory
from bastion.gateway.policies import PolicyResult
from bastion.gateway.policies import TokenVerifier
from bastion.gateway.policies import build_chain
from bastion.gateway.policies import default_factories
from bastion.gateway.policies import problem
from bastion.gateway.policies import run_chain
from bastion.gateway.refusals import RefusalReporter
from bastion.gateway.routing import Route
from bastion.gateway.routing import RouteTable
from bastion.gateway.server import GatewayServer
from bastion.gateway.settings import GatewaySettings
from bastion.gateway.settings import IssuerSettings
from bastion.gateway.settings import LimitsSettings
from bastion.gateway.settings import UpstreamSettings
from bastion.gateway.tracing import gateway_traceparent
from bastion.gateway.tracing import trace_id
from bastion.gateway.upstream import UpstreamGroup as EngineGroup
from bastion.ops.audit import Auditor
from bastion.ratelimit import Limiter
from bastion.ratelimit.local import LocalLimiter
from bastion.tokens import Introspector
from bastion.tokens import IssuerVerifier
from bastion.tokens import Principal
from bastion.tokens import RevocationSource
from bastion.tokens import TokenError
from bastion.tokens import TokenValidator

__all__ = [
    "Gateway",
    "GatewayHandler",
    "ReloadError",
    "ServerFactory",
    "UpstreamFactory",
    "VerifierFactory",
    "create_gateway",
    "engine_server_factory",
    "engine_upstream_factory",
    "token_verifier_factory",
]

#: Methods the gateway never forwards: ``CONNECT`` opens tunnels, ``TRACE`` reflects headers
#: (cross-site tracing). RFC 9110 §9.3.6, §9.3.8.
_REFUSED_METHODS: Final = frozenset({"CONNECT", "TRACE"})
_ALLOW: Final = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_NO_ROUTE: Final = "-"
_IDENTITY_CACHE: Final = 4096


class ReloadError(ValueError):
    """The new settings change something a reload cannot (the listeners or TLS)."""


class EngineServer(Protocol):
    """What the gateway needs of :class:`bastion.gateway.server.GatewayServer`."""

    async def start(self, host: str, port: int) -> None:
        """Start listening."""

    def set_handler(self, handler: Handler) -> None:
        """Swap the handler for new requests."""

    async def close(self) -> None:
        """Stop listening and finish or close connections."""


#: ``(handler, ssl_context) -> server``.
ServerFactory = Callable[[Handler, "ssl.SSLContext | None"], EngineServer]
#: ``(name, settings) -> upstream group`` (the engine's pools).
UpstreamFactory = Callable[[str, UpstreamSettings], UpstreamGroup]
#: ``issuer settings -> verifier``; the CLI's factory resolves introspection secrets.
VerifierFactory = Callable[[IssuerSettings], TokenVerifier]


class GatewayHandler:
    """The per-request entry point the engine calls (one instance per route table)."""

    __slots__ = ("_bans", "_forward_auth", "_identities", "_log", "_metrics", "_refusals", "_rules", "_table")

    def __init__(
        self,
        table: RouteTable,
        rules: HeaderRules,
        metrics: GatewayMetrics,
        log: AccessLog,
        forward_auth: ForwardAuth | None = None,
        *,
        bans: BanGuard | None = None,
        refusals: RefusalReporter | None = None,
    ) -> None:
        """Serve ``table`` with ``rules``, counting in ``metrics`` and logging to ``log``; answer
        ``forward_auth``'s endpoint when it is given; ``bans`` refuses banned clients first and
        counts their failures; ``refusals`` puts the policies' refusals in the audit trail."""
        self._forward_auth = forward_auth
        self._bans = bans
        self._refusals = refusals
        self._table = table
        self._identities: dict[int, tuple[Principal, Headers]] = {}
        self._rules = rules
        self._metrics = metrics
        self._log = log

    @property
    def table(self) -> RouteTable:
        """The route table this handler serves."""
        return self._table

    def __call__(self, head: RequestHead) -> Decision | Awaitable[Decision]:
        """Decide what to do with one request (see the module docstring)."""
        forward_auth = self._forward_auth
        if forward_auth is not None and forward_auth.claims(head.target):
            return forward_auth.check(head, self.decide, self._refuse)
        return self.decide(head)

    def _refuse(self, reply: Reply, head: RequestHead, reason: str) -> Reply:
        return self._reply(reply, None, head, None, refused=reason)

    def decide(self, head: RequestHead) -> Decision | Awaitable[Decision]:
        """The proxy's decision for ``head``: steps 1-5 of the module docstring."""
        try:
            target = parse_target(head.target)
        except PathError as exc:
            bans = self._bans
            client_ip = self._client_ip(head) if bans is not None else ""
            if bans is not None and bans.refuses(client_ip):
                return self._reply(bans.reply(), None, head, None, refused="banned")
            self._metrics.refused_path(exc.reason)
            reply = problem(400, "Bad Request", "The request target is not acceptable")
            return self._counted(
                self._reply(reply, None, head, None, refused=exc.reason), client_ip, "refused"
            )
        scanned = scan_request(head.headers, self._rules)
        proxies = self._rules.proxies
        peer = head.client[0]
        peer_trusted = proxies.is_trusted(peer)
        traceparent, continued = gateway_traceparent(scanned.traceparent)
        exchange = Exchange(
            head=head,
            method=head.method.decode("ascii", "replace"),
            target=target,
            scanned=scanned,
            peer_trusted=peer_trusted,
            client_ip=proxies.client_ip(peer, scanned.forwarded_for) if peer_trusted else peer,
            request_id=trusted_request_id(scanned, peer_trusted),
            traceparent=traceparent,
            trace_continued=continued,
        )
        bans = self._bans
        if bans is not None and bans.refuses(exchange.client_ip):
            # First of all: a banned client learns nothing, not even which routes exist.
            return self._reply(bans.reply(), None, head, exchange, error="banned")
        if exchange.method in _REFUSED_METHODS:
            reply = problem(405, "Method Not Allowed", headers=[(b"allow", _ALLOW)])
            return self._reply(reply, None, head, exchange)
        route = self._table.match(target.path, scanned.host)
        if route is None:
            return self._reply(problem(404, "Not Found"), None, head, exchange)
        if self._table.confusable(target.path, route, scanned.host):
            # ``/ADMIN`` routed by the public ``/`` route, but ``/admin`` to a case-insensitive
            # upstream: refused like any other ambiguous target.
            self._metrics.refused_path("route_confusion")
            reply = problem(400, "Bad Request", "The request target is not acceptable")
            reply = self._reply(reply, None, head, exchange, error="route_confusion")
            return self._counted(reply, exchange.client_ip, "refused")
        try:
            result = run_chain(route.policies, exchange)
        except Exception:  # a policy bug must not take the connection down unanswered
            return self._error(route, head, exchange)
        if result is None:
            return self._forward(route, exchange)
        if isinstance(result, Reply):
            return self._settle(self._reply(result, route, head, exchange), exchange, route)
        return self._later(result, route, head, exchange)

    def _client_ip(self, head: RequestHead) -> str:
        """The client address of a request refused before its :class:`Exchange` was built."""
        proxies = self._rules.proxies
        peer = head.client[0]
        if not proxies.is_trusted(peer):
            return peer
        return proxies.client_ip(peer, scan_request(head.headers, self._rules).forwarded_for)

    def _settle(self, reply: Reply, exchange: Exchange, route: Route) -> Reply | Awaitable[Reply]:
        """``reply``, after auditing it and counting it against the client when it is a
        counted failure."""
        if self._refusals is not None and reply.status >= 400:
            self._refusals.report(
                exchange.client_ip, route.name, reply.status, exchange.auth_failure, exchange.principal
            )
        if self._bans is None:
            return reply
        kind = kind_of(reply.status, exchange.auth_failure)
        return reply if kind is None else self._counted(reply, exchange.client_ip, kind)

    def _counted(self, reply: Reply, client_ip: str, kind: str) -> Reply | Awaitable[Reply]:
        """``reply``, once a ``kind`` failure of ``client_ip`` is counted (and a ban reached at
        it is in force here): so the client that sees its N-th failure answered is banned."""
        pending = self._bans.count(client_ip, kind) if self._bans is not None else None
        return reply if pending is None else _after(pending, reply)

    async def _later(
        self, pending: Awaitable[PolicyResult], route: Route, head: RequestHead, exchange: Exchange
    ) -> Decision:
        try:
            result = await pending
        except Exception:
            return self._error(route, head, exchange)
        if result is None:
            return self._forward(route, exchange)
        settled = self._settle(self._reply(result, route, head, exchange), exchange, route)
        return settled if isinstance(settled, Reply) else await settled

    def _error(self, route: Route, head: RequestHead, exchange: Exchange) -> Reply:
        exc = sys.exception()
        sys.stderr.write(f"bastion gateway: policy error on route {route.name!r}: {exc!r}\n")
        return self._reply(problem(500, "Internal Server Error"), route, head, exchange, error="policy_error")

    def _forward(self, route: Route, exchange: Exchange) -> Forward:
        settings = route.settings
        principal = exchange.principal
        identity = None
        if principal is not None:
            # Verified principals are shared by the token caches, so their rendered headers
            # are cached too (keyed by identity, checked with ``is``; bounded).
            cached = self._identities.get(id(principal))
            if cached is not None and cached[0] is principal:
                identity = cached[1]
            else:
                identity = identity_headers(principal.subject, principal.client_id, principal.scopes)
                if len(self._identities) >= _IDENTITY_CACHE:
                    self._identities.clear()
                self._identities[id(principal)] = (principal, identity)
        if exchange.upstream_headers:
            identity = [*(identity or ()), *exchange.upstream_headers]
        head = exchange.head
        request_id = exchange.request_id
        return Forward(
            upstream=route.upstream,
            target=exchange.target.with_path(route.upstream_path(exchange.target.path)),
            headers=forward_headers(
                exchange.scanned,
                peer=head.client[0],
                peer_trusted=exchange.peer_trusted,
                client_ip=exchange.client_ip,
                tls=head.tls,
                request_id=request_id,
                identity=identity,
                forward_authorization=settings.forward_authorization,
                traceparent=exchange.traceparent,
                continued=exchange.trace_continued,
            ),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            total_timeout=settings.total_timeout,
            retry=route.may_retry(exchange.method),
            response_headers=response_filter(request_id, self._rules.server)
            if settings.cors is None
            else upstream_filter(response_filter(request_id, self._rules.server), exchange.response_headers),
            on_complete=functools.partial(self._complete, route, exchange, None, None),
            # scan_request dropped the client fields named in Connection; the headers set here
            # (identity, X-Forwarded-*) must reach the upstream whatever the client names.
            connection_filtered=True,
            max_body=settings.max_body,
            identity=identity,
        )

    def _reply(
        self,
        reply: Reply,
        route: Route | None,
        head: RequestHead,
        exchange: Exchange | None,
        *,
        refused: str | None = None,
        error: str | None = None,
    ) -> Reply:
        request_id = (
            exchange.request_id
            if exchange is not None
            else trusted_request_id(
                scan_request(head.headers, self._rules), self._rules.proxies.is_trusted(head.client[0])
            )
        )
        if exchange is None:
            reply.headers.extend(reply_headers(request_id, self._rules.server))
            reply.on_complete = functools.partial(self._complete_refused, head, request_id, refused)
        else:
            reply.headers.extend(reply_headers(request_id, self._rules.server))
            if exchange.response_headers:
                reply.headers.extend(exchange.response_headers)
            reply.on_complete = functools.partial(self._complete, route, exchange, error, reply)
        return reply

    def _complete(
        self,
        route: Route | None,
        exchange: Exchange,
        error: str | None,
        reply: Reply | None,
        outcome: Outcome,
    ) -> None:
        name = route.name if route is not None else _NO_ROUTE
        self._metrics.request(name, outcome.status, outcome.total_seconds)
        if (
            reply is None
            and route is not None
            and outcome.error is not None
            and outcome.error != "client_closed"
        ):
            self._metrics.upstream_error(route.upstream.name, outcome.error)
        log = self._log
        if not log.enabled:
            return  # the record costs ~2 µs to build: skip it when nobody reads it
        principal = exchange.principal
        log.write(
            {
                "request_id": exchange.request_id,
                "trace_id": trace_id(exchange.traceparent),
                "client_ip": exchange.client_ip,
                "method": exchange.method,
                "path": exchange.target.path,
                "route": name,
                "status": outcome.status,
                "total_ms": round(outcome.total_seconds * 1000, 3),
                "upstream_ms": None
                if outcome.upstream_seconds is None
                else round(outcome.upstream_seconds * 1000, 3),
                "upstream": outcome.upstream,
                "bytes": outcome.bytes_sent,
                "subject": principal.subject if principal is not None else None,
                "client_id": principal.client_id if principal is not None else None,
                "auth_error": exchange.auth_failure,
                "error": error or outcome.error,
            }
        )

    def _complete_refused(
        self, head: RequestHead, request_id: str, reason: str | None, outcome: Outcome
    ) -> None:
        self._metrics.request(_NO_ROUTE, outcome.status, outcome.total_seconds)
        if not self._log.enabled:
            return
        self._log.write(
            {
                "request_id": request_id,
                "client_ip": head.client[0],
                "method": head.method.decode("ascii", "replace"),
                # The refused target, for forensics: JSON-escaped by orjson, bounded in size.
                "target": head.target[:512].decode("latin-1"),
                "route": _NO_ROUTE,
                "status": outcome.status,
                "total_ms": round(outcome.total_seconds * 1000, 3),
                "bytes": outcome.bytes_sent,
                "error": reason,
            }
        )


async def _after(pending: Awaitable[None], reply: Reply) -> Reply:
    await pending
    return reply


class Gateway:
    """A running (or startable) gateway: handler, engine server, admin server, reload."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        verifier_factory: VerifierFactory,
        upstream_factory: UpstreamFactory,
        server_factory: ServerFactory,
        ssl_context: ssl.SSLContext | None,
        access_log: AccessLog,
        metrics: GatewayMetrics,
        policy_factories: Sequence[PolicyFactory],
        owns_verifiers: bool = True,
        rate_limiter: Limiter | None = None,
        bans: BanGuard | None = None,
        refusals: RefusalReporter | None = None,
    ) -> None:
        """Use :func:`create_gateway`; this constructor builds the first handler eagerly."""
        self.rate_limiter = rate_limiter
        self.bans = bans
        self.refusals = refusals
        self._owns_verifiers = owns_verifiers
        self._verifier_factory = verifier_factory
        self._upstream_factory = upstream_factory
        self._server_factory = server_factory
        self._ssl = ssl_context
        self.access_log = access_log
        self.metrics = metrics
        metrics.registry.register(CachedKeysCollector(self.cached_kids))
        self._factories = tuple(policy_factories)
        self._upstreams: dict[str, tuple[UpstreamSettings, UpstreamGroup]] = {}
        self._verifiers: dict[str, tuple[IssuerSettings, TokenVerifier]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._pending: dict[int, object] = {}
        self._server: EngineServer | None = None
        self._admin: AdminServer | None = None
        self._lock = asyncio.Lock()
        self.settings = settings
        self.handler, _ = self._build(settings)

    @property
    def admin_port(self) -> int | None:
        """The admin listener's bound port, once started."""
        return self._admin.port if self._admin is not None else None

    @property
    def port(self) -> int | None:
        """The public listener's bound port, once started."""
        return getattr(self._server, "port", None) if self._server is not None else None

    @property
    def server(self) -> EngineServer | None:
        """The engine server, once started."""
        return self._server

    def _build(self, settings: GatewaySettings) -> tuple[GatewayHandler, list[object]]:
        """A new handler for ``settings`` and the objects it no longer uses."""
        upstreams: dict[str, tuple[UpstreamSettings, UpstreamGroup]] = {}
        verifiers: dict[str, tuple[IssuerSettings, TokenVerifier]] = {}
        created: list[object] = []
        try:
            for name, upstream in settings.upstreams.items():
                old = self._upstreams.get(name)
                if old is not None and old[0] == upstream:
                    upstreams[name] = old
                else:
                    group = self._upstream_factory(name, upstream)
                    created.append(group)
                    upstreams[name] = (upstream, group)
            for issuer in settings.issuers:
                known = self._verifiers.get(issuer.issuer)
                if known is not None and known[0] == issuer:
                    verifiers[issuer.issuer] = known
                else:
                    verifier = self._verifier_factory(issuer)
                    if self._owns_verifiers:
                        created.append(verifier)
                    verifiers[issuer.issuer] = (issuer, verifier)
            ctx = PolicyContext(
                gateway=settings,
                verifiers={name: verifier for name, (_, verifier) in verifiers.items()},
                metrics=self.metrics,
                limiter=self.rate_limiter,
            )
            routes = [
                Route(
                    settings=route,
                    upstream=upstreams[route.upstream][1],
                    policies=build_chain(route, ctx, self._factories),
                )
                for route in settings.routes
            ]
            rules = HeaderRules.build(
                settings.stripped_headers, settings.trusted_proxies, settings.server_header
            )
            handler = GatewayHandler(
                RouteTable(routes),
                rules,
                self.metrics,
                self.access_log,
                ForwardAuth(settings.forward_auth, rules.proxies) if settings.forward_auth.enabled else None,
                bans=self.bans,
                refusals=self.refusals,
            )
        except BaseException:
            for obj in created:
                self._retire_now(obj)
            raise
        kept = {id(group) for _, group in upstreams.values()} | {id(v) for _, v in verifiers.values()}
        retired: list[object] = [obj for obj in self._owned() if id(obj) not in kept]
        self._upstreams = upstreams
        self._verifiers = verifiers
        return handler, retired

    def cached_kids(self) -> dict[str, frozenset[str]]:
        """The ``kid`` of the keys each issuer's token validator holds (introspection-only
        verifiers have none to show)."""
        held = {}
        for issuer, (_, verifier) in self._verifiers.items():
            kids = getattr(getattr(verifier, "validator", verifier), "known_kids", None)
            if isinstance(kids, frozenset):
                held[issuer] = kids
        return held

    async def start(self) -> None:
        """Start the public listener (engine) and the admin listener."""
        settings = self.settings
        if settings.admin_listen is not None:
            host, _, port = settings.admin_listen.rpartition(":")
            admin = AdminServer(
                self.metrics.registry, healthy=lambda: self._server is not None, keys=self.cached_kids
            )
            await admin.start(host.strip("[]"), int(port))
            self._admin = admin
        await self._prefetch()
        await self._activate_upstreams()
        server = self._server_factory(self.handler, self._ssl)
        if self.bans is not None and hasattr(server, "on_rejected"):
            server.on_rejected = self.bans.engine_rejected  # the front's 400s count too
        host, _, port = settings.listen.rpartition(":")
        try:
            await server.start(host.strip("[]"), int(port))
        except BaseException:
            await self.close()
            raise
        self._server = server

    def open_circuit(self, route: str, seconds: float) -> bool:
        """Open the circuit breakers of every target of ``route``'s upstream for ``seconds``, so
        the route (and any other on that upstream) answers 503 meanwhile; ``False`` when no
        route is called ``route`` or its upstream has no breakers."""
        found = next((r for r in self.handler.table.routes() if r.name == route), None)
        targets = getattr(found.upstream, "targets", None) if found is not None else None
        if not targets:
            return False
        now = asyncio.get_running_loop().time()  # the engine's clock for breakers
        for target in targets:
            target.breaker.force_open(now, seconds)
        return True

    async def _activate_upstreams(self) -> None:
        """Start the groups' background work (health checks); idempotent."""
        for _, group in self._upstreams.values():
            start = getattr(group, "start", None)
            if start is not None:
                result = start()
                if inspect.isawaitable(result):
                    await result

    async def _prefetch(self) -> None:
        """Fetch every issuer's keys up front; an issuer that is down is retried per request."""
        for _, verifier in self._verifiers.values():
            start = getattr(verifier, "start", None)
            if start is not None:
                with contextlib.suppress(TokenError):
                    await start()

    async def reload(self, settings: GatewaySettings) -> None:
        """Swap in a handler built from ``settings``; in-flight requests finish on the old one.

        Upstream groups and verifiers whose settings are unchanged are reused; the ones no
        longer used are closed ``drain_seconds`` later.

        Raises:
            ReloadError: ``listen``, ``admin_listen``, TLS or ``limits`` changed (restart for
                those).
        """
        old = self.settings
        for key in ("listen", "admin_listen", "tls_cert", "tls_key", "limits"):
            if getattr(old, key) != getattr(settings, key):
                raise ReloadError(f"gateway.{key} cannot change on reload; restart the gateway")
        async with self._lock:
            if self.bans is not None:
                self.bans.configure(settings.bans, settings.trusted_proxies)
            handler, retired = self._build(settings)
            self.handler = handler
            self.settings = settings
            if self._server is not None:
                await self._activate_upstreams()
                self._server.set_handler(handler)
            for obj in retired:
                self._retire_later(obj, settings.drain_seconds)

    async def close(self) -> None:
        """Stop both listeners, close pools and verifiers, flush the access log."""
        if self._server is not None:
            await self._server.close()
            self._server = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        for task in list(self._retiring):
            task.cancel()
        objects = [*self._owned(), *self._pending.values()]
        self._upstreams = {}
        self._verifiers = {}
        self._pending = {}
        for obj in objects:
            await _close(obj)
        for task in list(self._retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.access_log.close()

    def _owned(self) -> list[object]:
        owned: list[object] = [group for _, group in self._upstreams.values()]
        if self._owns_verifiers:
            owned.extend(verifier for _, verifier in self._verifiers.values())
        return owned

    def _retire_later(self, obj: object, delay: float) -> None:
        self._pending[id(obj)] = obj

        async def _later() -> None:
            await asyncio.sleep(delay)
            if self._pending.pop(id(obj), None) is not None:
                await _close(obj)

        task = asyncio.get_running_loop().create_task(_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _retire_now(self, obj: object) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(_close(obj))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)


async def _close(obj: object) -> None:
    """Close an engine or token object, whichever close method it offers."""
    for name in ("aclose", "close"):
        method = getattr(obj, name, None)
        if method is not None:
            result = method()
            if inspect.isawaitable(result):
                await result
            return


def engine_upstream_factory(name: str, settings: UpstreamSettings) -> UpstreamGroup:
    """Build the engine's :class:`~bastion.gateway.upstream.UpstreamGroup` from settings."""
    return EngineGroup(
        name,
        settings.targets,
        max_idle_per_target=settings.pool.max_idle,
        max_per_target=settings.pool.max_connections,
        idle_timeout=settings.pool.idle_timeout,
        failure_threshold=settings.health.failure_threshold,
        cool_off=settings.health.cool_off,
        breaker_failures=settings.breaker.failures,
        breaker_window=settings.breaker.window,
        breaker_open_seconds=settings.breaker.open_seconds,
        health_check_path=settings.health.path,
        health_check_interval=settings.health.interval,
        health_check_timeout=settings.health.timeout,
    )


def engine_server_factory(limits: LimitsSettings) -> ServerFactory:
    """A factory for the engine's :class:`~bastion.gateway.server.GatewayServer` with ``limits``."""
    engine_limits = EngineLimits(**limits.model_dump())

    def factory(handler: Handler, ssl_context: ssl.SSLContext | None) -> EngineServer:
        return GatewayServer(handler, limits=engine_limits, ssl=ssl_context)

    return factory


def token_verifier_factory(
    *,
    introspection_secrets: Mapping[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    revocation: RevocationSource | None = None,
    on_created: Callable[[IssuerVerifier], None] | None = None,
) -> VerifierFactory:
    """The default :data:`VerifierFactory`: a :class:`TokenValidator` per issuer, plus an
    :class:`Introspector` for issuers with ``introspection`` configured.

    Args:
        introspection_secrets: Client secrets by issuer, resolved by the CLI from
            ``client_secret_env`` / ``client_secret_file``.
        session: aiohttp session shared by JWKS and introspection calls (one is owned per
            validator otherwise).
        revocation: Shared source of revoked token ids, consulted on every cache miss.
        on_created: Called with each verifier built (the CLI feeds revocations to them).
    """
    secrets = dict(introspection_secrets or {})

    def factory(issuer: IssuerSettings) -> TokenVerifier:
        validator = TokenValidator(
            issuer.issuer,
            audience=issuer.audience,
            jwks_uri=issuer.jwks_uri,
            algorithms=issuer.algorithms,
            leeway=issuer.leeway,
            cache_size=issuer.token_cache_size,
            jwks_cache_ttl=issuer.jwks_cache_ttl,
            refetch_cooldown=issuer.jwks_refetch_cooldown,
            session=session,
            revocation=revocation,
        )
        introspector = None
        config = issuer.introspection
        if config is not None:
            secret = secrets.get(issuer.issuer)
            if secret is None:
                raise ValueError(f"issuer {issuer.issuer!r}: introspection client secret was not provided")
            introspector = Introspector(
                issuer.issuer,
                client_id=config.client_id,
                client_secret=secret,
                audience=issuer.audience,
                introspection_endpoint=config.endpoint,
                session=session,
                cache_ttl=config.cache_ttl,
                cache_size=config.cache_size,
                leeway=issuer.leeway,
            )
        verifier = IssuerVerifier(validator, introspector)
        if on_created is not None:
            on_created(verifier)
        return verifier

    return factory


def create_gateway(
    settings: GatewaySettings,
    *,
    verifiers: VerifierFactory | Mapping[str, TokenVerifier] | None = None,
    introspection_secrets: Mapping[str, str] | None = None,
    upstream_factory: UpstreamFactory = engine_upstream_factory,
    server_factory: ServerFactory | None = None,
    ssl_context: ssl.SSLContext | None = None,
    access_log: AccessLog | None = None,
    registry: CollectorRegistry | None = None,
    policy_factories: Sequence[PolicyFactory] | None = None,
    clock: Callable[[], float] = time.time,
    rate_limiter: Limiter | None = None,
    bans: BanGuard | None = None,
    audit: Auditor | None = None,
) -> Gateway:
    """Build a :class:`Gateway` from settings and injected parts.

    Args:
        settings: The validated ``[gateway]`` settings.
        verifiers: A factory ``IssuerSettings -> TokenVerifier`` (called for every issuer, and
            again on reload for changed ones), or a prebuilt map ``issuer -> verifier`` that must
            cover every issuer (then reload cannot add issuers; the caller closes them).
            Default: :func:`token_verifier_factory` with ``introspection_secrets``.
        introspection_secrets: Introspection client secrets by issuer (default factory only).
        upstream_factory: ``(name, UpstreamSettings) -> UpstreamGroup``; the engine's pools by
            default.
        server_factory: ``(handler, ssl_context) -> server``; the engine's ``GatewayServer``
            with ``settings.limits`` by default.
        ssl_context: Server-side TLS context built by the caller from ``tls_cert``/``tls_key``.
        access_log: Where request lines go; defaults to stdout.
        registry: Prometheus registry for the metrics; a fresh one by default.
        policy_factories: The policy chain factories; :func:`default_factories` by default.
        clock: Wall clock for log timestamps.
        rate_limiter: Where rate-limit buckets live (:mod:`bastion.ratelimit`); this process's
            memory (:class:`~bastion.ratelimit.local.LocalLimiter`) by default. The caller
            closes it.
        bans: Refuses banned clients and counts failures toward automatic bans
            (:mod:`bastion.gateway.autoban`); none by default.
        audit: Where the policies' refusals are audited (``gateway.refused``,
            ``gateway.throttled``; :mod:`bastion.gateway.refusals`); nowhere by default.

    Returns:
        A gateway ready to :meth:`~Gateway.start`.
    """
    if verifiers is None:
        verifiers = token_verifier_factory(introspection_secrets=introspection_secrets)
    if isinstance(verifiers, Mapping):
        prebuilt: Mapping[str, TokenVerifier] = verifiers

        def factory(issuer: IssuerSettings) -> TokenVerifier:
            try:
                return prebuilt[issuer.issuer]
            except KeyError:
                raise ValueError(f"no verifier for issuer {issuer.issuer!r}") from None

        verifier_factory: VerifierFactory = factory
        owns = False
    else:
        owns = True
        verifier_factory = verifiers
    log = access_log if access_log is not None else AccessLog(_stdout(), clock=clock)
    return Gateway(
        settings,
        verifier_factory=verifier_factory,
        upstream_factory=upstream_factory,
        server_factory=server_factory
        if server_factory is not None
        else engine_server_factory(settings.limits),
        ssl_context=ssl_context,
        access_log=log,
        metrics=GatewayMetrics(registry),
        policy_factories=policy_factories if policy_factories is not None else default_factories(),
        owns_verifiers=owns,
        rate_limiter=rate_limiter if rate_limiter is not None else LocalLimiter(),
        bans=bans,
        refusals=RefusalReporter(audit) if audit is not None else None,
    )


def _stdout() -> Any:
    return sys.stdout.buffer

"""Access log and metrics for the gateway's hot path.

Both are built to cost little per request:

* :class:`AccessLog` serialises one JSON line per request with orjson into a buffer and hands
  the buffer to its sink every ``flush_lines`` lines or ``flush_interval`` seconds, whichever
  comes first, so a busy gateway makes one ``write`` per batch rather than one per request. No
  :mod:`logging` machinery is involved. The token is never logged: the record has no field
  that could hold it.
* :class:`GatewayMetrics` counts in plain dicts keyed by label tuples and exports them through
  a custom collector registered on the caller's ``CollectorRegistry``, so a request costs a
  few dict operations instead of prometheus-client's per-child locking.

:class:`AdminServer` serves ``/metrics`` and ``/healthz`` on a separate listener (aiohttp).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any
from typing import Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from bastion.ops.aggregate import CACHED_KEYS
from bastion.ops.aggregate import keys_document
from bastion.ops.counting import Histogram

__all__ = ["AccessLog", "AdminServer", "GatewayMetrics", "LogSink"]


class LogSink(Protocol):
    """Where access-log batches go: a binary stream such as ``sys.stdout.buffer`` or a file."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class AccessLog:
    """Buffered JSON-lines access log.

    ``write`` never blocks on I/O apart from the batch flush. A flush is scheduled on the running
    event loop ``flush_interval`` after the first line of a batch; without a running loop lines
    are flushed at ``flush_lines`` and on :meth:`close`.
    """

    __slots__ = ("_buffer", "_clock", "_flush_interval", "_flush_lines", "_sink", "_timer")

    def __init__(
        self,
        sink: LogSink | None,
        *,
        flush_lines: int = 256,
        flush_interval: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Write batches to ``sink``.

        Args:
            sink: A binary stream; the CLI opens it (stdout or an append-mode file). ``None``
                turns the log off (``write`` returns at once).
            flush_lines: Lines buffered before a write.
            flush_interval: Longest time a line waits in the buffer, in seconds.
            clock: Wall clock for the ``time`` field.
        """
        if flush_lines < 1 or flush_interval <= 0:
            raise ValueError("flush_lines must be >= 1 and flush_interval > 0")
        self._sink = sink
        self._flush_lines = flush_lines
        self._flush_interval = flush_interval
        self._clock = clock
        self._buffer: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        """Whether records are kept (``False``: :meth:`write` discards them, so callers on the
        hot path may skip building them)."""
        return self._sink is not None

    def write(self, record: Mapping[str, Any]) -> None:
        """Buffer one record (a ``time`` field is added)."""
        if self._sink is None:
            return
        buffer = self._buffer
        buffer.append(orjson.dumps({"time": round(self._clock(), 6), **record}) + b"\n")
        if len(buffer) >= self._flush_lines:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self._flush_interval, self.flush)

    def flush(self) -> None:
        """Write out whatever is buffered."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer or self._sink is None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._sink.write(data)
        self._sink.flush()

    def close(self) -> None:
        """Flush; the sink itself belongs to the caller."""
        self.flush()


class GatewayMetrics(Collector):
    """The gateway's Prometheus metrics, counted in dicts and exported on scrape.

    Metric families:

    * ``bastion_gateway_requests_total{route,status}``
    * ``bastion_gateway_request_duration_seconds{route}`` (histogram)
    * ``bastion_gateway_auth_failures_total{reason}``
    * ``bastion_gateway_upstream_errors_total{upstream,reason}``
    * ``bastion_gateway_token_cache_total{result="hit"|"miss"}`` and
      ``bastion_gateway_token_cache_hit_ratio``
    * ``bastion_gateway_path_refused_total{reason}``
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register on ``registry`` (a fresh one when ``None``); see :attr:`registry`."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.auth_failures: dict[str, int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.path_refused: dict[str, int] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.registry.register(self)

    # -- hot path -------------------------------------------------------------------------

    def request(self, route: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        key = (route, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram()
        histogram.observe(seconds)

    def auth_failure(self, reason: str) -> None:
        """Count a refused token (or a missing one, reason ``missing``)."""
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1

    def upstream_error(self, upstream: str, reason: str) -> None:
        """Count an upstream failure reported by the engine."""
        key = (upstream, reason)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def refused_path(self, reason: str) -> None:
        """Count a request target refused by :mod:`bastion.gateway.paths`."""
        self.path_refused[reason] = self.path_refused.get(reason, 0) + 1

    # -- export ---------------------------------------------------------------------------

    def describe(self) -> Iterator[Any]:
        """Nothing up front: families depend on what has been counted."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """Build the metric families from the counters (called on scrape)."""
        requests = CounterMetricFamily(
            "bastion_gateway_requests", "Requests by route and status.", labels=["route", "status"]
        )
        for (route, status), count in list(self.requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "bastion_gateway_request_duration_seconds", "Total request time by route.", labels=["route"]
        )
        for route, histogram in list(self.latency.items()):
            latency.add_metric([route], histogram.buckets(), histogram.sum)
        yield latency
        auth = CounterMetricFamily(
            "bastion_gateway_auth_failures", "Refused or missing tokens by reason.", labels=["reason"]
        )
        for reason, count in list(self.auth_failures.items()):
            auth.add_metric([reason], count)
        yield auth
        upstream = CounterMetricFamily(
            "bastion_gateway_upstream_errors", "Upstream failures.", labels=["upstream", "reason"]
        )
        for (name, reason), count in list(self.upstream_errors.items()):
            upstream.add_metric([name, reason], count)
        yield upstream
        refused = CounterMetricFamily(
            "bastion_gateway_path_refused", "Request targets refused before routing.", labels=["reason"]
        )
        for reason, count in list(self.path_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        cache = CounterMetricFamily(
            "bastion_gateway_token_cache", "Verified-token cache lookups.", labels=["result"]
        )
        cache.add_metric(["hit"], self.cache_hits)
        cache.add_metric(["miss"], self.cache_misses)
        yield cache
        lookups = self.cache_hits + self.cache_misses
        yield GaugeMetricFamily(
            "bastion_gateway_token_cache_hit_ratio",
            "Share of token checks answered by the verified-token cache.",
            value=self.cache_hits / lookups if lookups else 0.0,
        )


class CachedKeysCollector(Collector):
    """:data:`~bastion.ops.aggregate.CACHED_KEYS`: 1 for each ``kid`` an issuer's validator
    holds, read at scrape time (the supervisor's ``/keys`` intersects its workers' answers)."""

    def __init__(self, keys: Callable[[], Mapping[str, Iterable[str]]]) -> None:
        self._keys = keys

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(CACHED_KEYS, "", labels=["issuer", "kid"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            CACHED_KEYS,
            "1 for each signing key (kid) an issuer's token validator holds.",
            labels=["issuer", "kid"],
        )
        for issuer, kids in self._keys().items():
            for kid in sorted(kids):
                family.add_metric([issuer, kid], 1.0)
        yield family


class AdminServer:
    """``/metrics`` (Prometheus text format), ``/healthz`` and ``/keys`` (the ``kid`` of the
    keys each issuer's validator holds, read-only) on their own listener."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        healthy: Callable[[], bool] = lambda: True,
        keys: Callable[[], Mapping[str, Iterable[str]]] = dict,
    ) -> None:
        """Serve ``registry``; ``healthy`` decides ``/healthz`` (200 or 503); ``keys`` lists the
        ``kid`` of the keys cached per issuer, for ``/keys``."""
        self._registry = registry
        self._healthy = healthy
        self._keys = keys
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="unavailable\n")

    async def _cached_keys(self, request: web.Request) -> web.Response:
        return web.Response(body=keys_document(self._keys()), content_type="application/json")

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port`` (``0`` picks a free port, see :attr:`port`), or accept on
        the listening ``sock`` when given."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/keys", self._cached_keys)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site: web.BaseSite = (
            web.TCPSite(self._runner, host, port) if sock is None else web.SockSite(self._runner, sock)
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

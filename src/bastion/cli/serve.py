"""``bastion serve``: migrate once, then run N worker processes.

Each worker runs one event loop (uvloop) holding the authorization server (under uvicorn) and,
when configured, the gateway. The supervisor binds the public listeners once, before it
starts anything, and every worker accepts on those same sockets (see :mod:`bastion.cli.listen`):
only this server's own workers share its ports, and a port in use is a one-line error. Workers
share nothing else but the stores. The pid file is written after the listeners are bound and
removed only by the process that wrote it.

Metrics: every component of a worker counts on one registry. The server has one metrics
listener (:meth:`~bastion.settings.Settings.metrics_listener`) whatever the number of workers:
with one worker, the worker serves its registry there; with more, the supervisor does, merging
what each worker answers on a private socket pair (:mod:`bastion.ops.channel`,
:mod:`bastion.ops.aggregate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bastion.cli.common import asgi_server
from bastion.cli.context import SealerKeys
from bastion.cli.context import kek_for
from bastion.cli.context import open_audit
from bastion.cli.context import ready_stores
from bastion.cli.context import sealer_keys
from bastion.cli.context import stores_for
from bastion.cli.gateway import open_limiter
from bastion.cli.listen import listen_socket
from bastion.net import is_loopback_host
from bastion.settings import Settings

log = logging.getLogger("bastion.serve")


def pid_file(settings: Settings) -> Path:
    """Where the supervisor writes its pid (for ``bastion reload``)."""
    return settings.data_dir / "bastion.pid"


def send_reload(settings: Settings) -> int:
    """SIGHUP the running supervisor; returns its pid."""
    path = pid_file(settings)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        raise click.ClickException(f"no running `bastion serve` found (no live pid in {path})") from None
    return pid


@dataclass
class Listeners:
    """The listening sockets the supervisor bound for its workers."""

    server: socket.socket | None = None
    """The authorization server's (``authorization_server.listen``)."""
    gateway: socket.socket | None = None
    """The gateway's public listener (``gateway.listen``)."""
    bff: socket.socket | None = None
    """The backend-for-frontend's (``bff.listen``)."""
    metrics: socket.socket | None = None
    """The server's metrics listener (``metrics.listen`` or ``gateway.admin_listen``)."""
    admin: socket.socket | None = None
    """The admin API's (``authorization_server.admin_listen``)."""

    def close(self) -> None:
        """Close the supervisor's copies (workers hold their own)."""
        for sock in (self.server, self.gateway, self.bff, self.metrics, self.admin):
            if sock is not None:
                sock.close()


def open_listeners(settings: Settings) -> Listeners:
    """Bind every listener of ``settings`` once.

    Raises:
        ListenError: an address is in use or cannot be bound (the message names it).
    """
    listeners = Listeners()
    try:
        if settings.authorization_server.enabled:
            listeners.server = listen_socket(
                settings.authorization_server.listen, "authorization_server.listen"
            )
            admin = settings.authorization_server.admin_address
            if admin is not None:
                listeners.admin = listen_socket(admin, "authorization_server.admin_listen")
        if settings.gateway is not None:
            listeners.gateway = listen_socket(settings.gateway.listen, "gateway.listen")
        if settings.bff is not None:
            listeners.bff = listen_socket(settings.bff.listen, "bff.listen")
        metrics = settings.metrics_listener()
        if metrics is not None:
            listeners.metrics = listen_socket(*metrics, backlog=64)
    except BaseException:
        listeners.close()
        raise
    return listeners


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_worker(
    settings: Settings, keys: SealerKeys, listeners: Listeners, channel: socket.socket | None
) -> None:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from bastion.gateway.observe import AdminServer
    from bastion.ops.channel import answer_scrapes
    from bastion.server.app import create_app
    from bastion.server.people import people_routes
    from bastion.services.container import Services

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reload_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)

    stores = stores_for(settings)
    audit = open_audit(settings, stores)
    registry = CollectorRegistry(auto_describe=True)
    tasks: list[asyncio.Task[Any]] = []
    server: uvicorn.Server | None = None
    admin_server: uvicorn.Server | None = None
    gateway = None
    bff = None
    limiter = None
    admin: AdminServer | None = None
    scrapes: asyncio.Task[None] | None = None
    services: Services | None = None
    alerts = None
    try:
        if settings.authorization_server.enabled:
            # The clients' request-rate buckets beside the fast state, shared by every worker
            # (failed authentications are counted in the fast state itself).
            limiter = open_limiter(settings.resolved_state_url())
            services = Services.create(
                settings.authorization_server, stores, keys.sealer(), audit, limiter=limiter
            )
            registry.register(services.metrics)
            app = create_app(services, extra_routes=people_routes(services))
            server = asgi_server(app, lifespan=True)
            if listeners.server is None:
                raise RuntimeError("the supervisor bound no authorization server listener")
            tasks.append(loop.create_task(server.serve(sockets=[listeners.server])))
            if listeners.admin is not None:
                # No lifespan: the public app's starts and stops the services both share, so the
                # admin API serves only once that start-up is done (signing keys loaded): until
                # then its clients wait in the listener's backlog instead of getting a 401.
                admin_server = asgi_server(admin_app(settings, services, stores, audit), lifespan=False)
                tasks.append(loop.create_task(serve_after(server, admin_server, listeners.admin)))
        if settings.gateway is not None:
            from bastion.cli.gateway import start_gateway

            gateway = await start_gateway(
                settings, stores, registry=registry, listener=listeners.gateway, audit=audit
            )

        if settings.bff is not None:
            from bastion.cli.bff import start_bff

            if listeners.bff is None:
                raise RuntimeError("the supervisor bound no BFF listener")
            bff = await start_bff(settings.bff, stores.state, listeners.bff, registry=registry)
            tasks.append(bff.task)
        if settings.alerts.rules and (services is not None or gateway is not None):
            from bastion.cli.alerting import start_alerts

            alerts = start_alerts(settings, stores, audit, gateway=gateway, services=services)
        if channel is not None:
            scrapes = loop.create_task(answer_scrapes(channel, registry))
        elif listeners.metrics is not None:
            admin = AdminServer(registry, keys=gateway.gateway.cached_kids if gateway is not None else dict)
            await admin.start(sock=listeners.metrics)

        async def reloader() -> None:
            from bastion.cli.config import ConfigError
            from bastion.cli.config import load_settings

            while True:
                await reload_requested.wait()
                reload_requested.clear()
                if gateway is None:
                    continue
                try:
                    fresh, _ = load_settings(os.environ.get("BASTION_CONFIG"))
                    if fresh.gateway is not None:
                        await gateway.reload(fresh.gateway)
                        log.warning("gateway routes reloaded")
                except (ConfigError, ValueError) as exc:
                    log.error("reload refused, keeping the current routes: %s", exc)

        # Everything built at start-up lives as long as the process: move it out of the collector's
        # sight, and collect young objects less often. Each request allocates a few dozen
        # short-lived objects, and the default threshold ran a collection every few requests.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        reload_task = loop.create_task(reloader())
        stopper = loop.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, reload_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
        reload_task.cancel()
        stopper.cancel()
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        if alerts is not None:
            await alerts.close()
        if scrapes is not None:
            scrapes.cancel()
        if admin is not None:
            await admin.close()
        if server is not None:
            server.should_exit = True
        if admin_server is not None:
            admin_server.should_exit = True
        if gateway is not None:
            await gateway.close()
        if bff is not None:
            await bff.close()
        for task in tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        if limiter is not None:
            await limiter.close()
        await audit.close()
        await stores.close()


async def serve_after(first: Any, then: Any, listener: socket.socket) -> None:
    """Serve uvicorn server ``then`` on ``listener`` once server ``first`` has started (its
    lifespan start-up done); not at all if ``first`` stops before."""
    while not first.started:  # uvicorn offers a flag to poll, not an event
        if first.should_exit:
            return
        await asyncio.sleep(0.01)
    await then.serve(sockets=[listener])


def admin_app(settings: Settings, services: Any, stores: Any, audit: Any) -> Any:
    """The admin API over a worker's services (see :mod:`bastion.server.admin`)."""
    from bastion.cli.bans import bannable
    from bastion.gateway.bans import BanBook
    from bastion.server.admin.app import create_admin_app
    from bastion.server.admin.routing import AdminContext

    server = settings.authorization_server
    context = AdminContext(
        services=services,
        bans=BanBook(stores.bans, stores.state, audit),
        bannable=bannable(settings),
        max_body=server.max_body_bytes,
    )
    return create_admin_app(context, server.trusted_proxies)


def worker_main(
    settings: Settings, keys: SealerKeys, listeners: Listeners, channel: socket.socket | None = None
) -> None:
    """Run a worker in this process, on the supervisor's ``listeners``; it answers the
    supervisor's metrics scrapes on ``channel``, or serves ``listeners.metrics`` itself."""
    logging.basicConfig(
        level=settings.logging.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_worker(settings, keys, listeners, channel))


def worker_process(
    settings: Settings, keys: SealerKeys, listeners: Listeners, channel: socket.socket
) -> None:
    """Entry point of a spawned worker: a failure the operator can fix is one line, exit 1."""
    try:
        worker_main(settings, keys, listeners, channel)
    except click.ClickException as exc:
        exc.show()
        sys.exit(1)


async def _prepare(settings: Settings, *, migrate: bool) -> SealerKeys:
    """Check the stores, get the key-encryption key, migrate, and create the first signing keys
    once, before workers race to. Returns what the workers' sealers are built from."""
    from bastion.services.container import Services
    from bastion.storage.sql.migrate import migrate as apply_migrations

    stores = await ready_stores(settings)
    try:
        kek = await kek_for(settings, stores)
        if migrate:
            await apply_migrations(stores.db)
        keys = await sealer_keys(stores, kek)
        if settings.authorization_server.enabled:
            audit = open_audit(settings, stores)
            try:
                services = Services.create(settings.authorization_server, stores, keys.sealer(), audit)
                await services.keys.load()
                await services.keys.ensure()
            finally:
                await audit.close()
    finally:
        await stores.close()
    return keys


def supervise(procs: list[Any], stopping: Callable[[], bool], signal_all: Callable[[int, Any], None]) -> bool:
    """Wait for the workers; if one dies while the others serve, say so and stop them all (a
    half-running server that looks healthy is worse than one that stops). Returns whether a
    worker failed."""
    failed = False
    while any(proc.is_alive() for proc in procs):
        for n, proc in enumerate(procs):
            proc.join(timeout=0.2)
            if proc.exitcode is not None and not stopping() and not failed:
                failed = True
                click.secho(
                    f"error: worker {n} exited with code {proc.exitcode} (see its log above); stopping the others",
                    fg="red",
                    err=True,
                )
                signal_all(signal.SIGTERM, None)
    return failed


def write_pid_file(settings: Settings) -> Path:
    """Write this process's pid to :func:`pid_file`."""
    path = pid_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))
    return path


def remove_pid_file(path: Path) -> None:
    """Remove ``path`` if it still holds this process's pid (another server may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def serve(settings: Settings, *, workers: int, migrate: bool, config_path: Path | None = None) -> None:
    """Run the configured components until SIGTERM/SIGINT; SIGHUP reloads gateway routes."""
    if config_path is not None:
        os.environ["BASTION_CONFIG"] = str(config_path.resolve())  # what a reload re-reads
    if not settings.authorization_server.enabled and settings.gateway is None and settings.bff is None:
        raise click.ClickException(
            "nothing to serve: enable [authorization_server] or configure [gateway] or [bff]"
        )
    if settings.bff is not None:
        from bastion.cli.bff import bff_secret

        try:
            bff_secret(settings.bff)  # a missing secret is a clear error before anything starts
            from bastion.bff.cookies import CookiePolicy

            CookiePolicy.for_origin(settings.bff.redirect_uri)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    if settings.alerts.webhooks:
        from bastion.cli.alerting import receivers

        try:
            receivers(settings.alerts)  # a missing webhook secret is a clear error up front
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    listeners = open_listeners(settings)
    try:
        _serve(settings, listeners, workers=workers, migrate=migrate)
    finally:
        listeners.close()


def _serve(settings: Settings, listeners: Listeners, *, workers: int, migrate: bool) -> None:
    from bastion.cli.common import run

    keys = run(_prepare(settings, migrate=migrate))
    parts = []
    if settings.authorization_server.enabled:
        parts.append(
            f"authorization server on http://{settings.authorization_server.listen} "
            f"(issuer {settings.authorization_server.issuer})"
        )
        admin = settings.authorization_server.admin_address
        if admin is not None:
            parts.append(f"admin API on http://{admin}")
            if settings.authorization_server.insecure_admin_listen and not is_loopback_host(
                admin.rpartition(":")[0]
            ):
                click.secho(
                    f"WARNING: the admin API listens on {admin}, beyond loopback, in plain HTTP "
                    "(insecure_admin_listen = true): its bearer tokens cross the network in the "
                    "clear unless TLS is terminated in front of it",
                    fg="red",
                    err=True,
                )
    if settings.gateway is not None:
        parts.append(f"gateway on {settings.gateway.listen}")
    if settings.bff is not None:
        parts.append(f"BFF on {settings.bff.listen}")
    metrics = settings.metrics_listener()
    if metrics is not None:
        parts.append(f"metrics on http://{metrics[0]}/metrics")
    click.echo(f"bastion {'; '.join(parts)}; {workers} worker(s). Ctrl-C to stop.", err=True)
    written = write_pid_file(settings)
    try:
        if workers == 1:
            worker_main(settings, keys, listeners)
            return
        ctx = multiprocessing.get_context("spawn")
        # The workers accept on the public listeners; the metrics listener is the supervisor's.
        shared = dataclasses.replace(listeners, metrics=None)
        pairs = [socket.socketpair() for _ in range(workers)]
        procs = [
            ctx.Process(target=worker_process, args=(settings, keys, shared, theirs), daemon=False)
            for _, theirs in pairs
        ]
        for proc in procs:
            proc.start()
        for _, theirs in pairs:
            theirs.close()
        endpoint = None
        if listeners.metrics is not None:
            from bastion.ops.channel import MetricsEndpoint
            from bastion.ops.channel import WorkerChannel

            endpoint = MetricsEndpoint(
                listeners.metrics,
                [WorkerChannel(ours) for ours, _ in pairs],
                healthy=lambda: all(proc.is_alive() for proc in procs),
                timeout=settings.metrics.scrape_timeout,
            )
            endpoint.start()

        stopping = False

        def forward(sig: int, _frame: Any) -> None:
            nonlocal stopping
            stopping = stopping or sig != signal.SIGHUP
            for proc in procs:
                if proc.pid is not None and proc.is_alive():
                    os.kill(proc.pid, sig)

        signal.signal(signal.SIGHUP, forward)
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        failed = supervise(procs, lambda: stopping, forward)
        if endpoint is not None:
            endpoint.close()
        if failed or any(proc.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT) for proc in procs):
            sys.exit(1)
    finally:
        remove_pid_file(written)

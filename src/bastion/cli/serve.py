"""``bastion serve``: migrate once, then run N worker processes.

Each worker runs one event loop (uvloop) holding the authorization server (under uvicorn) and,
when configured, the gateway. Listening sockets use ``SO_REUSEPORT``, so every worker binds the
same ports and the kernel spreads connections; workers share nothing but the stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bastion.cli.context import load_kek
from bastion.cli.context import stores_for
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


def bind(listen: str) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT (so every worker can bind the same port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_worker(settings: Settings, kek: bytes, worker: int) -> None:
    import uvicorn

    from bastion.ops.audit import AuditLog
    from bastion.server.app import create_app
    from bastion.server.people import people_routes
    from bastion.services.container import Services
    from bastion.services.crypto import Sealer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reload_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)

    stores = stores_for(settings)
    audit = AuditLog(settings.resolved_audit_log())
    tasks: list[asyncio.Task[Any]] = []
    server: uvicorn.Server | None = None
    gateway = None
    try:
        if settings.authorization_server.enabled:
            services = Services.create(settings.authorization_server, stores, Sealer(kek), audit)
            app = create_app(services, extra_routes=people_routes(services))
            config = uvicorn.Config(
                app,
                http="httptools",
                lifespan="on",
                access_log=False,
                log_level="warning",
                server_header=False,
                proxy_headers=False,
                timeout_graceful_shutdown=10,
            )
            server = uvicorn.Server(config)
            sock = bind(settings.authorization_server.listen)
            tasks.append(loop.create_task(server.serve(sockets=[sock])))
        if settings.gateway is not None:
            from bastion.cli.gateway import start_gateway

            gateway = await start_gateway(settings, stores, worker=worker)

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
        if server is not None:
            server.should_exit = True
        if gateway is not None:
            await gateway.close()
        for task in tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        await audit.close()
        await stores.close()


def worker_main(settings: Settings, kek: bytes, worker: int = 0) -> None:
    """Entry point of worker process number ``worker``."""
    logging.basicConfig(
        level=settings.logging.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_worker(settings, kek, worker))


async def _migrate(settings: Settings) -> None:
    from bastion.storage.sql.migrate import migrate

    stores = stores_for(settings)
    try:
        await migrate(stores.db)
    finally:
        await stores.close()


async def _prepare_keys(settings: Settings, kek: bytes) -> None:
    """Create the first signing keys once, before workers race to."""
    from bastion.ops.audit import AuditLog
    from bastion.services.container import Services
    from bastion.services.crypto import Sealer

    stores = stores_for(settings)
    audit = AuditLog(settings.resolved_audit_log())
    try:
        services = Services.create(settings.authorization_server, stores, Sealer(kek), audit)
        await services.keys.load()
        await services.keys.ensure()
    finally:
        await audit.close()
        await stores.close()


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


def serve(settings: Settings, *, workers: int, migrate: bool, config_path: Path | None = None) -> None:
    """Run the configured components until SIGTERM/SIGINT; SIGHUP reloads gateway routes."""
    if config_path is not None:
        os.environ["BASTION_CONFIG"] = str(config_path.resolve())  # what a reload re-reads
    kek = load_kek(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from bastion.cli.common import run

    if migrate:
        run(_migrate(settings))
    if settings.authorization_server.enabled:
        run(_prepare_keys(settings, kek))
    parts = []
    if settings.authorization_server.enabled:
        parts.append(
            f"authorization server on http://{settings.authorization_server.listen} "
            f"(issuer {settings.authorization_server.issuer})"
        )
    if settings.gateway is not None:
        parts.append(f"gateway on {settings.gateway.listen}")
    if not parts:
        raise click.ClickException("nothing to serve: enable [authorization_server] or configure [gateway]")
    click.echo(f"bastion {'; '.join(parts)}; {workers} worker(s). Ctrl-C to stop.", err=True)
    pid_file(settings).write_text(str(os.getpid()))
    try:
        if workers == 1:
            worker_main(settings, kek)
            return
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=worker_main, args=(settings, kek, n), daemon=False) for n in range(workers)
        ]
        for proc in procs:
            proc.start()

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
        if failed or any(proc.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT) for proc in procs):
            sys.exit(1)
    finally:
        with contextlib.suppress(OSError):
            pid_file(settings).unlink()

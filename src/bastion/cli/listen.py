"""Listening sockets that belong to one ``bastion serve`` alone.

The supervisor binds each public listener once, before any worker starts, and hands the socket
to its workers (``multiprocessing`` passes the descriptor to each spawned child). The sockets do
not set ``SO_REUSEPORT``: with it, a second server started on the same port by the same user
would join the first one's port group and the kernel would split requests between two
unrelated deployments. ``SO_REUSEADDR`` only lets a restart bind over connections in
``TIME_WAIT``; on Linux it never shares a port with a socket that is listening.

A port in use is a one-line error naming the address and the setting, never a traceback.
"""

from __future__ import annotations

import errno
import socket

from bastion.cli.context import BastionError


class ListenError(BastionError):
    """A listener could not be opened (address in use, not available, or not permitted)."""


def listen_error(listen: str, setting: str, exc: OSError) -> ListenError:
    """The one-line error for failing to listen on ``listen`` (the value of ``setting``)."""
    reason = (exc.strerror or str(exc)).strip()
    reason = reason[:1].lower() + reason[1:]
    hint = "; is another server running on it?" if exc.errno == errno.EADDRINUSE else ""
    return ListenError(f"cannot listen on {listen}: {reason} ({setting}{hint})")


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) as a host and a port number."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def listen_socket(listen: str, setting: str, *, backlog: int = 2048) -> socket.socket:
    """A non-blocking socket listening on ``listen``, for this process and its children only.

    Raises:
        ListenError: the address cannot be bound or listened on; the message names
            ``listen`` and ``setting``.
    """
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Two binds with SO_REUSEADDR can both succeed while neither listens; the second
        # listen() then fails with EADDRINUSE, so it is part of the same check.
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise listen_error(listen, setting, exc) from None
    sock.setblocking(False)
    return sock


def probe(listen: str, setting: str) -> None:
    """Fail now, with :class:`ListenError`, if ``listen`` cannot be listened on.

    For listeners a worker opens itself (the gateway's per-worker admin listener): they do not
    set ``SO_REUSEPORT`` either, so losing a race after the probe is the same one-line error
    from the worker, never a shared port.
    """
    listen_socket(listen, setting, backlog=1).close()

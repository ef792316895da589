"""Processes under test: started pinned to a core, awaited on their port, stopped by their id.

Every server the suites start goes through :class:`Service`: ``taskset -c <cores>`` in front of
the command, its own session (so stopping it reaches its workers and nothing else), stdout and
stderr to a log file under ``bench/.work/logs``, and a readiness check on its port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

#: Core of the server under test.
SERVER_CORE = "0"
#: Core of the load generator and of every upstream / helper.
CLIENT_CORE = "1"


def worker_cores(workers: int) -> str:
    """``taskset`` cores for ``workers`` processes: core 0 alone for one, else the first
    ``workers`` cores (all of them on a machine with fewer), shared with the load generator."""
    if workers <= 1:
        return SERVER_CORE
    available = sorted(os.sched_getaffinity(0))
    return ",".join(str(core) for core in available[:workers])


class ServiceError(RuntimeError):
    """A service did not come up; the message ends with the tail of its log."""


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that are all free right now.

    Raises:
        ServiceError: no such block was found.
    """
    for _ in range(attempts):
        base = free_port()
        if base + count > 65535:
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise ServiceError(f"no {count} consecutive free ports")


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


class Service:
    """One server process, pinned with ``taskset``, used as a context manager.

    Args:
        name: Label for progress lines and the log file name.
        argv: The command (without ``taskset``).
        cores: Value for ``taskset -c`` (``"0"``, ``"1"``, ``"0,1"``), or ``None`` not to pin.
        port: TCP port on 127.0.0.1 the service listens on once ready.
        log_dir: Where ``<name>.log`` is written.
        env: Extra environment variables.
        cwd: Working directory.
        ready_path: If set, readiness means ``GET http://127.0.0.1:<port><ready_path>`` answers
            (any status); otherwise a TCP connect is enough.
        timeout: Seconds to wait for readiness.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cores: str | None,
        port: int,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_path: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = [*(["taskset", "-c", cores] if cores is not None else []), *argv]
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.ready_path = ready_path
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (of ``taskset``'s exec, i.e. the server itself)."""
        if self.proc is None:
            raise ServiceError(f"{self.name} is not running")
        return self.proc.pid

    def start(self) -> Service:
        """Start the process and wait until it accepts connections.

        Raises:
            ServiceError: it exited or did not get ready within ``timeout`` seconds.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"{self.name} not ready on port {self.port}:\n{_tail(self.log_path)}")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        if self.ready_path is None:
            return True
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGTERM the service's process group, SIGKILL it after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def cpu_ticks(self) -> int:
        """User plus system clock ticks used so far by the service and its descendants."""
        return sum(_cpu_ticks(pid) for pid in [self.pid, *_descendants(self.pid)])

    def rss_bytes(self) -> int:
        """Resident memory of the service and all its descendants."""
        return sum(_rss(pid) for pid in [self.pid, *_descendants(self.pid)])

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def core_ticks(core: str) -> tuple[int, int]:
    """(busy, total) clock ticks of CPU ``core`` since boot, from ``/proc/stat``.

    Busy is user + nice + system time of processes plus steal (time the hypervisor gave to
    another guest); interrupt and softirq time (the kernel's loopback networking, which no
    process is charged for) are in the total only.
    """
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name == f"cpu{core}":
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
            return user + nice + system + steal, user + nice + system + idle + iowait + irq + softirq + steal
    raise ValueError(f"no cpu{core} in /proc/stat")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            stack.extend(children)
    return found


def wait_port_closed(port: int, timeout: float = 5.0) -> None:
    """Block until nothing accepts on ``port`` (a stopped service really released it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
        except OSError:
            return
        time.sleep(0.05)

"""First-use installation of the benchmark's peers and load generator.

Nothing is installed by hand: ``wrk``, ``haproxy``, ``nginx`` and ``redis-server`` come from Debian's packages
(``apt-get`` only when a binary is missing), panva's ``oidc-provider`` 9 from npm into
``bench/.work/oidc_provider`` (gitignored), and ``py-spy`` from PyPI into the virtualenv when a
profile is asked for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"
OIDC_SOURCE = BENCH_DIR / "oidc_provider"
OIDC_WORK = WORK_DIR / "oidc_provider"

#: Debian package name for each binary the suites need.
DEBIAN_PACKAGES = {"wrk": "wrk", "haproxy": "haproxy", "nginx": "nginx", "redis-server": "redis-server"}


class InstallError(RuntimeError):
    """A tool could not be installed; the message says which and how to do it by hand."""


def binary(name: str) -> str:
    """The absolute path of ``name`` (also looking in the sbin directories apt installs to)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if found is None:
        raise InstallError(f"{name} is not installed")
    return found


def ensure_debian_tools(names: tuple[str, ...] = ("wrk", "haproxy", "nginx", "redis-server")) -> None:
    """Install the missing Debian packages among ``names`` with ``apt-get`` (we run as root).

    Raises:
        InstallError: ``apt-get`` failed or the binaries are still missing afterwards.
    """
    missing = []
    for name in names:
        try:
            binary(name)
        except InstallError:
            missing.append(DEBIAN_PACKAGES[name])
    if not missing:
        return
    print(f"installing Debian packages: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise InstallError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    for name in names:
        binary(name)


def ensure_oidc_provider() -> Path:
    """``npm install`` the pinned oidc-provider 9 next to a copy of ``bench/oidc_provider``.

    Returns:
        The directory holding ``server.mjs`` and ``node_modules``.

    Raises:
        InstallError: node or npm is missing, or ``npm install`` failed.
    """
    OIDC_WORK.mkdir(parents=True, exist_ok=True)
    for source in OIDC_SOURCE.iterdir():
        if source.is_file():
            target = OIDC_WORK / source.name
            if not target.exists() or target.read_bytes() != source.read_bytes():
                shutil.copyfile(source, target)
    stamp = OIDC_WORK / "node_modules" / ".bench-installed"
    manifest = (OIDC_WORK / "package.json").read_bytes()
    if stamp.exists() and stamp.read_bytes() == manifest:
        return OIDC_WORK
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise InstallError("node and npm are needed for the oidc-provider rows (apt-get install nodejs npm)")
    print("installing oidc-provider 9 with npm", flush=True)
    result = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=error"],
        cwd=OIDC_WORK,
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise InstallError(f"npm install failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    stamp.write_bytes(manifest)
    return OIDC_WORK


def ensure_py_spy() -> str:
    """``py-spy`` from PyPI into this virtualenv, for ``--profile``.

    Raises:
        InstallError: pip failed.
    """
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    print("installing py-spy with pip", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not candidate.exists():
        raise InstallError(f"pip install py-spy failed:\n{result.stderr[-2000:]}")
    return str(candidate)


if __name__ == "__main__":
    ensure_debian_tools()
    print(ensure_oidc_provider())

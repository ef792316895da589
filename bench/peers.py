"""Configuration files and services for the peers: nginx (upstream, plain proxy) and HAProxy.

Each peer runs in the foreground with one worker (``worker_processes 1`` / ``nbthread 1``), its
pid file, logs and temp directories under ``bench/.work``, listening on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import re
import subprocess
from pathlib import Path

from install import binary
from procs import Service
from token_pool import AUDIENCE
from token_pool import ISSUER
from token_pool import TokenPool

_NGINX_COMMON = """\
worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {work}/{name}-tmp/body;
    proxy_temp_path {work}/{name}-tmp/proxy;
    fastcgi_temp_path {work}/{name}-tmp/fastcgi;
    uwsgi_temp_path {work}/{name}-tmp/uwsgi;
    scgi_temp_path {work}/{name}-tmp/scgi;
{body}
}}
"""


def _nginx_service(name: str, body: str, port: int, work: Path, cores: str) -> Service:
    (work / f"{name}-tmp").mkdir(parents=True, exist_ok=True)
    conf = work / f"{name}.conf"
    conf.write_text(_NGINX_COMMON.format(work=work, name=name, body=body))
    return Service(
        name,
        [binary("nginx"), "-p", str(work), "-c", str(conf)],
        cores=cores,
        port=port,
        log_dir=work / "logs",
    )


def nginx_upstream(port: int, work: Path, jwks: Path, cores: str) -> Service:
    """nginx answering ``200 ok`` to everything, and ``/jwks.json`` from a static file."""
    body = f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /jwks.json {{
            default_type application/json;
            alias {jwks};
        }}
        location / {{
            default_type text/plain;
            return 200 "ok";
        }}
    }}"""
    return _nginx_service("nginx-upstream", body, port, work, cores)


def nginx_proxy(port: int, upstream_port: int, work: Path, cores: str) -> Service:
    """nginx as a plain reverse proxy with pooled keep-alive upstream connections."""
    body = f"""\
    upstream origin {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}"""
    return _nginx_service("nginx-proxy", body, port, work, cores)


def haproxy_config(port: int, upstream_port: int, pool: TokenPool, tls_pem: Path | None = None) -> str:
    """An HAProxy 2.6 configuration verifying every request's bearer token before proxying.

    The checks mirror what Bastion's gateway does for a JWT access token, as far as HAProxy 2.6's
    converters allow: a bearer token is present; the JOSE header's ``alg`` is the expected one
    and ``typ`` is ``at+jwt`` (RFC 9068 §4); the signature verifies (``jwt_verify`` with the PEM
    public key); ``iss`` and ``aud`` match exactly; ``exp`` is in the future. Any failure is a 401.
    """
    bind = f"bind 127.0.0.1:{port}" + (f" ssl crt {tls_pem} alpn http/1.1" if tls_pem else "")
    deny = "http-request deny deny_status 401"
    return f"""\
global
    nbthread 1
    maxconn 8000
    tune.bufsize 16384

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive

frontend api
    {bind}
    http-request set-var(txn.bearer) http_auth_bearer
    {deny} unless {{ var(txn.bearer) -m found }}
    {deny} unless {{ var(txn.bearer),jwt_header_query('$.alg') -m str {pool.alg} }}
    {deny} unless {{ var(txn.bearer),jwt_header_query('$.typ') -m str at+jwt }}
    {deny} unless {{ var(txn.bearer),jwt_verify("{pool.alg}","{pool.public_pem}") -m int 1 }}
    {deny} unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {ISSUER} }}
    {deny} unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {AUDIENCE} }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    {deny} unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    default_backend origin

backend origin
    http-reuse always
    server up 127.0.0.1:{upstream_port} maxconn 1000
"""


def haproxy(
    name: str,
    port: int,
    upstream_port: int,
    pool: TokenPool,
    work: Path,
    cores: str,
    tls_pem: Path | None = None,
) -> Service:
    """HAProxy with :func:`haproxy_config`, checked with ``haproxy -c`` first.

    Raises:
        RuntimeError: the configuration does not validate.
    """
    conf = work / f"{name}.cfg"
    conf.write_text(haproxy_config(port, upstream_port, pool, tls_pem))
    check = subprocess.run(
        [binary("haproxy"), "-c", "-f", str(conf)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c {conf} failed:\n{check.stdout}{check.stderr}")
    return Service(
        name, [binary("haproxy"), "-db", "-f", str(conf)], cores=cores, port=port, log_dir=work / "logs"
    )


def redis_server(port: int, work: Path, cores: str | None) -> Service:
    """A private ``redis-server`` (no persistence) for the rows whose rate limits live on Redis;
    private so the buckets a run leaves behind touch no one else's data."""
    directory = work / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    return Service(
        "redis",
        [
            binary("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        cores=cores,
        port=port,
        log_dir=work / "logs",
    )


def versions() -> dict[str, str]:
    """Versions of the peers, wrk, node and Bastion's Python, as short strings."""
    patterns = {
        "nginx": ([binary("nginx"), "-v"], r"nginx/(\S+)"),
        "haproxy": ([binary("haproxy"), "-v"], r"HAProxy version (\S+)"),
        "wrk": ([binary("wrk"), "-v"], r"wrk (\S+)"),
        "redis-server": ([binary("redis-server"), "--version"], r"v=(\S+)"),
        "node": (["node", "--version"], r"v(\S+)"),
    }
    out: dict[str, str] = {"python": platform.python_version()}
    for name, (argv, pattern) in patterns.items():
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError:
            continue
        found = re.search(pattern, proc.stdout + proc.stderr)
        if found:
            out[name] = found.group(1).removeprefix("debian/")
    for package in ("bastion", "uvloop", "cryptography", "redis", "hiredis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    return out

"""The peers over real sockets: HAProxy's configuration forwards valid tokens and refuses the rest.

These start nginx and HAProxy from Debian's packages (installed by ``bench/install.py``); they
skip when the binaries are not on this machine.
"""

from __future__ import annotations

import shutil

import peers
import pytest
from procs import free_port
from rounds import PreflightError
from rounds import expect_status
from token_pool import make_pools
from wrk import run_wrk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(b, path="/usr/bin:/usr/sbin") for b in ("nginx", "haproxy", "wrk")),
        reason="nginx, haproxy and wrk come from `bench/run.py` installing Debian packages",
    ),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("peers")
    work.chmod(0o755)
    pools, jwks = make_pools(work / "tokens", ("RS256", "ES256"), count=50)
    jwks.chmod(0o644)
    upstream = free_port()
    with peers.nginx_upstream(upstream, work, jwks, None):
        yield work, pools, upstream


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_haproxy_forwards_valid_tokens_and_refuses_every_reject(setup, alg: str) -> None:
    work, pools, upstream = setup
    port = free_port()
    with peers.haproxy(f"hap-{alg}", port, upstream, pools[alg], work, None):
        url = f"http://127.0.0.1:{port}/"
        for token in pools[alg].tokens_file.read_text().split()[:5]:
            assert expect_status(url, 200, {"Authorization": f"Bearer {token}"}) == b"ok"
        expect_status(url, 401)
        other = pools["ES256" if alg == "RS256" else "RS256"].tokens_file.read_text().split()[0]
        expect_status(url, 401, {"Authorization": f"Bearer {other}"})
        for token in pools[alg].rejects.values():
            expect_status(url, 401, {"Authorization": f"Bearer {token}"})
        with pytest.raises(PreflightError):
            expect_status(url, 200)


def test_wrk_through_nginx_proxy_with_the_token_pool(setup) -> None:
    work, pools, upstream = setup
    port = free_port()
    with peers.nginx_proxy(port, upstream, work, None):
        result = run_wrk(
            f"http://127.0.0.1:{port}/",
            "bearer_pool.lua",
            (str(pools["RS256"].tokens_file),),
            seconds=1,
            connections=4,
            cores=None,
        )
    assert result.requests > 0
    assert result.errors == 0

"""``deploy/prometheus/rules.yml`` and ``deploy/grafana/bastion.json`` against the real tools.

* ``promtool check rules`` accepts the rules, and ``promtool test rules`` runs their unit tests
  (``deploy/prometheus/rules_test.yml``: the 5xx ratio, 401 burst, refresh reuse, key rotation
  and feed alerts fire on the series they are meant for).
* A real Prometheus (Debian's ``prometheus`` package) scrapes a running ``bastion serve
  --workers 2`` (authorization server, gateway and BFF) every second, with the rules loaded,
  while the test drives a little traffic; then every query of every panel of the dashboard
  returns data through Prometheus' HTTP API.

Without Prometheus the tests skip, unless ``BASTION_REQUIRE_SERVICES=1`` (CI, whose ``.ci/run``
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Bastion
from tests.e2e.harness import free_port
from tests.e2e.harness import stop_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "bastion.json"
AUDIENCE = "https://api.dashboard"

#: Grafana's variables, as the test evaluates the panels' queries.
VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "1s", "$job": ".+"}


def tool(name: str, package: str = "prometheus") -> str:
    """The path of ``name`` from Debian's ``package``, or skip (fail under CI)."""
    found = shutil.which(name) or next(
        (path for path in (f"/usr/bin/{name}",) if os.access(path, os.X_OK)), None
    )
    if found is None:
        message = f"{name} is missing: install Debian's {package} package (apt-get install {package})"
        if os.environ.get("BASTION_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (BASTION_REQUIRE_SERVICES=1; .ci/run installs it)")
        pytest.skip(message)
    return found


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 18 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def panel_queries() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every target of every panel, Grafana's variables replaced."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not know: {expr}"
            queries.append((panel["title"], expr))
    return queries


def stack_config(issuer: str, gateway: int, bff: int, metrics: int) -> str:
    return f"""
[metrics]
listen = "127.0.0.1:{metrics}"

[gateway]
listen = "127.0.0.1:{gateway}"
access_log = ""
[[gateway.issuers]]
issuer = "{issuer}"
audience = "{AUDIENCE}"
[gateway.upstreams.gone]
targets = ["127.0.0.1:9"]
[[gateway.routes]]
prefix = "/api"
upstream = "gone"
[[gateway.routes]]
prefix = "/open"
upstream = "gone"
auth = "none"

[bff]
listen = "127.0.0.1:{bff}"
issuer = "{issuer}"
client_secret_env = "DASHBOARD_BFF_SECRET"
redirect_uri = "http://127.0.0.1:{bff}/bff/callback"
gateway_url = "http://127.0.0.1:{gateway}"
"""


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers or {}), timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class Prometheus:
    """``/usr/bin/prometheus`` scraping one target every second, every path in ``tmp``."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: bastion
    static_configs:
      - targets: ["{target}"]
"""
        )
        self.log = (tmp / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.log.name, Path(self.log.name).read_text())
            try:
                if request(f"{self.url}/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("prometheus did not become ready in 20 s")

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, body = request(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        answer = json.loads(body)
        assert status == 200, (expr, answer)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


@pytest.fixture
def bastion(tmp_path: Path) -> Iterator[tuple[Bastion, int, int, int]]:
    gateway, bff, metrics = free_port(), free_port(), free_port()
    (tmp_path / "bastion").mkdir()
    server = Bastion(tmp_path / "bastion", env={"DASHBOARD_BFF_SECRET": "s" * 32})
    server.config.write_text(server.config.read_text() + stack_config(server.issuer, gateway, bff, metrics))
    try:
        server.start("--workers", "2")
        yield server, gateway, bff, metrics
    finally:
        server.stop()


def test_every_panel_of_the_dashboard_has_data_from_a_real_prometheus(
    tmp_path: Path, bastion: tuple[Bastion, int, int, int]
) -> None:
    server, gateway, bff, metrics = bastion
    queries = panel_queries()
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{metrics}")
    try:
        prometheus.wait_ready()
        client = server.cli_json(
            "clients", "create", "--name", "d", "--scope", "read", "--audience", AUDIENCE
        )
        form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
            }
        ).encode()
        wrong = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": client["client_id"], "client_secret": "no"}
        ).encode()
        deadline = time.monotonic() + 20
        while not prometheus.query('up{job="bastion"} == 1'):
            assert time.monotonic() < deadline, "prometheus never scraped bastion"
            time.sleep(0.2)
        # A little traffic over a few scrapes: grants and refusals, 401s, 5xx, the BFF.
        for _ in range(3):
            status, body = request(f"{server.issuer}/token", form)
            assert status == 200, body
            token = json.loads(body)["access_token"]
            assert request(f"{server.issuer}/token", wrong)[0] == 401
            assert request(f"http://127.0.0.1:{gateway}/api/orders")[0] == 401
            assert (
                request(f"http://127.0.0.1:{gateway}/api/orders", headers={"authorization": "Bearer x"})[0]
                == 401
            )
            assert request(
                f"http://127.0.0.1:{gateway}/api/orders", headers={"authorization": f"Bearer {token}"}
            )[0] in (502, 503)
            assert request(f"http://127.0.0.1:{gateway}/open/x")[0] in (502, 503)
            assert request(f"http://127.0.0.1:{bff}/bff/api/orders")[0] == 401
            assert request(f"http://127.0.0.1:{bff}/bff/callback")[0] == 400
            time.sleep(1)

        empty: list[str] = []
        deadline = time.monotonic() + 15
        for title, expr in queries:
            while not (result := prometheus.query(expr)) and time.monotonic() < deadline:
                time.sleep(0.5)
            if not result:
                empty.append(f"{title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        assert len(queries) >= 20
        # The rules load and evaluate: the recorded 5xx ratio of /open is 1 (every answer there
        # is a 5xx) once the rule's window holds an increase (0/0 before that).
        deadline = time.monotonic() + 15
        ratio = "NaN"
        while ratio == "NaN" and time.monotonic() < deadline:
            found = prometheus.query('route:bastion_gateway_requests_5xx:ratio_rate5m{route="/open"}')
            ratio = found[0]["value"][1] if found else "NaN"
            time.sleep(0.5)
        assert ratio == "1", "the recording rule never produced the 5xx ratio"
    finally:
        prometheus.stop()

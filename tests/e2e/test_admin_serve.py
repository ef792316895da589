"""The admin API as `bastion serve` runs it: its own loopback listener, shared by the workers,
reached with a token of an admin client created on the command line."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .harness import BASTION
from .harness import Bastion


def _call(
    url: str, token: str | None = None, data: bytes | None = None, method: str = "GET"
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        if exc.headers["content-type"] != "application/problem+json":
            return exc.code, None
        return exc.code, json.loads(exc.read())


def test_admin_api_on_its_listener_with_two_workers(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path)
    ops = bastion.cli_json("clients", "create", "--name", "ops", "--scope", "bastion:admin")
    bastion.start("--workers", "2")
    try:
        status, refused = _call(f"{bastion.admin}/clients")
        assert (status, refused["status"]) == (401, 401)
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "bastion:admin"}).encode()
        request = urllib.request.Request(f"{bastion.issuer}/token", data=form)
        creds = f"{ops['client_id']}:{ops['client_secret']}"
        request.add_header("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.loads(response.read())["access_token"]
        for _ in range(4):  # whichever worker answers
            status, page = _call(f"{bastion.admin}/clients", token)
            assert status == 200
            assert [c["client_id"] for c in page["items"]] == [ops["client_id"]]
        status, created = _call(
            f"{bastion.admin}/clients", token, json.dumps({"name": "svc"}).encode(), "POST"
        )
        assert status == 201
        assert created["client_secret"]
        status, body = _call(f"{bastion.issuer}/clients", token)
        assert (status, body) == (404, None)  # the public listener has no admin routes
        status, doc = _call(f"{bastion.admin}/openapi.json")
        assert (status, doc["openapi"]) == (200, "3.1.0")
        assert f"admin API on http://127.0.0.1:{bastion.admin_port}" in bastion.log_text()
    finally:
        bastion.stop()
    calls = [
        json.loads(line)
        for line in bastion.cli("audit", "search", "--type", "admin.call", "--json").splitlines()
    ]
    # The refused call, four reads and the registration; not the document.
    expected = [("denied", "anonymous"), *[("success", ops["client_id"])] * 5]
    assert [(c["outcome"], c["actor"]) for c in calls] == expected


def test_a_non_loopback_admin_listener_is_refused_unless_declared_insecure(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path)
    env = {**bastion.env, "BASTION_AUTHORIZATION_SERVER__ADMIN_LISTEN": "0.0.0.0:0"}
    result = subprocess.run(
        [*BASTION, "--config", str(bastion.config), "config", "check"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert b"admin_listen" in result.stderr
    assert b"not a loopback address" in result.stderr
    env["BASTION_AUTHORIZATION_SERVER__INSECURE_ADMIN_LISTEN"] = "true"
    result = subprocess.run(
        [*BASTION, "--config", str(bastion.config), "config", "check"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

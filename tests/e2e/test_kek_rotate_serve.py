"""End to end: ``bastion kek rotate`` under a running ``bastion serve --workers 2``, then a
restart with the new key-encryption key; the old or no KEK afterwards is one line."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from bastion.protocol import jose
from tests.e2e.harness import BASTION
from tests.e2e.harness import Bastion
from tests.e2e.harness import client_token
from tests.e2e.test_serve_storage import serve_fails

pytestmark = pytest.mark.slow

OLD = "e2e-" + "k" * 40


def test_tokens_keep_working_across_a_kek_rotation_and_a_restart(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path)
    client = bastion.cli_json("clients", "create", "--name", "svc", "--scope", "read")
    rs = bastion.cli_json("clients", "create", "--name", "rs", "--scope", "none")

    def token() -> str:
        return client_token(bastion.issuer, client["client_id"], client["client_secret"], "read")

    def active(value: str) -> bool:
        response = requests.post(
            f"{bastion.issuer}/introspect",
            data={"token": value},
            auth=(rs["client_id"], rs["client_secret"]),
            timeout=5,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return bool(body["active"])

    try:
        bastion.start("--workers", "2")
        first = token()
        kid = jose.parse_compact(first).header["kid"]

        new_file = tmp_path / "new-kek"
        out = bastion.cli("kek", "rotate", "--write-new-kek", str(new_file))
        new = new_file.read_text()
        assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
        assert len(new) >= 32
        assert new not in out
        assert out.startswith(f"re-sealed 2 secret(s) under the new key-encryption key from {new_file}\n")

        # The running workers (on the old KEK) keep issuing and validating.
        for _ in range(6):
            assert active(token())
        assert active(first)

        bastion.stop()
        bastion.env["BASTION_KEK"] = new
        bastion.env["BASTION_KEK_PREVIOUS"] = OLD
        bastion.start("--workers", "2")
        assert active(first), "a token issued before the rotation verifies after the restart"
        later = [token() for _ in range(6)]  # the client secret's stored hash still verifies
        assert all(active(t) for t in later)
        assert {jose.parse_compact(t).header["kid"] for t in later} == {kid}

        # Step 4 of the guide: the new KEK again, with the old one as previous, re-seals leftovers.
        again = bastion.cli("kek", "rotate", "--new-kek-file", str(new_file))
        assert again.startswith("re-sealed 2 secret(s)")
        assert active(token())

        bastion.stop()
        bastion.env.pop("BASTION_KEK_PREVIOUS")
        bastion.start()
        assert active(first)
    finally:
        bastion.stop()

    events = [json.loads(line) for line in (tmp_path / "data" / "audit.log").read_text().splitlines()]
    rotated = [e for e in events if e["type"] == "kek.rotated"]
    assert [e["details"]["resealed"] for e in rotated] == [2, 2]
    assert {e["actor"] for e in rotated} == {"cli"}
    assert new not in (tmp_path / "data" / "audit.log").read_text()

    config = bastion.config.read_text()
    line = serve_fails(tmp_path, config, env={"BASTION_KEK": OLD})
    assert line == (
        "error: cannot decrypt the stored secret-hash key: the key-encryption key is not the one it was "
        "encrypted with. Set BASTION_KEK (or BASTION_KEK_FILE) to the key of the last `bastion kek rotate`."
    )
    line = serve_fails(tmp_path, config, env={"BASTION_KEK": None, "BASTION_KEK_FILE": None})
    assert line.startswith("error: no key-encryption key, and the database holds 2 signing key(s)")


def test_kek_rotate_refuses_a_short_or_missing_new_kek_and_writes_nothing(tmp_path: Path) -> None:
    bastion = Bastion(tmp_path)
    bastion.cli("keys", "list")
    before = (tmp_path / "data" / "bastion.db").read_bytes()

    def rotate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BASTION, "--config", str(bastion.config), "kek", "rotate", *args],
            env={**bastion.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = rotate()
    assert result.returncode == 2
    assert "exactly one of --new-kek-file, BASTION_NEW_KEK or --write-new-kek" in result.stderr
    result = rotate(env={"BASTION_NEW_KEK": "short"})
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: BASTION_NEW_KEK must hold at least 32 characters (try: openssl rand -base64 48)"
    )
    result = rotate(env={"BASTION_NEW_KEK": OLD})
    assert result.stderr.strip() == "error: the new key-encryption key is the current one (BASTION_KEK)"
    assert (tmp_path / "data" / "bastion.db").read_bytes() == before

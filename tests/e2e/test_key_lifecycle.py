"""End to end: ``bastion keys revoke`` and ``import`` in one process reach a running ``bastion serve``.

The embedded defaults carry the announcement: the SQLite database and the SQLite fast-state file
in the data dir, shared by the two processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey

from bastion.protocol import jose
from tests.e2e.harness import Bastion
from tests.e2e.harness import client_token

pytestmark = pytest.mark.slow


@pytest.fixture
def bastion(tmp_path: Path) -> Iterator[Bastion]:
    instance = Bastion(tmp_path)
    yield instance
    instance.stop()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_revoke_and_import_reach_a_running_server(bastion: Bastion, tmp_path: Path) -> None:
    client = bastion.cli_json("clients", "create", "--name", "svc", "--scope", "read")
    rs = bastion.cli_json("clients", "create", "--name", "rs", "--scope", "none")
    bastion.start()

    def token() -> str:
        return client_token(bastion.issuer, client["client_id"], client["client_secret"], "read")

    def introspect(value: str) -> dict[str, Any]:
        response = requests.post(
            f"{bastion.issuer}/introspect",
            data={"token": value},
            auth=(rs["client_id"], rs["client_secret"]),
            timeout=5,
        )
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    def kids() -> set[str]:
        return {k["kid"] for k in requests.get(f"{bastion.issuer}/jwks.json", timeout=5).json()["keys"]}

    first = token()
    kid = jose.parse_compact(first).header["kid"]
    assert introspect(first)["active"] is True  # and cached as verified

    out = bastion.cli("keys", "revoke", "--yes", "--", kid)
    assert f"revoked ES256 key {kid}: out of the JWKS; tokens it signed are now refused" in out
    wait_for(lambda: kid not in kids(), "the server's JWKS drops the revoked key")
    assert introspect(first) == {"active": False}
    second = token()
    assert jose.parse_compact(second).header["kid"] != kid
    assert introspect(second)["active"] is True

    # A token the previous provider signed before the move validates after the import.
    external = ec.generate_private_key(ec.SECP256R1())
    pem = external.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    now = int(time.time())
    legacy = jwt.encode(
        {"alg": "ES256", "typ": "at+jwt", "kid": "legacy-1"},
        {
            "iss": bastion.issuer,
            "sub": client["client_id"],
            "client_id": client["client_id"],  # a client that moved along with the key
            "scope": "read",
            "iat": now,
            "exp": now + 600,
        },
        ECKey.import_key(pem),
    )
    assert introspect(legacy) == {"active": False}
    (tmp_path / "legacy.pem").write_bytes(pem)
    bastion.cli("keys", "import", str(tmp_path / "legacy.pem"), "--kid", "legacy-1")
    wait_for(lambda: "legacy-1" in kids(), "the server's JWKS lists the imported key")
    assert introspect(legacy)["active"] is True
    # The CLI's export is what the server serves.
    assert (
        json.loads(bastion.cli("keys", "export", "--public"))
        == requests.get(f"{bastion.issuer}/jwks.json", timeout=5).json()
    )

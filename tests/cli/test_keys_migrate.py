"""``bastion keys`` (list, rotate, revoke, import, export), ``bastion migrate``, the key-encryption key, and commands that need a server."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from click.testing import Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey

from bastion.protocol import jose
from tests.cli.conftest import Invoke
from tests.cli.conftest import make_invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_migrate_applies_once_then_is_idempotent(invoke: Invoke, config_file: Path) -> None:
    first = invoke("migrate")
    assert first.exit_code == 0, first.output
    applied = re.fullmatch(r"applied (\d+) migration\(s\): (.+); schema at (\S+)\n", first.output)
    assert applied is not None, first.output
    assert int(applied.group(1)) == len(applied.group(2).split(", ")) >= 1
    head = applied.group(3)
    assert (config_file.parent / "data" / "bastion.db").is_file()
    for _ in range(2):
        again = invoke("migrate")
        assert again.exit_code == 0, again.output
        assert again.output == f"schema is up to date ({head})\n"


def test_keys_list_creates_the_first_keys(invoke: Invoke) -> None:
    keys = ok_json(invoke("keys", "list", "--json"))
    assert sorted(k["alg"] for k in keys) == ["ES256", "RS256"]  # access tokens and ID tokens
    for key in keys:
        assert key["state"] == "active"
        assert key["generation"] == 1
        assert key["use"] == "sig"
        assert key["revoked_at"] is None
        assert set(key) >= {"kid", "alg", "created_at", "activates_at", "generation", "state"}
        # Never any key material in the listing, public or private.
        assert not {"public_jwk", "private_key", "sealed", "d", "n"} & set(key)
    assert ok_json(invoke("keys", "list", "--json")) == keys  # listing twice creates nothing


def test_keys_list_table(invoke: Invoke) -> None:
    result = invoke("keys", "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:4] == ["KID", "ALG", "GEN", "STATE"]
    assert len(rows) == 2
    assert all(" active " in row for row in rows)


def test_keys_rotate_publishes_a_pending_key(invoke: Invoke) -> None:
    before = ok_json(invoke("keys", "list", "--json"))
    result = invoke("keys", "rotate", "--alg", "ES256", "--publish-delay", "3600")
    assert result.exit_code == 0, result.output
    match = re.fullmatch(r"new ES256 key (\S+): published now, signs from \S+Z\n", result.output)
    assert match is not None, result.output
    after = {k["kid"]: k for k in ok_json(invoke("keys", "list", "--json"))}
    new = after[match.group(1)]
    assert new["state"] == "pending"
    assert new["generation"] == 2
    assert (
        3590
        <= (
            datetime.fromisoformat(new["activates_at"]) - datetime.fromisoformat(new["created_at"])
        ).total_seconds()
        <= 3610
    )
    # The old key keeps signing until the new one activates.
    assert all(after[k["kid"]]["state"] == "active" for k in before)


def test_keys_rotate_without_delay_activates_and_retires(invoke: Invoke) -> None:
    before = ok_json(invoke("keys", "list", "--json"))
    result = invoke("keys", "rotate", "--publish-delay", "0")
    assert result.exit_code == 0, result.output
    assert sorted(line.split()[1] for line in result.output.splitlines()) == ["ES256", "RS256"]
    states = {k["kid"]: k["state"] for k in ok_json(invoke("keys", "list", "--json"))}
    assert len(states) == 4
    assert {states[k["kid"]] for k in before} == {"retired"}
    assert sorted(states.values()) == ["active", "active", "retired", "retired"]


def test_keys_rotate_unknown_algorithm(invoke: Invoke) -> None:
    result = invoke("keys", "rotate", "--alg", "HS256")
    assert result.exit_code == 2
    assert "Invalid value for '--alg': 'HS256' is not one of" in result.stderr


def test_short_kek_is_refused(invoke: Invoke) -> None:
    result = invoke("keys", "list", env={"BASTION_KEK": "short"})
    assert result.exit_code == 1
    assert "BASTION_KEK must be at least 32 characters" in result.stderr


def test_kek_file_is_generated_with_a_warning_when_none_is_given(invoke: Invoke, config_file: Path) -> None:
    result = invoke("keys", "list", env={"BASTION_KEK": None})
    assert result.exit_code == 0, result.output
    kek = config_file.parent / "data" / "kek"
    assert kek.is_file()
    assert kek.stat().st_mode & 0o777 == 0o600
    assert "generated a key-encryption key" in result.stderr
    again = invoke("keys", "list", env={"BASTION_KEK": None})
    assert again.exit_code == 0
    assert "generated" not in again.stderr  # the same file is used from now on


def test_kek_file_variable_must_point_to_a_file(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("keys", "list", env={"BASTION_KEK": None, "BASTION_KEK_FILE": str(tmp_path / "none")})
    assert result.exit_code == 1
    assert f"no key-encryption key: set BASTION_KEK or create {tmp_path / 'none'}" in result.stderr


def test_reload_without_a_running_server(invoke: Invoke, config_file: Path) -> None:
    result = invoke("reload")
    assert result.exit_code == 1
    assert "no running `bastion serve` found" in result.stderr
    assert str(config_file.parent / "data" / "bastion.pid") in result.stderr


def test_serve_with_nothing_to_serve(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[authorization_server]\nenabled = false\n')
    result = make_invoke(config)("serve")
    assert result.exit_code == 1
    assert "nothing to serve" in result.stderr
    assert "[gateway]" in result.stderr


def test_serve_refuses_bad_worker_count(invoke: Invoke) -> None:
    result = invoke("serve", "--workers", "0")
    assert result.exit_code == 2
    assert "--workers" in result.stderr


# -- revoke, import, export -------------------------------------------------------------------


def _pem(key: Any) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data


def _by_kid(invoke: Invoke) -> dict[str, dict[str, Any]]:
    return {k["kid"]: k for k in ok_json(invoke("keys", "list", "--json"))}


def _exported(invoke: Invoke) -> dict[str, dict[str, Any]]:
    return {k["kid"]: k for k in ok_json(invoke("keys", "export", "--public"))["keys"]}


def _active(invoke: Invoke, alg: str) -> str:
    [kid] = [k for k, v in _by_kid(invoke).items() if v["alg"] == alg and v["state"] == "active"]
    return kid


def test_keys_revoke_withdraws_the_active_key_and_a_new_one_signs(invoke: Invoke, config_file: Path) -> None:
    kid = _active(invoke, "ES256")
    result = invoke("keys", "revoke", "--yes", "--", kid)
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    assert first == f"revoked ES256 key {kid}: out of the JWKS; tokens it signed are now refused"
    new = re.fullmatch(r"new ES256 key (\S+): published and signing now", second)
    assert new is not None, result.output
    keys = _by_kid(invoke)
    assert keys[kid]["state"] == "revoked"
    assert keys[kid]["revoked_at"] is not None
    assert keys[new.group(1)]["state"] == "active"
    assert keys[new.group(1)]["generation"] == 2
    assert kid not in _exported(invoke)
    events = [
        json.loads(line) for line in (config_file.parent / "data" / "audit.log").read_text().splitlines()
    ]
    assert [
        (e["subject"], e["actor"], e["details"]["replacement"]) for e in events if e["type"] == "key.revoked"
    ] == [(kid, "cli", new.group(1))]


def test_keys_revoke_asks_first(invoke: Invoke) -> None:
    kid = _active(invoke, "RS256")
    declined = invoke("keys", "revoke", "--", kid, input="n\n")
    assert declined.exit_code == 1
    assert f"Revoke the active RS256 key {kid}? Every token it signed stops working" in declined.output
    assert "Aborted!" in declined.output
    assert _by_kid(invoke)[kid]["state"] == "active"
    confirmed = invoke("keys", "revoke", "--", kid, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert f"revoked RS256 key {kid}" in confirmed.output
    assert _by_kid(invoke)[kid]["state"] == "revoked"
    again = invoke("keys", "revoke", "--", kid)  # nothing to confirm any more
    assert again.exit_code == 0, again.output
    assert re.fullmatch(rf"RS256 key {kid} was already revoked at \S+Z\n", again.output)


def test_a_kid_that_looks_like_an_option_follows_a_double_dash(invoke: Invoke) -> None:
    """Key ids are base64url thumbprints: one in 64 starts with ``-``."""
    result = invoke("keys", "revoke", "--yes", "--", "-Ab3")
    assert result.exit_code == 1
    assert "no signing key has kid '-Ab3'" in result.stderr


def test_keys_revoke_an_unknown_kid(invoke: Invoke) -> None:
    result = invoke("keys", "revoke", "nope", "--yes")
    assert result.exit_code == 1
    assert "no signing key has kid 'nope' (`bastion keys list` shows them)" in result.stderr


def test_keys_import_pem_verifies_only_by_default(invoke: Invoke, tmp_path: Path) -> None:
    external = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "legacy.pem"
    path.write_bytes(_pem(external))
    signer = _active(invoke, "ES256")
    result = invoke("keys", "import", str(path), "--kid", "legacy-1")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"imported ES256 key legacy-1: published now to verify the tokens it signed "
        r"\(until \S+Z\); it never signs\n",
        result.output,
    )
    keys = _by_kid(invoke)
    assert (keys["legacy-1"]["state"], keys["legacy-1"]["generation"]) == ("retired", 0)
    assert keys[signer]["state"] == "active"
    [row] = [line for line in invoke("keys", "list").output.splitlines() if line.startswith("legacy-1 ")]
    assert row.split()[1:4] == ["ES256", "0", "retired"]
    assert row.split()[-1] == "never"
    assert _exported(invoke)["legacy-1"] == {
        **jose.public_jwk(external),
        "kid": "legacy-1",
        "alg": "ES256",
        "use": "sig",
    }
    duplicate = invoke("keys", "import", str(path), "--kid", "legacy-2")
    assert duplicate.exit_code == 1
    assert "this key is already stored, with kid 'legacy-1'" in duplicate.stderr
    taken = invoke(
        "keys",
        "import",
        "-",
        "--kid",
        "legacy-1",
        input=_pem(ec.generate_private_key(ec.SECP256R1())).decode(),
    )
    assert taken.exit_code == 1
    assert "a signing key with kid 'legacy-1' already exists" in taken.stderr


def test_keys_import_a_jwk_that_signs_now(invoke: Invoke) -> None:
    jwk = {**ECKey.generate_key("P-256", private=True).as_dict(private=True), "kid": "theirs", "alg": "ES256"}
    result = invoke("keys", "import", "-", "--activate", "now", input=json.dumps(jwk))
    assert result.exit_code == 0, result.output
    assert result.output == "imported ES256 key theirs: published and signing now\n"
    assert _active(invoke, "ES256") == "theirs"
    assert "d" not in _exported(invoke)["theirs"]


def test_keys_import_after_the_publish_delay(invoke: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    args = ("keys", "import", str(path), "--kid", "r1", "--alg", "RS256", "--activate", "after-delay")
    result = invoke(*args, "--publish-delay", "3600")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"imported RS256 key r1: published now, signs from \S+Z\n", result.output)
    key = _by_kid(invoke)["r1"]
    assert key["state"] == "pending"
    assert (
        3600
        <= (
            datetime.fromisoformat(key["activates_at"]) - datetime.fromisoformat(key["created_at"])
        ).total_seconds()
        <= 3620
    )


def test_keys_import_refusals(invoke: Invoke, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private = tmp_path / "private.pem"
    private.write_bytes(_pem(key))
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    cases = [
        ((str(public), "--kid", "p"), f"{public} holds a public key only. Importing needs the private key"),
        ((str(private),), "names no key id: pass --kid"),
        (
            (str(private), "--kid", "x", "--alg", "ES384"),
            "ES384 needs an EC P-384 key; this is an EC secp256r1 key",
        ),
        ((str(rsa_key), "--kid", "x"), "an RSA key signs RS256 or PS256: say which with --alg"),
        (
            (str(rsa_key), "--kid", "x", "--alg", "PS256", "--activate", "now"),
            "this server does not sign PS256",
        ),
    ]
    for args, message in cases:
        result = invoke("keys", "import", *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    usage = invoke("keys", "import", str(private), "--kid", "x", "--publish-delay", "5")
    assert usage.exit_code == 2
    assert "--publish-delay applies only to --activate after-delay" in usage.stderr
    missing = invoke("keys", "import", str(tmp_path / "none.pem"), "--kid", "x")
    assert missing.exit_code == 2
    assert "No such file or directory" in missing.stderr
    assert {k["kid"] for k in ok_json(invoke("keys", "list", "--json"))}.isdisjoint({"p", "x"})


def test_keys_export_prints_the_public_jwks_only(invoke: Invoke) -> None:
    refused = invoke("keys", "export")
    assert refused.exit_code == 2
    assert (
        "private keys are never exported; `bastion keys export --public` prints the public JWKS"
        in refused.stderr
    )
    assert refused.stdout == ""
    exported = _exported(invoke)
    published = {k for k, v in _by_kid(invoke).items() if v["state"] in ("pending", "active", "retired")}
    assert set(exported) == published
    for jwk in exported.values():
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)
        assert jwk["use"] == "sig"
        jose.load_public_jwk({k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")})

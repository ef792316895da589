"""``bastion config check`` and ``bastion config keys``."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bastion.cli.config import load_settings
from bastion.cli.main import cli
from bastion.settings import describe
from tests.cli.conftest import Invoke
from tests.cli.conftest import make_invoke


def test_check_valid_prints_the_effective_settings(invoke: Invoke, config_file: Path) -> None:
    result = invoke("config", "check")
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)
    assert settings["data_dir"] == str(config_file.parent / "data")
    assert settings["authorization_server"]["access_token_ttl"] == 900
    assert settings["gateway"] is None
    assert f"configuration is valid (source: {config_file})" in result.stderr


def test_check_masks_secrets(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n'
        "[storage]\n"
        'database_url = "postgresql://bastion:hunter2@db.internal:5432/bastion"\n'
        'state_url = "redis://:s3cret-pw@cache.internal:6379/0"\n'
    )
    result = make_invoke(config)("config", "check")
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "s3cret-pw" not in result.output
    storage = json.loads(result.stdout)["storage"]
    assert storage["database_url"] == "postgresql://bastion:***@db.internal:5432/bastion"
    assert storage["state_url"] == "redis://:***@cache.internal:6379/0"


def test_check_with_a_gateway_section(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n'
        "[gateway]\n"
        'listen = "127.0.0.1:8080"\n'
        "[[gateway.issuers]]\n"
        'issuer = "https://auth.example"\n'
        'audience = "https://api.example"\n'
        "[gateway.issuers.introspection]\n"
        'client_id = "gw"\n'
        'client_secret_env = "GW_SECRET"\n'
        "[gateway.upstreams.app]\n"
        'targets = ["127.0.0.1:9000"]\n'
        "[[gateway.routes]]\n"
        'prefix = "/api"\n'
        'upstream = "app"\n'
        'scopes = { GET = ["read"] }\n'
    )
    result = make_invoke(config)("config", "check", env={"GW_SECRET": "top-secret-value"})
    assert result.exit_code == 0, result.output
    assert "top-secret-value" not in result.output  # secrets are never in the settings tree
    gateway = json.loads(result.stdout)["gateway"]
    assert gateway["routes"][0]["scopes"] == {"GET": ["read"]}
    assert gateway["upstreams"]["app"]["targets"] == ["127.0.0.1:9000"]
    # Where the secret lives is not a secret: operators need to see it.
    assert gateway["issuers"][0]["introspection"]["client_secret_env"] == "GW_SECRET"


def test_check_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[authorization_server]\ntoken_ttl = 600\n')
    result = make_invoke(config)("config", "check")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"{config}: authorization_server.token_ttl: unknown setting" in result.stderr
    assert "bastion config keys" in result.stderr


def test_check_invalid_value_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[authorization_server]\naccess_token_ttl = 5\n')
    result = make_invoke(config)("config", "check")
    assert result.exit_code == 1
    assert f"{config}: authorization_server.access_token_ttl:" in result.stderr
    assert "greater than or equal to 30" in result.stderr


def test_check_gateway_error_names_the_route(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[gateway]\n[[gateway.routes]]\nprefix = "/api"\nupstream = "missing"\n'
    )
    result = make_invoke(config)("config", "check")
    assert result.exit_code == 1
    assert "gateway" in result.stderr
    assert "route '/api': unknown upstream 'missing'" in result.stderr


def test_check_env_override_error_names_the_variable(invoke: Invoke) -> None:
    result = invoke("config", "check", env={"BASTION_AUTHORIZATION_SERVER__ACCESS_TOKEN_TTL": "abc"})
    assert result.exit_code == 1
    assert "BASTION_AUTHORIZATION_SERVER__ACCESS_TOKEN_TTL: authorization_server.access_token_ttl:" in (
        result.stderr
    )


def test_check_env_override_applies(invoke: Invoke) -> None:
    result = invoke(
        "config",
        "check",
        env={
            "BASTION_AUTHORIZATION_SERVER__ACCESS_TOKEN_TTL": "120",
            "BASTION_LOGGING__LEVEL": "debug",
        },
    )
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)
    assert settings["authorization_server"]["access_token_ttl"] == 120
    assert settings["logging"]["level"] == "debug"


def test_check_unknown_env_setting_names_the_variable(invoke: Invoke) -> None:
    result = invoke("config", "check", env={"BASTION_AUTHORIZATION_SERVER__TOKEN_TTL": "60"})
    assert result.exit_code == 1
    assert "BASTION_AUTHORIZATION_SERVER__TOKEN_TTL: authorization_server.token_ttl: unknown setting" in (
        result.stderr
    )


def test_check_not_toml(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text("data_dir = \n")
    result = make_invoke(config)("config", "check")
    assert result.exit_code == 1
    assert f"{config}: not valid TOML" in result.stderr
    assert "line 1" in result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = make_invoke(missing)("config", "check")
    assert result.exit_code == 1
    assert f"config file {missing} does not exist" in result.stderr


def test_bastion_config_variable_names_the_missing_file(tmp_path: Path, config_file: Path) -> None:
    missing = tmp_path / "gone.toml"
    # No --config: the variable decides (the invoke helper always passes --config).
    result = CliRunner().invoke(
        cli, ["config", "check"], env={"BASTION_CONFIG": str(missing)}, prog_name="bastion"
    )
    assert result.exit_code == 1
    assert f"BASTION_CONFIG points to {missing}, which does not exist" in result.stderr
    assert make_invoke(config_file)("config", "check").exit_code == 0


def test_keys_lists_every_setting_with_default_and_description(invoke: Invoke) -> None:
    result = invoke("config", "keys")
    assert result.exit_code == 0, result.output
    output = result.output
    for row in describe():
        assert f"\n{row.key} = " in "\n" + output or f"\n{row.key}  (optional" in "\n" + output, row.key
        assert row.description.split()[0] in output
    assert "authorization_server.access_token_ttl = 900\n" in output
    assert 'storage.database_url = ""\n' in output


def test_optional_settings_are_shown_unset_with_a_commented_example(invoke: Invoke) -> None:
    output = invoke("config", "keys").output
    assert (
        "authorization_server.key_publish_delay  (optional, unset by default)\n    # key_publish_delay = 600\n"
        in output
    )
    assert (
        'gateway.tls_cert  (optional, unset by default)\n    # tls_cert = "/etc/bastion/tls/fullchain.pem"\n'
        in output
    )
    assert 'gateway.issuers[].jwks_uri  (optional, unset by default)\n    # jwks_uri = "https://' in output
    assert "gateway.issuers[].issuer = (required)\n" in output
    assert "key_publish_delay = \n" not in output
    assert "tls_cert = \n" not in output


def test_markdown_marks_optional_settings_and_documents_the_kek(invoke: Invoke) -> None:
    output = invoke("config", "keys", "--markdown").output
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip()
        for line in output.splitlines()
        if line.startswith("| `")
    }
    assert rows["authorization_server.key_publish_delay"] == "optional, unset by default (e.g. `600`)"
    assert rows["gateway.tls_cert"].startswith("optional, unset by default")
    assert rows["gateway.issuers[].jwks_uri"].startswith("optional, unset by default")
    assert rows["gateway.issuers[].issuer"] == "(required)"
    assert rows["BASTION_KEK"].startswith("The key itself")
    assert rows["BASTION_KEK_FILE"].startswith("A file holding the key")


def test_server_header_can_be_disabled_in_toml(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text('[gateway]\nserver_header = ""\n')
    settings, _ = load_settings(str(config), environ={})
    assert settings.gateway is not None
    assert settings.gateway.server_header is None
    config.write_text('[gateway]\nserver_header = "edge"\n')
    settings, _ = load_settings(str(config), environ={})
    assert settings.gateway is not None
    assert settings.gateway.server_header == "edge"


def test_keys_markdown(invoke: Invoke) -> None:
    result = invoke("config", "keys", "--markdown")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("|")]
    assert len(rows) >= len(describe()) + 2  # header, separator, one row per setting
    assert any("authorization_server.access_token_ttl" in row and "900" in row for row in rows)


def test_keys_works_without_a_kek_or_a_valid_config(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text("this is not toml\n")
    result = make_invoke(config)("config", "keys", env={"BASTION_KEK": None})
    assert result.exit_code == 0
    assert not (tmp_path / "data").exists()

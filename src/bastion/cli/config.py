"""Load the settings tree: built-in defaults ← ``bastion.toml`` ← ``BASTION_*`` environment.

The only place (with the rest of :mod:`bastion.cli`) that reads files and the environment.

* The file: ``--config PATH``, else ``$BASTION_CONFIG``, else ``./bastion.toml`` if present.
* The environment: ``BASTION_SECTION__KEY=value`` overrides ``[section] key`` (``__`` nests
  deeper); ``BASTION_DATA_DIR`` the top-level ``data_dir``. Values are parsed as JSON when they
  parse (numbers, booleans, arrays), else taken as strings.
* Errors name the key and where it came from, and say what was expected.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bastion.settings import Settings

ENV_PREFIX = "BASTION_"
#: Variables with the prefix that are not settings.
_NOT_SETTINGS = frozenset(
    {"CONFIG", "KEK", "KEK_FILE", "REQUIRE_SERVICES", "TEST_POSTGRES_URL", "TEST_REDIS_URL"}
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the source."""


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read, or ``None`` for built-in defaults."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return path
    if environ.get("BASTION_CONFIG"):
        path = Path(environ["BASTION_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"BASTION_CONFIG points to {path}, which does not exist")
        return path
    default = Path("bastion.toml")
    return default if default.is_file() else None


def _env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Nested overrides from ``BASTION_*`` variables, and which variable set each key."""
    tree: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest in _NOT_SETTINGS or rest.startswith("TEST_"):
            continue
        path = tuple(part.lower() for part in rest.split("__"))
        if len(path) == 1 and path[0] != "data_dir":
            continue  # single-word variables are not settings (e.g. BASTION_HOME of a user)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name} conflicts with another BASTION_ variable")
        node[path[-1]] = _env_value(raw)
        origin[path] = name
    return tree, origin


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, Path | None]:
    """Build and validate the settings tree.

    Returns:
        The settings and the file they were read from (``None`` for built-in defaults).

    Raises:
        ConfigError: the file is unreadable or a key is unknown or invalid.
    """
    environ = os.environ if environ is None else environ
    path = find_config_file(config, environ)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    overrides, origin = env_overrides(environ)
    try:
        return Settings.model_validate(_merge(data, overrides)), path
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path, origin)) from None


def _explain(exc: ValidationError, path: Path | None, origin: dict[tuple[str, ...], str]) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "(root)"
        source = next(
            (var for keys, var in origin.items() if loc[: len(keys)] == keys),
            str(path) if path else "defaults",
        )
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (see `bastion config keys`)"
        lines.append(f"{source}: {key}: {message}")
    if len(lines) == 1:
        return f"invalid configuration: {lines[0]}"
    return "invalid configuration:\n  " + "\n  ".join(lines)

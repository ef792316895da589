"""Composition helpers: settings → key-encryption key → stores → services."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bastion.ops.audit import AuditLog
from bastion.services.container import Services
from bastion.services.crypto import MIN_KEK_LENGTH
from bastion.services.crypto import Sealer
from bastion.services.crypto import SealError
from bastion.services.kek import open_sealer
from bastion.settings import Settings
from bastion.storage.open import StoreError
from bastion.storage.open import Stores
from bastion.storage.open import open_stores
from bastion.storage.protocols import StorageError
from bastion.storage.sql.migrate import migrate


class BastionError(click.ClickException):
    """A failure the operator can fix, shown as one ``error: …`` line (no traceback)."""

    def show(self, file: Any = None) -> None:
        """Print ``error: <message>`` to standard error."""
        click.secho(f"error: {self.format_message()}", fg="red", err=True, file=file)


class KEKError(BastionError):
    """The key-encryption key is missing or unusable."""


def load_kek(settings: Settings, environ: Mapping[str, str] | None = None, *, create: bool = True) -> bytes:
    """The key-encryption key: ``BASTION_KEK``, else ``BASTION_KEK_FILE``, else ``<data_dir>/kek``
    (created 0600 on first use, with a warning that production should supply one)."""
    environ = os.environ if environ is None else environ
    if environ.get("BASTION_KEK"):
        kek = environ["BASTION_KEK"].encode()
        if len(kek) < MIN_KEK_LENGTH:
            raise KEKError(
                f"BASTION_KEK must be at least {MIN_KEK_LENGTH} characters (try: openssl rand -base64 48)"
            )
        return kek
    path = Path(environ.get("BASTION_KEK_FILE") or settings.data_dir / "kek")
    if path.exists():
        kek = path.read_bytes().strip()
        if len(kek) < MIN_KEK_LENGTH:
            raise KEKError(f"{path} holds fewer than {MIN_KEK_LENGTH} bytes; replace it or set BASTION_KEK")
        return kek
    if not create or "BASTION_KEK_FILE" in environ:
        raise KEKError(f"no key-encryption key: set BASTION_KEK or create {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_urlsafe(48).encode())
    click.secho(
        f"warning: generated a key-encryption key in {path}. Production deployments should supply "
        "BASTION_KEK from a secret store: whoever reads that file can decrypt the signing keys.",
        fg="yellow",
        err=True,
    )
    return path.read_bytes().strip()


def previous_keks(environ: Mapping[str, str] | None = None) -> tuple[bytes, ...]:
    """The key-encryption key before the last rotation, if one is still accepted for opening:
    ``BASTION_KEK_PREVIOUS``, else the file ``BASTION_KEK_PREVIOUS_FILE``; none by default."""
    environ = os.environ if environ is None else environ
    if environ.get("BASTION_KEK_PREVIOUS"):
        kek = environ["BASTION_KEK_PREVIOUS"].encode()
        source = "BASTION_KEK_PREVIOUS"
    elif environ.get("BASTION_KEK_PREVIOUS_FILE"):
        path = Path(environ["BASTION_KEK_PREVIOUS_FILE"])
        try:
            kek = path.read_bytes().strip()
        except OSError as exc:
            raise KEKError(f"BASTION_KEK_PREVIOUS_FILE: cannot read {path}: {exc.strerror}") from None
        source = str(path)
    else:
        return ()
    if len(kek) < MIN_KEK_LENGTH:
        raise KEKError(f"{source} must hold at least {MIN_KEK_LENGTH} characters")
    return (kek,)


@dataclass(frozen=True, slots=True)
class SealerKeys:
    """What a :class:`Sealer` is built from: plain bytes, so a worker process can receive it."""

    kek: bytes
    previous: tuple[bytes, ...] = ()
    #: The secret-hash key carried over by a KEK rotation (``None``: derived from ``kek``).
    hash_key: bytes | None = None

    def sealer(self) -> Sealer:
        """The sealer these keys make."""
        return Sealer(self.kek, previous=self.previous, hash_key=self.hash_key)


async def sealer_keys(stores: Stores, kek: bytes, environ: Mapping[str, str] | None = None) -> SealerKeys:
    """The sealer's keys for ``kek``: the previous KEK from the environment and the secret-hash
    key from the (migrated) database.

    Raises:
        KEKError: the stored secret-hash key does not open with ``kek`` (one line).
    """
    previous = previous_keks(environ)
    try:
        sealer = await open_sealer(stores.keys, kek, previous)
    except SealError as exc:
        raise KEKError(str(exc)) from None
    except StorageError:
        sealer = Sealer(kek, previous=previous)  # not migrated yet: nothing was rotated
    derived = Sealer(kek).hash_key
    return SealerKeys(kek, previous, None if sealer.hash_key == derived else sealer.hash_key)


#: The setting behind each store, for messages.
STORE_SETTINGS = {"database": "storage.database_url", "state": "storage.state_url"}


def store_error(exc: StoreError) -> BastionError:
    """One line naming the setting of the store that failed."""
    return BastionError(f"{STORE_SETTINGS[exc.store]}: {exc}")


def kek_missing(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    """Whether no key-encryption key is configured or stored (:func:`load_kek` would create one)."""
    environ = os.environ if environ is None else environ
    if environ.get("BASTION_KEK") or "BASTION_KEK_FILE" in environ:
        return False
    return not (settings.data_dir / "kek").exists()


async def kek_for(settings: Settings, stores: Stores, environ: Mapping[str, str] | None = None) -> bytes:
    """The key-encryption key; a new one is generated only while no signing key exists.

    Signing keys are stored sealed under the KEK, so a new KEK could not open them: with keys in
    the database and no KEK, stop and say which key is needed, writing nothing.

    Raises:
        KEKError: no KEK is configured but the database holds sealed signing keys.
    """
    if kek_missing(settings, environ):
        try:
            sealed = len(await stores.keys.list_keys())
        except StorageError:
            sealed = 0  # not migrated yet: no keys
        if sealed:
            raise KEKError(
                f"no key-encryption key, and the database holds {sealed} signing key(s) sealed with one: "
                f"set BASTION_KEK, or BASTION_KEK_FILE to the file holding it (was {settings.data_dir / 'kek'} "
                "moved or deleted?); nothing was written"
            )
    return load_kek(settings, environ)


def stores_for(settings: Settings, *, state_url: str | None = None) -> Stores:
    """Open the configured stores (nothing connects until first use).

    Raises:
        BastionError: a store URL is invalid (the message names the setting).
    """
    try:
        return open_stores(
            settings.resolved_database_url(),
            state_url or settings.resolved_state_url(),
            pool_size=settings.storage.pool_size,
        )
    except StoreError as exc:
        raise store_error(exc) from None


async def ready_stores(settings: Settings) -> Stores:
    """The configured stores, checked to answer now.

    Raises:
        BastionError: a store is invalid or unreachable (the message names the setting).
    """
    stores = stores_for(settings)
    try:
        await stores.require()
    except StoreError as exc:
        await stores.close()
        raise store_error(exc) from None
    return stores


def open_audit(settings: Settings, stores: Stores, *, default_actor: str = "system") -> AuditLog:
    """The audit log of this process: the configured file and the durable store, pruned after
    ``logging.audit_retention_days``; ``default_actor`` acts where no request names one (``cli``
    for commands)."""
    days = settings.logging.audit_retention_days
    return AuditLog(
        settings.resolved_audit_log(),
        store=stores.audit,
        retention=days * 86400.0 if days else None,
        default_actor=default_actor,
    )


@asynccontextmanager
async def open_services(settings: Settings, *, auto_migrate: bool = True) -> AsyncIterator[Services]:
    """Services over opened stores, for CLI commands (events they audit name the actor
    ``cli``); everything is closed on exit."""
    stores = await ready_stores(settings)
    try:
        kek = await kek_for(settings, stores)
    except BaseException:
        await stores.close()
        raise
    audit = open_audit(settings, stores, default_actor="cli")
    try:
        if auto_migrate:
            await migrate(stores.db)
        keys = await sealer_keys(stores, kek)
        services = Services.create(settings.authorization_server, stores, keys.sealer(), audit)
        await services.keys.load()
        yield services
    finally:
        await audit.close()
        await stores.close()


def fail(message: str) -> None:
    """Print an error and exit 1 (for errors found outside click's parsing)."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)

"""``bastion kek rotate``: re-seal every sealed secret under a new key-encryption key.

The operator steps (in docs/operations.md) are: rotate, then restart each server with
``BASTION_KEK`` set to the new key and ``BASTION_KEK_PREVIOUS`` to the old one, then drop
``BASTION_KEK_PREVIOUS`` at the next restart.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import click

from bastion.cli.common import run
from bastion.cli.common import settings_from
from bastion.cli.context import KEKError
from bastion.cli.context import load_kek
from bastion.cli.context import open_audit
from bastion.cli.context import previous_keks
from bastion.cli.context import ready_stores
from bastion.cli.context import sealer_keys
from bastion.services.crypto import MIN_KEK_LENGTH
from bastion.services.kek import rotate_kek
from bastion.settings import Settings
from bastion.storage.sql.migrate import migrate


@click.group(short_help="Rotate the key-encryption key.")
def kek() -> None:
    """Manage the key-encryption key (KEK) that seals the private signing keys."""


def _write_new_kek(path: Path) -> bytes:
    """A new random KEK, written to a new 0600 file (never printed)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KEKError(f"--write-new-kek: {path} exists; give a new file") from None
    except OSError as exc:
        raise KEKError(f"--write-new-kek: cannot create {path}: {exc.strerror}") from None
    new = secrets.token_urlsafe(48).encode()
    with os.fdopen(fd, "wb") as handle:
        handle.write(new)
    return new


def _new_kek(new_kek_file: Path | None, write_new_kek: Path | None) -> tuple[bytes, str]:
    """The new KEK and where it came from."""
    given = os.environ.get("BASTION_NEW_KEK")
    sources = [s for s in (new_kek_file, write_new_kek, given) if s]
    if len(sources) != 1:
        raise click.UsageError(
            "give the new key-encryption key with exactly one of --new-kek-file, BASTION_NEW_KEK "
            "or --write-new-kek"
        )
    if new_kek_file is not None:
        try:
            new, source = new_kek_file.read_bytes().strip(), str(new_kek_file)
        except OSError as exc:
            raise KEKError(f"--new-kek-file: cannot read {new_kek_file}: {exc.strerror}") from None
    elif given:
        new, source = given.encode(), "BASTION_NEW_KEK"
    else:
        return b"", str(write_new_kek)
    if len(new) < MIN_KEK_LENGTH:
        raise KEKError(
            f"{source} must hold at least {MIN_KEK_LENGTH} characters (try: openssl rand -base64 48)"
        )
    return new, source


async def _rotate(settings: Settings, new: bytes) -> int:
    stores = await ready_stores(settings)
    audit = open_audit(settings, stores, default_actor="cli")
    try:
        current = load_kek(settings, create=False)
        if new == current and not previous_keks():
            # With a previous KEK, the same KEK again re-seals what was sealed under the old one.
            raise KEKError("the new key-encryption key is the current one (BASTION_KEK)")
        await migrate(stores.db)
        keys = await sealer_keys(stores, current)
        count = await rotate_kek(stores.keys, keys.sealer(), new, now=time.time())
        audit.emit("kek.rotated", details={"resealed": count})
        return count
    finally:
        await audit.close()
        await stores.close()


@kek.command("rotate", short_help="Re-seal every private key under a new KEK.")
@click.option(
    "--new-kek-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the new KEK (or set BASTION_NEW_KEK).",
)
@click.option(
    "--write-new-kek",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Generate the new KEK into FILE (created with mode 0600; never printed).",
)
@click.pass_context
def kek_rotate(ctx: click.Context, new_kek_file: Path | None, write_new_kek: Path | None) -> None:
    """Re-seal every private signing key (and every other sealed secret) under a new KEK.

    The current KEK comes from BASTION_KEK or BASTION_KEK_FILE as usual; a key sealed by a
    server still running on an older KEK opens with BASTION_KEK_PREVIOUS. Everything is
    re-sealed in one transaction: after a failure, nothing changed. Running servers keep
    working; restart them with BASTION_KEK set to the new key and BASTION_KEK_PREVIOUS to the
    old one (see docs/operations.md, "Rotating the key-encryption key").
    """
    settings = settings_from(ctx)
    new, source = _new_kek(new_kek_file, write_new_kek)
    load_kek(settings, create=False)  # fail before writing a new KEK file when there is no KEK
    if write_new_kek is not None:
        new = _write_new_kek(write_new_kek)
    count = run(_rotate(settings, new))
    click.echo(f"re-sealed {count} secret(s) under the new key-encryption key from {source}")
    click.echo(
        "next: restart each server with BASTION_KEK set to the new key and BASTION_KEK_PREVIOUS to the old one"
    )

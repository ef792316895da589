"""Key-encryption-key rotation: every sealed blob re-sealed under a new KEK, in one transaction.

What the KEK seals: the private signing keys, the grace-window refresh responses, and (from the
first rotation on) the secret-hash key. The secret-hash key keys the stored hashes of client
secrets, refresh tokens and codes; those secrets are not stored, so their hashes cannot be
recomputed: the rotation carries the key over instead, sealed under the new KEK in
``sealed_secrets``. The old KEK then opens nothing that is stored.

Running servers are unaffected: they hold their signing keys decrypted in memory and only open
a key they have not seen before. A server started with the new KEK and the old one as
``previous`` (``BASTION_KEK_PREVIOUS``) also opens what a not-yet-restarted server sealed
meanwhile (a key rotated by the schedule, a grace-window response).
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion.services.crypto import Sealer
from bastion.services.crypto import SealError
from bastion.storage.protocols import KeyStore

#: The name of the carried secret-hash key in the store's sealed secrets.
SECRET_HASH = "secret-hash"


def _aad(name: str) -> bytes:
    return b"sealed-secret/" + name.encode()


async def open_sealer(store: KeyStore, kek: bytes, previous: Sequence[bytes] = ()) -> Sealer:
    """The sealer for ``kek``, with the secret-hash key a KEK rotation carried over, if any.

    Raises:
        SealError: a rotation stored the secret-hash key under another KEK (one line that says
            which KEK is needed).
        StorageError: the store cannot be read.
    """
    sealer = Sealer(kek, previous=previous)
    sealed = await store.get_sealed_secret(SECRET_HASH)
    if sealed is None:
        return sealer
    try:
        hash_key = sealer.open(sealed, _aad(SECRET_HASH))
    except SealError:
        raise SealError(
            "cannot decrypt the stored secret-hash key: the key-encryption key is not the one it was "
            "encrypted with. Set BASTION_KEK (or BASTION_KEK_FILE) to the key of the last "
            "`bastion kek rotate`."
        ) from None
    return Sealer(kek, previous=previous, hash_key=hash_key)


async def rotate_kek(store: KeyStore, current: Sealer, new_kek: bytes, *, now: float) -> int:
    """Re-seal every sealed blob under ``new_kek`` in one transaction; returns how many.

    Every blob must open with ``current`` (its KEK or one of its previous KEKs); if one does
    not, nothing changes.

    Raises:
        SealError: a blob does not open (the message names its record).
        ValueError: ``new_kek`` is too short.
    """
    new = Sealer(new_kek, hash_key=current.hash_key)

    def reseal(blob: bytes, aad: bytes) -> bytes:
        try:
            return new.seal(current.open(blob, aad), aad)
        except SealError:
            raise SealError(
                f"cannot decrypt the record sealed for {aad.decode(errors='replace')!r} with BASTION_KEK "
                "or BASTION_KEK_PREVIOUS; nothing was changed"
            ) from None

    secrets = {SECRET_HASH: new.seal(current.hash_key, _aad(SECRET_HASH))}
    return await store.reseal(reseal, secrets, now)

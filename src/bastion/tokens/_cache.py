"""The verified-token cache: skip signature checks for tokens already seen.

Invariants:

* Keyed by ``(token, audience)`` inside one validator (one issuer): a token verified for one
  audience or issuer is never a hit for another.
* An entry is a hit only while ``now < exp`` (no leeway: a cache hit is never more lenient than
  the issuer meant); after that it is a miss and full validation decides (and refuses).
* Bounded: when full, the *oldest* entries go first (insertion order), never all at once.
* Flushed precisely: every entry verified with a key that left the JWKS (by RFC 7638
  thumbprint), and every entry carrying a revoked ``jti``.
* A hit is one dict lookup and one comparison, done synchronously by the validator.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterable

from bastion.tokens._principal import Principal

CacheKey = tuple[str, str]
#: (principal, expires_at, key thumbprint, jti)
Entry = tuple[Principal, float, str, "str | None"]


class VerifiedTokenCache:
    """Bounded map of ``(token, audience)`` to the :class:`Principal` it verified as."""

    __slots__ = ("_by_jti", "_by_key", "entries", "max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self.max_entries = max_entries
        #: Read directly by the validator's fast path; written only through this class.
        self.entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        self._by_key: dict[str, set[CacheKey]] = {}
        self._by_jti: dict[str, set[CacheKey]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, token: str, audience: str, now: float) -> Principal | None:
        """The principal for a live entry, else ``None``."""
        entry = self.entries.get((token, audience))
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def put(self, token: str, audience: str, principal: Principal, thumbprint: str) -> None:
        """Remember a verified token, evicting the oldest entries beyond the bound."""
        if self.max_entries == 0:
            return
        key = (token, audience)
        if key in self.entries:
            self._remove(key)
        while len(self.entries) >= self.max_entries:
            oldest = next(iter(self.entries))
            self._remove(oldest)
        jti = principal.token_id
        self.entries[key] = (principal, principal.expires_at, thumbprint, jti)
        self._by_key.setdefault(thumbprint, set()).add(key)
        if jti is not None:
            self._by_jti.setdefault(jti, set()).add(key)

    def flush_keys(self, thumbprints: Iterable[str]) -> int:
        """Drop every entry verified with one of these keys; returns how many."""
        dropped = 0
        for thumbprint in thumbprints:
            for key in list(self._by_key.get(thumbprint, ())):
                self._remove(key)
                dropped += 1
        return dropped

    def flush_jti(self, jti: str) -> int:
        """Drop every entry whose token carries ``jti``; returns how many."""
        keys = list(self._by_jti.get(jti, ()))
        for key in keys:
            self._remove(key)
        return len(keys)

    def flush_where(self, refused: Callable[[Principal], bool]) -> int:
        """Drop every entry whose principal ``refused`` says so (a scan: for rare events such
        as a disabled client); returns how many."""
        keys = [key for key, entry in self.entries.items() if refused(entry[0])]
        for key in keys:
            self._remove(key)
        return len(keys)

    def clear(self) -> None:
        """Drop everything."""
        self.entries.clear()
        self._by_key.clear()
        self._by_jti.clear()

    def _remove(self, key: CacheKey) -> None:
        _, _, thumbprint, jti = self.entries.pop(key)
        _discard(self._by_key, thumbprint, key)
        if jti is not None:
            _discard(self._by_jti, jti, key)


def _discard(index: dict[str, set[CacheKey]], name: str, key: CacheKey) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]

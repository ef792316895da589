"""The verified-token cache: skip signature checks for tokens already seen.

Invariants:

* Keyed by ``(token, audience)`` inside one validator (one issuer): a token verified for one
  audience or issuer is never a hit for another.
* An entry is a hit only while ``now < exp`` (no leeway: a cache hit is never more lenient than
  the issuer meant); after that it is a miss and full validation decides (and refuses).
* Bounded, and useful when full. Under a cyclic sweep of more distinct tokens than the cache
  holds (a scraper replaying a token list), first-in-first-out or least-recently-used eviction
  always throws out the very entry that comes back next: every lookup would miss, and every
  miss would also pay for an insertion. So when the cache is full a newcomer is admitted only
  one time in :data:`ADMIT_ONE_IN`, and then in place of an entry chosen at random. A sweep 3x
  the cache's size then still hits about 30 % of the time (the most it can is 33 %), one 1.1x
  its size about 90 %; a cache that is not full admits everything, as before.
* Flushed precisely: every entry verified with a key that left the JWKS (by RFC 7638
  thumbprint), and every entry carrying a revoked ``jti``.
* A hit is one dict lookup and one comparison, done synchronously by the validator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from collections.abc import Iterable

from bastion.tokens._principal import Principal

#: When full, one newcomer in this many is admitted (see the module docstring).
ADMIT_ONE_IN = 8

CacheKey = tuple[str, str]
#: (principal, expires_at, key thumbprint, jti)
Entry = tuple[Principal, float, str, "str | None"]


class VerifiedTokenCache:
    """Bounded map of ``(token, audience)`` to the :class:`Principal` it verified as."""

    __slots__ = ("_by_jti", "_by_key", "_choose", "_position", "_slots", "entries", "max_entries")

    def __init__(self, max_entries: int, *, choose: Callable[[int], int] = random.randrange) -> None:
        """Args:
        max_entries: The bound (``0`` caches nothing).
        choose: ``choose(n)`` draws from ``range(n)``: whether a newcomer is admitted to a
            full cache (``choose(ADMIT_ONE_IN) == 0``) and which slot's entry makes room for it
            (injected by tests; not a security choice, so not ``secrets``).
        """
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self.max_entries = max_entries
        #: Read directly by the validator's fast path; written only through this class.
        self.entries: dict[CacheKey, Entry] = {}
        self._by_key: dict[str, set[CacheKey]] = {}
        self._by_jti: dict[str, set[CacheKey]] = {}
        #: Every key once, in no meaningful order, for an O(1) random victim; ``_position``
        #: maps a key to its index there (removal swaps the last key into the hole).
        self._slots: list[CacheKey] = []
        self._position: dict[CacheKey, int] = {}
        self._choose = choose

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, token: str, audience: str, now: float) -> Principal | None:
        """The principal for a live entry, else ``None``."""
        entry = self.entries.get((token, audience))
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def put(self, token: str, audience: str, principal: Principal, thumbprint: str) -> None:
        """Remember a verified token; when the cache is full, admit it one time in
        :data:`ADMIT_ONE_IN`, in place of a random entry."""
        if self.max_entries == 0:
            return
        key = (token, audience)
        if key in self.entries:
            self._remove(key)
        if len(self.entries) >= self.max_entries:
            if self._choose(ADMIT_ONE_IN) != 0:
                return
            while len(self.entries) >= self.max_entries:
                self._remove(self._slots[self._choose(len(self._slots))])
        jti = principal.token_id
        self.entries[key] = (principal, principal.expires_at, thumbprint, jti)
        self._position[key] = len(self._slots)
        self._slots.append(key)
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
        self._slots.clear()
        self._position.clear()

    def _remove(self, key: CacheKey) -> None:
        _, _, thumbprint, jti = self.entries.pop(key)
        index = self._position.pop(key)
        last = self._slots.pop()
        if last != key:  # fill the hole with the last key
            self._slots[index] = last
            self._position[last] = index
        _discard(self._by_key, thumbprint, key)
        if jti is not None:
            _discard(self._by_jti, jti, key)


def _discard(index: dict[str, set[CacheKey]], name: str, key: CacheKey) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]

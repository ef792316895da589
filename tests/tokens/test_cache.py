"""The verified-token cache against a simple model: bound, random eviction, flushes, indexes."""

from __future__ import annotations

import random
from types import MappingProxyType

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bastion.tokens import Principal
from bastion.tokens._cache import VerifiedTokenCache


def principal(jti: str | None, exp: float) -> Principal:
    return Principal(
        subject="s",
        client_id="c",
        scopes=frozenset(),
        claims=MappingProxyType({}),
        token_id=jti,
        expires_at=exp,
        issuer="i",
        audience="a",
    )


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.integers(0, 9),
            st.sampled_from(["a", "b"]),
            st.sampled_from([None, "j1", "j2"]),
        ),
        st.tuples(st.just("flush_key"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("flush_jti"), st.sampled_from(["j1", "j2"])),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(0, 4))
def test_cache_matches_model(ops: list[tuple[object, ...]], bound: int) -> None:
    cache = VerifiedTokenCache(bound)
    model: dict[str, tuple[str, str | None]] = {}  # token -> (thumbprint, jti)
    for op in ops:
        before = dict(model)
        if op[0] == "put":
            _, number, thumb, jti = op
            token = f"t{number}"
            cache.put(token, "aud", principal(jti, 100.0), thumb)  # type: ignore[arg-type]
            kept = {key[0] for key in cache.entries}
            if not bound:
                assert kept == set()
                continue
            if token in before or len(before) < bound:  # room for it: always in
                assert kept == set(before) | {token}
            elif token not in kept:  # full, and not admitted this time: nothing changed
                assert kept == set(before)
                continue
            else:  # full and admitted: exactly one random victim made room
                assert len(kept) == bound
                assert len(set(before) - kept) == 1
            model = {t: before[t] for t in kept - {token}}
            model[token] = (thumb, jti)  # type: ignore[assignment]
        elif op[0] == "flush_key":
            cache.flush_keys([op[1]])  # type: ignore[list-item]
            model = {token: value for token, value in model.items() if value[0] != op[1]}
        else:
            cache.flush_jti(op[1])  # type: ignore[arg-type]
            model = {token: value for token, value in model.items() if value[1] != op[1]}
        assert {key[0] for key in cache.entries} == set(model)
        assert sorted(cache._slots) == sorted(cache.entries)
        assert all(cache._slots[i] == key for key, i in cache._position.items())
    for token in model:
        assert cache.get(token, "aud", 99.0) is not None
        assert cache.get(token, "aud", 100.0) is None  # at exp: a miss
        assert cache.get(token, "other", 0.0) is None
    # The indexes hold nothing that is not in the cache.
    assert all(keys for keys in cache._by_key.values())
    assert {key for keys in cache._by_key.values() for key in keys} == set(cache.entries)
    assert {key for keys in cache._by_jti.values() for key in keys} <= set(cache.entries)


def test_a_cyclic_sweep_larger_than_the_cache_still_hits() -> None:
    """A scraper replaying 3x as many distinct tokens as the cache holds: first-in-first-out
    eviction would miss every time (the entry evicted is always the one that comes back next);
    with admission one in eight and a random victim, close to the best possible third hits."""
    cache = VerifiedTokenCache(100, choose=random.Random(7).randrange)
    tokens = [f"t{n}" for n in range(300)]
    hits = 0
    for sweep in range(10):
        for token in tokens:
            if cache.get(token, "aud", 0.0) is not None:
                hits += sweep > 0
            else:
                cache.put(token, "aud", principal(None, 100.0), "k")
    assert len(cache) == 100
    assert 0.25 < hits / (9 * len(tokens)) <= 1 / 3


def test_a_full_cache_admits_one_in_eight_in_place_of_the_victim_chosen() -> None:
    draws = iter([1, 0, 1])  # refused; admitted, in place of slot 1 ("b")
    cache = VerifiedTokenCache(3, choose=lambda n: next(draws))
    for token in ("a", "b", "c"):
        cache.put(token, "aud", principal(None, 100.0), "k")  # room: no draw
    cache.put("d", "aud", principal(None, 100.0), "k")
    assert {key[0] for key in cache.entries} == {"a", "b", "c"}
    cache.put("d", "aud", principal(None, 100.0), "k")
    assert {key[0] for key in cache.entries} == {"a", "c", "d"}
    cache.put("c", "aud", principal(None, 100.0), "k2")  # already in: refreshed, no draw
    assert cache.entries[("c", "aud")][2] == "k2"

"""The verified-token cache against a simple model: bound, age order, flushes, indexes."""

from __future__ import annotations

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
    model: dict[str, tuple[str, str | None]] = {}  # token -> (thumbprint, jti), insertion order
    for op in ops:
        if op[0] == "put":
            _, number, thumb, jti = op
            token = f"t{number}"
            cache.put(token, "aud", principal(jti, 100.0), thumb)  # type: ignore[arg-type]
            if bound:
                model.pop(token, None)
                while len(model) >= bound:
                    del model[next(iter(model))]
                model[token] = (thumb, jti)  # type: ignore[assignment]
        elif op[0] == "flush_key":
            cache.flush_keys([op[1]])  # type: ignore[list-item]
            model = {token: value for token, value in model.items() if value[0] != op[1]}
        else:
            cache.flush_jti(op[1])  # type: ignore[arg-type]
            model = {token: value for token, value in model.items() if value[1] != op[1]}
        assert [key[0] for key in cache.entries] == list(model)
    for token in model:
        assert cache.get(token, "aud", 99.0) is not None
        assert cache.get(token, "aud", 100.0) is None  # at exp: a miss
        assert cache.get(token, "other", 0.0) is None
    # The indexes hold nothing that is not in the cache.
    assert all(keys for keys in cache._by_key.values())
    assert {key for keys in cache._by_key.values() for key in keys} == set(cache.entries)
    assert {key for keys in cache._by_jti.values() for key in keys} <= set(cache.entries)

"""Micro-benchmark of ``bastion.tokens``: the cache-hit fast path and full verification per alg.

Run: ``.venv/bin/python bench/tokens_cache.py [--quick]``. Prints µs per operation:

* ``cached()`` hit, with the very same ``str`` object (hash cached by CPython) and with a fresh
  copy per call (what a gateway sees: the header is decoded anew for every request, so the
  token's hash is computed once per lookup);
* ``await validate()`` hit (the coroutine overhead on top);
* a full validation (cache disabled) per algorithm: parse, key selection, signature, claims.

Keys come from ``StaticKeys`` so no HTTP is involved. Timing belongs here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Awaitable
from collections.abc import Callable

from bastion.protocol import jose
from bastion.tokens import StaticKeys
from bastion.tokens import TokenValidator

ISSUER = "https://auth.example"
AUDIENCE = "https://api.example"
ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")


def mint(alg: str, key: jose.PrivateKey, jti: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-123456",
        "client_id": "shop-frontend",
        "scope": "orders:read orders:write catalog:read",
        "iat": now,
        "exp": now + 900,
        "jti": jti,
    }
    return jose.encode_jwt(alg, key, {"typ": "at+jwt", "kid": alg}, claims)


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Mean µs per call over batches totalling about ``seconds``."""
    batch = 1000
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls * 1e6


async def async_per_call_us(factory: Callable[[], Awaitable[object]], seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(200):
            await factory()
        calls += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls * 1e6


async def main(seconds: float) -> None:
    keys = {alg: jose.generate_private_key(alg) for alg in ALGORITHMS}
    source = StaticKeys(
        {
            "keys": [
                {**jose.public_jwk(key), "kid": alg, "alg": alg, "use": "sig"} for alg, key in keys.items()
            ]
        }
    )
    cached_validator = TokenValidator(ISSUER, audience=AUDIENCE, key_source=source, algorithms=ALGORITHMS)
    token = mint("ES256", keys["ES256"], "bench-hit")
    await cached_validator.validate(token)
    # Fill the cache to a realistic size so lookups don't run in an unrealistically small table.
    for index in range(20_000):
        await cached_validator.validate(mint("EdDSA", keys["EdDSA"], f"fill-{index}"))
    print(f"token length: {len(token)} bytes; cache entries: {cached_validator.cache_size}")
    hit_same = per_call_us(lambda: cached_validator.cached(token), seconds)
    # Fresh strings: bytes -> str as the gateway does per request (decode cost included).
    raw = token.encode()
    hit_fresh = per_call_us(lambda: cached_validator.cached(raw.decode("ascii")), seconds)
    decode_only = per_call_us(lambda: raw.decode("ascii"), seconds)
    hit_async = await async_per_call_us(lambda: cached_validator.validate(token), seconds)
    print(f"cached() hit, same str object        : {hit_same:6.3f} µs")
    print(f"cached() hit, fresh str (incl decode): {hit_fresh:6.3f} µs  (decode alone {decode_only:.3f} µs)")
    print(f"await validate() hit                 : {hit_async:6.3f} µs")

    uncached = TokenValidator(
        ISSUER, audience=AUDIENCE, key_source=source, algorithms=ALGORITHMS, cache_size=0
    )
    print("full verification (cache disabled):")
    for alg in ALGORITHMS:
        alg_token = mint(alg, keys[alg], f"bench-{alg}")
        await uncached.validate(alg_token)
        cost = await async_per_call_us(functools.partial(uncached.validate, alg_token), seconds)
        print(f"  {alg:6s}: {cost:8.1f} µs  ({1e6 / cost:8.0f} /s on one core)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.2 s per measurement instead of 1 s")
    args = parser.parse_args()
    asyncio.run(main(0.2 if args.quick else 1.0))

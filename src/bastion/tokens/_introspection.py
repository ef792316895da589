"""``Introspector``: opaque access tokens, checked at the issuer (RFC 7662).

Invariants:

* A positive answer is cached for ``min(cache_ttl, exp - now)``: ``cache_ttl`` (default 30 s)
  is the documented worst-case delay before a revocation at the issuer takes effect here.
* A negative answer (``active: false``, wrong audience …) is cached for ``inactive_ttl``
  (default 5 s) in a separate, smaller bounded map, so a flood of garbage tokens costs one
  introspection per distinct token per 5 s and cannot evict the positive entries.
* Concurrent lookups of the same ``(token, audience)`` share one request.
* Failures to reach the issuer are never cached and never mean "active".
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from types import MappingProxyType
from typing import Any
from typing import Final
from urllib.parse import quote

import aiohttp

from bastion.tokens._errors import InvalidClaims
from bastion.tokens._errors import IssuerUnavailable
from bastion.tokens._errors import MalformedToken
from bastion.tokens._errors import TokenError
from bastion.tokens._errors import TokenExpired
from bastion.tokens._errors import TokenInactive
from bastion.tokens._errors import TokenNotYetValid
from bastion.tokens._errors import TokenTooLarge
from bastion.tokens._errors import WrongAudience
from bastion.tokens._errors import WrongIssuer
from bastion.tokens._errors import WrongType
from bastion.tokens._http import DEFAULT_TIMEOUT
from bastion.tokens._http import Http
from bastion.tokens._http import discover
from bastion.tokens._lifecycle import AsyncResource
from bastion.tokens._principal import Principal
from bastion.tokens._rules import DEFAULT_MAX_TOKEN_BYTES

DEFAULT_INTROSPECTION_TTL: Final = 30.0
DEFAULT_INACTIVE_TTL: Final = 5.0
_BEARER_TYPES: Final = frozenset({"bearer", "access_token"})
_Key = tuple[str, str]
#: A cached refusal: (until, error class, reason).
_Negative = tuple[float, type[TokenError], str]


def _basic_auth(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: both are form-urlencoded before being joined and base64-encoded.
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Introspector(AsyncResource):
    """Checks opaque access tokens with the issuer's introspection endpoint.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        client_secret: str,
        audience: str | None = None,
        introspection_endpoint: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        cache_ttl: float = DEFAULT_INTROSPECTION_TTL,
        inactive_ttl: float = DEFAULT_INACTIVE_TTL,
        cache_size: int = 100_000,
        inactive_cache_size: int = 10_000,
        leeway: float = 60.0,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        metadata_cooldown: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Args:
        issuer: The issuer identifier; an ``iss`` in the answer must equal it.
        client_id: This resource server's client id at the issuer.
        client_secret: Its secret (sent with ``client_secret_basic``).
        audience: Default expected audience, when calls don't name one.
        introspection_endpoint: Explicit endpoint; otherwise ``introspection_endpoint`` from
            the issuer's metadata.
        session: aiohttp session to borrow; by default one is owned.
        timeout: Timeouts for every request.
        cache_ttl: Upper bound on caching an active answer (worst-case revocation delay).
        inactive_ttl: How long a refusal is cached.
        cache_size: Bound of the positive cache (oldest evicted first).
        inactive_cache_size: Bound of the negative cache.
        leeway: Clock-skew allowance for ``exp`` and ``nbf`` in the answer.
        max_token_bytes: Longer tokens are refused without a request.
        metadata_cooldown: After a failed discovery, wait this long before trying again.
        clock: Seconds since the epoch; injectable for tests.
        """
        if cache_ttl < 0 or inactive_ttl < 0:
            raise ValueError("cache TTLs must not be negative")
        self.issuer = issuer
        self._audience = audience
        self._auth = _basic_auth(client_id, client_secret)
        self._endpoint = introspection_endpoint
        self._http = Http(session, timeout)
        self._ttl = cache_ttl
        self._inactive_ttl = inactive_ttl
        self._max_active = cache_size
        self._max_inactive = inactive_cache_size
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._metadata_cooldown = metadata_cooldown
        self._metadata_failed_at = -math.inf
        self._metadata_lock = asyncio.Lock()
        self._clock = clock
        self._active: OrderedDict[_Key, tuple[Principal, float]] = OrderedDict()
        self._inactive: OrderedDict[_Key, _Negative] = OrderedDict()
        self._inflight: dict[_Key, asyncio.Task[Principal]] = {}
        #: Introspection requests sent so far (for metrics and tests).
        self.requests = 0

    def cached(self, token: str, audience: str | None = None) -> Principal | None:
        """A cached active answer still within its TTL, else ``None`` (synchronous)."""
        entry = self._active.get((token, audience or self._audience))  # type: ignore[arg-type]
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        return None

    async def introspect(self, token: str, *, audience: str | None = None) -> Principal:
        """Ask the issuer whether ``token`` is active (or answer from the cache).

        Raises:
            TokenError: a subclass saying why the token is refused; ``IssuerUnavailable``
                when the issuer cannot be asked.
            ValueError: no audience given here nor at construction.
        """
        aud = audience or self._audience
        if aud is None:
            raise ValueError("an audience is required")
        key = (token, aud)
        now = self._clock()
        entry = self._active.get(key)
        if entry is not None and entry[1] > now:
            return entry[0]
        negative = self._inactive.get(key)
        if negative is not None and negative[0] > now:
            raise negative[1]("cached refusal", reason=negative[2])
        if not isinstance(token, str) or not token:
            raise MalformedToken("empty token")
        if len(token) > self._max_token_bytes:
            raise TokenTooLarge(f"{len(token)} bytes > {self._max_token_bytes}")
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(token, aud))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: _Key, task: asyncio.Task[Principal]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()

    async def _lookup(self, token: str, audience: str) -> Principal:
        endpoint = await self._introspection_endpoint()
        self.requests += 1
        # RFC 7662 §2.1: POST, form-encoded "token" (and an optional "token_type_hint"),
        # the caller authenticated as a client.
        answer = await self._http.request_json(
            "POST",
            endpoint,
            data={"token": token, "token_type_hint": "access_token"},
            headers={"Authorization": self._auth, "Accept": "application/json"},
        )
        now = self._clock()
        try:
            principal = self._principal(answer, audience, now)
        except IssuerUnavailable:
            raise
        except TokenError as exc:
            self._remember_refusal((token, audience), type(exc), exc.reason, now)
            raise
        until = min(now + self._ttl, principal.expires_at)
        if until > now and self._max_active > 0:
            self._active.pop((token, audience), None)
            while len(self._active) >= self._max_active:
                self._active.popitem(last=False)
            self._active[(token, audience)] = (principal, until)
        return principal

    def _remember_refusal(self, key: _Key, error: type[TokenError], reason: str, now: float) -> None:
        if self._inactive_ttl <= 0 or self._max_inactive <= 0:
            return
        self._inactive.pop(key, None)
        while len(self._inactive) >= self._max_inactive:
            self._inactive.popitem(last=False)
        self._inactive[key] = (now + self._inactive_ttl, error, reason)

    def _principal(self, answer: Any, audience: str, now: float) -> Principal:
        """Check an RFC 7662 §2.2 response and build the principal."""
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise IssuerUnavailable("introspection response lacks a boolean 'active'")
        if not answer["active"]:
            raise TokenInactive("issuer says inactive")
        if "iss" in answer and answer["iss"] != self.issuer:
            raise WrongIssuer(f"iss {str(answer['iss'])[:100]!r}")
        token_type = answer.get("token_type")
        if token_type is not None and (
            not isinstance(token_type, str) or token_type.lower() not in _BEARER_TYPES
        ):
            raise WrongType(f"token_type {str(token_type)[:30]!r} is not a bearer access token")
        for name in ("sub", "client_id", "scope", "jti"):
            if name in answer and not isinstance(answer[name], str):
                raise InvalidClaims(f"{name} must be a string")
        for name in ("exp", "nbf", "iat"):
            if name in answer and not _number(answer[name]):
                raise InvalidClaims(f"{name} must be a NumericDate")
        exp = answer.get("exp", math.inf)
        if now - self._leeway >= exp:
            raise TokenExpired(f"exp {exp} has passed")
        if "nbf" in answer and now + self._leeway < answer["nbf"]:
            raise TokenNotYetValid(f"nbf {answer['nbf']} is in the future")
        aud = answer.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise WrongAudience(f"aud does not contain {audience!r}")
        scope = answer.get("scope")
        return Principal(
            subject=answer.get("sub"),
            client_id=answer.get("client_id"),
            scopes=frozenset(scope.split()) if scope else frozenset(),
            claims=MappingProxyType(answer),
            token_id=answer.get("jti"),
            expires_at=exp,
            issuer=self.issuer,
            audience=audience,
        )

    async def _introspection_endpoint(self) -> str:
        if self._endpoint is not None:
            return self._endpoint
        async with self._metadata_lock:
            if self._endpoint is not None:
                return self._endpoint
            if self._clock() - self._metadata_failed_at < self._metadata_cooldown:
                raise IssuerUnavailable("metadata discovery failed recently")
            try:
                metadata = await discover(self._http, self.issuer)
            except IssuerUnavailable:
                self._metadata_failed_at = self._clock()
                raise
            endpoint = metadata.get("introspection_endpoint")
            if not isinstance(endpoint, str):
                self._metadata_failed_at = self._clock()
                raise IssuerUnavailable(f"metadata of {self.issuer} has no introspection_endpoint")
            self._endpoint = endpoint
            return endpoint

    async def start(self) -> None:
        """Resolve the introspection endpoint now rather than on the first token.

        Raises:
            IssuerUnavailable: discovery failed.
        """
        await self._introspection_endpoint()

    async def close(self) -> None:
        """Cancel lookups in flight and close an owned session."""
        tasks = [task for task in self._inflight.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.close()

"""The HTTP calls a validator makes: metadata discovery, JWKS, introspection (aiohttp).

Every call has explicit timeouts, follows no redirects, reads at most a bounded number of
bytes, and turns every failure (network, status, size, JSON) into :class:`IssuerUnavailable`,
so no aiohttp exception leaves this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from typing import Final
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import aiohttp
import orjson

from bastion.tokens._errors import IssuerUnavailable

#: Connect within 2 s, whole exchange within 5 s.
DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=5.0, connect=2.0, sock_read=3.0)
#: JWKS and metadata documents are a few KiB; anything far larger is refused.
MAX_DOCUMENT_BYTES: Final = 512 * 1024


class Http:
    """One aiohttp session, injected (borrowed, never closed here) or owned (created lazily)."""

    def __init__(self, session: aiohttp.ClientSession | None, timeout: aiohttp.ClientTimeout) -> None:
        self._session = session
        self._owned = session is None
        self.timeout = timeout

    def session(self) -> aiohttp.ClientSession:
        """The session; an owned one is created on first use, inside the running loop."""
        if self._session is None or (self._owned and self._session.closed):
            self._session = aiohttp.ClientSession(timeout=self.timeout, raise_for_status=False)
        return self._session

    async def close(self) -> None:
        """Close the session if we own it."""
        if self._owned and self._session is not None and not self._session.closed:
            await self._session.close()

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = MAX_DOCUMENT_BYTES,
    ) -> Any:
        """Send one request and decode a 200 JSON response.

        Raises:
            IssuerUnavailable: on any failure; ``detail`` says which.
        """
        document, _ = await self.request_json_cached(method, url, data=data, headers=headers, limit=limit)
        return document

    async def request_json_cached(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = MAX_DOCUMENT_BYTES,
    ) -> tuple[Any, float | None]:
        """Like :meth:`request_json`, also returning the response's ``Cache-Control: max-age``
        (``0`` for ``no-store``/``no-cache``, ``None`` when absent or malformed)."""
        try:
            async with self.session().request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    raise IssuerUnavailable(f"{method} {url}: HTTP {response.status}")
                if response.content_length is not None and response.content_length > limit:
                    raise IssuerUnavailable(f"{method} {url}: response over {limit} bytes")
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > limit:
                        raise IssuerUnavailable(f"{method} {url}: response over {limit} bytes")
                max_age = cache_max_age(response.headers.getall("Cache-Control", []))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise IssuerUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        try:
            return orjson.loads(body), max_age
        except orjson.JSONDecodeError as exc:
            raise IssuerUnavailable(f"{method} {url}: response is not JSON") from exc


def cache_max_age(values: list[str]) -> float | None:
    """Freshness lifetime from ``Cache-Control`` values (RFC 9111 §5.2.2): ``max-age`` in
    seconds, ``0`` for ``no-store`` or ``no-cache``, ``None`` when there is no usable directive."""
    max_age: float | None = None
    for value in values:
        for directive in value.split(","):
            name, _, argument = directive.strip().partition("=")
            name = name.strip().lower()
            if name in ("no-store", "no-cache"):
                return 0.0
            if name == "max-age":
                argument = argument.strip().strip('"')
                if not argument.isdigit():
                    return None  # RFC 9111 §4.2.1: an invalid max-age makes the response stale
                max_age = float(argument) if max_age is None else min(max_age, float(argument))
    return max_age


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may live, in the order tried.

    RFC 8414 §3.1 inserts ``/.well-known/oauth-authorization-server`` between the host and the
    issuer's path; OpenID Connect Discovery 1.0 §4 appends ``/.well-known/openid-configuration``
    to the issuer. For an issuer without a path the first is also the plain appended form; for
    one with a path, the appended OAuth form (a common deployment) is tried second.
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    inserted = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    base = issuer.rstrip("/")
    urls = [inserted]
    if path:
        urls.append(base + "/.well-known/oauth-authorization-server")
    urls.append(base + "/.well-known/openid-configuration")
    return urls


async def discover(http: Http, issuer: str) -> dict[str, Any]:
    """Fetch the issuer's metadata document.

    Raises:
        IssuerUnavailable: no candidate answered with a JSON object whose ``issuer`` is ours.
    """
    failures: list[str] = []
    for url in metadata_urls(issuer):
        try:
            document = await http.request_json("GET", url)
        except IssuerUnavailable as exc:
            failures.append(exc.detail)
            continue
        # RFC 8414 §3.3: "The issuer value returned MUST be identical to the authorization
        # server's issuer identifier value into which the well-known URI string was inserted"
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            failures.append(f"{url}: issuer mismatch")
            continue
        return document
    raise IssuerUnavailable("metadata discovery failed: " + "; ".join(failures))

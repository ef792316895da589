"""``PollingRevocations`` against a revocation list served over real HTTP on 127.0.0.1.

What it sends (client authentication, the cursor it was given), what it accepts (only a whole,
well-formed list: anything else is a failed poll and nothing of it is applied), and that it
fails closed before its first poll. The real authorization server, its faults and recovery are
in ``tests/e2e/test_polling_revocations_serve.py``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bastion.tokens import IssuerUnavailable
from bastion.tokens import PollingRevocations
from bastion.tokens import StaticKeys
from bastion.tokens import TokenRevoked
from bastion.tokens import TokenValidator
from tests.tokens.tokens_helpers import AUDIENCE
from tests.tokens.tokens_helpers import Issuer

pytestmark = pytest.mark.anyio


class RevocationList:
    """Answers ``POST /revocations`` with whatever the test sets; records each request."""

    def __init__(self) -> None:
        self.status = 200
        self.answer: Any = {"jtis": [], "clients": [], "cursor": "c0"}
        self.requests: list[tuple[str | None, dict[str, str]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append((request.headers.get("Authorization"), {k: str(v) for k, v in form.items()}))
        return web.json_response(self.answer, status=self.status, headers={"Cache-Control": "no-store"})


@pytest.fixture
async def listing() -> AsyncIterator[RevocationList]:
    served = RevocationList()
    app = web.Application()
    app.router.add_post("/revocations", served.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    served.url = str(server.make_url("/revocations"))
    yield served
    await server.close()


async def test_it_refuses_to_answer_before_its_first_poll(listing: RevocationList) -> None:
    async with PollingRevocations(endpoint=listing.url, client_id="svc", client_secret="s") as source:
        assert await source.is_revoked("j") is False
    fresh = PollingRevocations(endpoint=listing.url, client_id="svc", client_secret="s")
    with pytest.raises(IssuerUnavailable) as caught:
        await fresh.is_revoked("j")
    assert caught.value.reason == "revocation_unavailable"
    with pytest.raises(IssuerUnavailable):
        await fresh.client_disabled_before("svc")
    await fresh.close()
    with pytest.raises(ValueError, match="issuer or the revocation list"):
        PollingRevocations(client_id="svc", client_secret="s")


async def test_it_authenticates_and_sends_back_the_cursor(listing: RevocationList, issuer: Issuer) -> None:
    source = PollingRevocations(endpoint=listing.url, client_id="svc a", client_secret="p:w")
    validator = TokenValidator(issuer.url, audience=AUDIENCE, key_source=StaticKeys(issuer.jwks()))
    try:
        token = issuer.mint(jti="j1", client_id="app")
        await validator.validate(token)
        listing.answer = {"jtis": [["j1", issuer.clock.now + 600]], "clients": [], "cursor": "c1"}
        assert await source.poll(validators=[validator]) == "c1"
        listing.answer = {
            "jtis": [],
            "clients": [["app", issuer.clock.now + 1, issuer.clock.now + 600]],
            "cursor": "c2",
        }
        assert await source.poll("c1", [validator]) == "c2"
    finally:
        await source.close()
    # RFC 6749 §2.3.1: id and secret are encoded (as the Introspector does), joined, base64-encoded.
    expected = "Basic " + base64.b64encode(b"svc%20a:p%3Aw").decode()
    assert listing.requests == [(expected, {}), (expected, {"cursor": "c1"})]
    assert validator.cached(token) is None, "the revocation reached the validator's cache"
    with pytest.raises(TokenRevoked):
        await validator.validate(token)
    assert await source.is_revoked("j1") is True
    assert await source.client_disabled_before("app") == issuer.clock.now + 1
    assert await source.client_disabled_before("other") is None


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (403, {"error": "access_denied"}),
        (401, {"error": "invalid_client"}),
        (200, ["not", "an", "object"]),
        (200, {"jtis": [["j1", 9e9]], "clients": []}),
        (200, {"jtis": [["j1", 9e9], ["j2"]], "clients": [], "cursor": "c"}),
        (200, {"jtis": [["j1", 9e9]], "clients": [["app", "yesterday", 9e9]], "cursor": "c"}),
        (200, {"jtis": [["j1", True]], "clients": [], "cursor": "c"}),
    ],
)
async def test_anything_but_a_whole_list_is_a_failed_poll(
    listing: RevocationList, status: int, answer: Any
) -> None:
    listing.status, listing.answer = status, answer
    source = PollingRevocations(endpoint=listing.url, client_id="svc", client_secret="s")
    try:
        with pytest.raises(IssuerUnavailable):
            await source.poll()
        with pytest.raises(IssuerUnavailable):
            await source.is_revoked("j1")  # nothing was applied, and nothing is answered
    finally:
        await source.close()

"""IssuerVerifier: JWTs and opaque tokens of one issuer under one revocation regime."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bastion.tokens import Introspector
from bastion.tokens import IssuerUnavailable
from bastion.tokens import IssuerVerifier
from bastion.tokens import TokenRevoked
from bastion.tokens import TokenValidator
from tests.tokens.test_introspection import active
from tests.tokens.tokens_helpers import AUDIENCE
from tests.tokens.tokens_helpers import Clock
from tests.tokens.tokens_helpers import Issuer

pytestmark = pytest.mark.anyio


class Marks:
    """A revocation source answering from a set (as the shared store would)."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.fail = False
        self.asked: list[str] = []

    async def is_revoked(self, jti: str) -> bool:
        self.asked.append(jti)
        if self.fail:
            raise ConnectionError("store down")
        return jti in self.revoked


@pytest.fixture
def marks() -> Marks:
    return Marks()


@pytest.fixture
async def verifier(issuer: Issuer, clock: Clock, marks: Marks) -> AsyncIterator[IssuerVerifier]:
    validator = TokenValidator(issuer.url, audience=AUDIENCE, revocation=marks, clock=clock)
    introspector = Introspector(
        issuer.url, client_id="gateway", client_secret="s3cret", audience=AUDIENCE, clock=clock
    )
    async with IssuerVerifier(validator, introspector) as both:
        yield both


async def test_each_form_goes_to_its_checker(issuer: Issuer, clock: Clock, verifier: IssuerVerifier) -> None:
    issuer.introspection["opaque-1"] = active(issuer, clock)
    jwt = issuer.mint(sub="bob")
    assert (await verifier.validate(jwt)).subject == "bob"
    assert (await verifier.validate("opaque-1")).subject == "alice"
    assert verifier.cached(jwt) is not None
    assert verifier.cached("opaque-1") is not None


async def test_a_pushed_revocation_refuses_a_cached_opaque_answer_at_once(
    issuer: Issuer, clock: Clock, verifier: IssuerVerifier
) -> None:
    issuer.introspection["opaque-1"] = active(issuer, clock, jti="j-op")
    await verifier.validate("opaque-1")
    hits = issuer.hits["/introspect"]
    verifier.revoke("j-op", clock() + 3600)  # what the revocation feed does
    assert verifier.cached("opaque-1") is None
    with pytest.raises(TokenRevoked):
        await verifier.validate("opaque-1")
    # The introspector's cache still says active: the refusal is the revocation's, not a new lookup.
    assert issuer.hits["/introspect"] == hits


async def test_a_disabled_client_refuses_its_opaque_tokens(
    issuer: Issuer, clock: Clock, verifier: IssuerVerifier
) -> None:
    issuer.introspection["opaque-1"] = active(issuer, clock, iat=int(clock()) - 10)
    await verifier.validate("opaque-1")
    verifier.revoke_client("partner", clock())
    assert verifier.cached("opaque-1") is None
    with pytest.raises(TokenRevoked):
        await verifier.validate("opaque-1")


async def test_while_the_feed_is_down_opaque_answers_are_checked_against_the_store(
    issuer: Issuer, clock: Clock, verifier: IssuerVerifier, marks: Marks
) -> None:
    issuer.introspection["opaque-1"] = active(issuer, clock, jti="j-op")
    await verifier.validate("opaque-1")
    verifier.cache_trusted = False
    assert verifier.validator.cache_trusted is False
    assert verifier.cached("opaque-1") is None
    marks.revoked.add("j-op")  # revoked while nothing told this process
    with pytest.raises(TokenRevoked):
        await verifier.validate("opaque-1")
    marks.fail = True
    with pytest.raises(IssuerUnavailable):  # a store that cannot answer refuses: fail closed
        await verifier.validate("opaque-1")

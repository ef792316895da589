"""Bastion's token-validation library: public and stable.

Validate JWT access tokens (RFC 9068) with :class:`TokenValidator` and opaque ones with
:class:`Introspector`; both return a :class:`Principal` or raise a :class:`TokenError` whose
``reason`` is a metrics label and whose :meth:`~TokenError.challenge` is the RFC 6750
``WWW-Authenticate`` value. :class:`FastStateRevocations` and :class:`PollingRevocations` tell
validators of revocations. Imports only ``cryptography``, ``orjson`` and ``aiohttp``.
"""

from __future__ import annotations

from bastion.tokens._challenge import bearer_challenge
from bastion.tokens._errors import DisallowedAlgorithm
from bastion.tokens._errors import InsufficientScope
from bastion.tokens._errors import InvalidClaims
from bastion.tokens._errors import InvalidSignature
from bastion.tokens._errors import IssuerUnavailable
from bastion.tokens._errors import MalformedToken
from bastion.tokens._errors import TokenError
from bastion.tokens._errors import TokenExpired
from bastion.tokens._errors import TokenInactive
from bastion.tokens._errors import TokenNotYetValid
from bastion.tokens._errors import TokenRevoked
from bastion.tokens._errors import TokenTooLarge
from bastion.tokens._errors import UnknownKey
from bastion.tokens._errors import UnsupportedHeader
from bastion.tokens._errors import WrongAudience
from bastion.tokens._errors import WrongIssuer
from bastion.tokens._errors import WrongType
from bastion.tokens._introspection import Introspector
from bastion.tokens._jwks import JWKSKeySource
from bastion.tokens._keys import KeySet
from bastion.tokens._keys import KeySource
from bastion.tokens._keys import StaticKeys
from bastion.tokens._keys import VerificationKey
from bastion.tokens._polling import PollingRevocations
from bastion.tokens._principal import Principal
from bastion.tokens._revocation import ClientRevocationSource
from bastion.tokens._revocation import FastStateRevocations
from bastion.tokens._revocation import RevocationSource
from bastion.tokens._revocation import SharedState
from bastion.tokens._rules import RFC9068_REQUIRED_CLAIMS
from bastion.tokens._validator import MAX_LEEWAY
from bastion.tokens._validator import TokenValidator
from bastion.tokens._verifier import IssuerVerifier

__all__ = [
    "MAX_LEEWAY",
    "RFC9068_REQUIRED_CLAIMS",
    "ClientRevocationSource",
    "DisallowedAlgorithm",
    "FastStateRevocations",
    "InsufficientScope",
    "Introspector",
    "InvalidClaims",
    "InvalidSignature",
    "IssuerUnavailable",
    "IssuerVerifier",
    "JWKSKeySource",
    "KeySet",
    "KeySource",
    "MalformedToken",
    "PollingRevocations",
    "Principal",
    "RevocationSource",
    "SharedState",
    "StaticKeys",
    "TokenError",
    "TokenExpired",
    "TokenInactive",
    "TokenNotYetValid",
    "TokenRevoked",
    "TokenTooLarge",
    "TokenValidator",
    "UnknownKey",
    "UnsupportedHeader",
    "VerificationKey",
    "WrongAudience",
    "WrongIssuer",
    "WrongType",
    "bearer_challenge",
]

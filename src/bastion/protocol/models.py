"""Records the protocol reasons about.

Plain frozen dataclasses: storage backends load and persist them, protocol rules read them,
nothing here does I/O. Times are POSIX seconds (``float``) passed in by callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum


class TokenFormat(StrEnum):
    """How a client's access tokens are issued."""

    JWT = "jwt"  #: RFC 9068 JWT, verifiable offline against the JWKS
    OPAQUE = "opaque"  #: random reference token, checked by introspection (RFC 7662)


class GrantType(StrEnum):
    """Grant types Bastion implements (OAuth 2.1: no implicit, no password)."""

    AUTHORIZATION_CODE = "authorization_code"
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"


@dataclass(frozen=True, slots=True)
class Client:
    """A registered OAuth client.

    ``secret_hash`` is a keyed hash of the secret (never the secret); ``None`` for public clients.
    After a rotation with an overlap, ``previous_secret_hash`` is the replaced secret's hash, still
    accepted until ``previous_secret_expires_at``.
    """

    client_id: str
    name: str
    public: bool
    grant_types: frozenset[str]
    scopes: frozenset[str]
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    audience: str | None = None
    token_format: TokenFormat = TokenFormat.JWT
    first_party: bool = False
    disabled: bool = False
    secret_hash: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    previous_secret_hash: str | None = None
    previous_secret_expires_at: float | None = None

    @property
    def confidential(self) -> bool:
        """RFC 6749 §2.1: a client capable of keeping its credentials confidential."""
        return not self.public


@dataclass(frozen=True, slots=True)
class User:
    """A person who signs in. ``password_hash`` is an argon2id PHC string."""

    user_id: str
    username: str
    password_hash: str
    email: str | None = None
    name: str | None = None
    roles: frozenset[str] = frozenset()
    disabled: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of scopes granted to users who hold it (RBAC)."""

    name: str
    scopes: frozenset[str]
    description: str = ""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A signing key's public record. The private key lives encrypted in storage.

    Lifecycle (derived from times, see :mod:`bastion.services.keys`): *pending* until
    ``activates_at`` (published, not used), *active* (the newest activated key for its algorithm
    signs), *retired* (a newer key signs; still published so tokens it signed verify), *expired*
    (every token it signed has expired; dropped from JWKS).
    """

    kid: str
    alg: str
    public_jwk: dict[str, str]
    created_at: float
    activates_at: float
    generation: int
    use: str = "sig"
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredAccessToken:
    """An opaque access token's record, looked up by the token's hash."""

    token_hash: str
    jti: str
    client_id: str
    subject: str
    scope: str
    audience: tuple[str, ...]
    issued_at: float
    expires_at: float
    family_id: str | None = None
    revoked_at: float | None = None
    claims: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """Claims of an access token, whatever its format (RFC 9068 §2.2, RFC 7662 §2.2)."""

    issuer: str
    subject: str
    client_id: str
    audience: tuple[str, ...]
    scope: str
    issued_at: int
    expires_at: int
    jti: str
    extra: dict[str, object] = field(default_factory=dict)

    def to_jwt_claims(self) -> dict[str, object]:
        """The RFC 9068 payload; a single audience is a string, several an array."""
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience[0] if len(self.audience) == 1 else list(self.audience),
            "exp": self.expires_at,
            "iat": self.issued_at,
            "jti": self.jti,
            "client_id": self.client_id,
        }
        if self.scope:
            claims["scope"] = self.scope
        claims.update(self.extra)
        return claims

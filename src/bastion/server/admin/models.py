"""The admin API's request and response bodies, as pydantic models.

They are the one source of both the validation and the OpenAPI document's schemas
(:mod:`bastion.server.admin.openapi`). Requests are strict: no unknown members
(``additionalProperties: false``), no coercion (``"1"`` is not ``1``), no control characters
in text. In the ``…Update`` models a member left out keeps its value; ``null`` is accepted only
where it clears one (``audience``, ``email``, ``name``).
"""

from __future__ import annotations

from typing import Annotated
from typing import Any
from typing import ClassVar
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field

#: Printable text without control characters (none reach storage: PostgreSQL refuses NUL).
_TEXT = r"^[^\x00-\x1f\x7f]*$"

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=_TEXT)]
Text = Annotated[str, Field(max_length=500, pattern=_TEXT)]
#: RFC 6749 §3.3: scope-token = 1*NQCHAR (%x21 / %x23-5B / %x5D-7E).
ScopeToken = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[!#-\[\]-~]+$")]
Uri = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^[!-~]+$")]
GrantType = Literal["authorization_code", "client_credentials", "refresh_token"]
TokenFormat = Literal["jwt", "opaque"]
#: RFC 6749 Appendix A.1: client-id = *VSCHAR (%x20-7E), at most 255 here.
ClientId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[ -~]+$")]
Username = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")]
RoleName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
Password = Annotated[str, Field(min_length=8, max_length=1024)]
Email = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^\s@]+@[^\s@]+$")]
#: RFC 3339 date-time in UTC.
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Request(BaseModel):
    """A request body: strict, closed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Patch(Request):
    """A partial update: members left out keep their value; ``null`` only for :attr:`NULLABLE`
    (checked by the reader of the body, which names the member)."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        schema = handler.resolve_ref_schema(schema)
        for name, prop in schema.get("properties", {}).items():
            prop.pop("default", None)
            if name not in cls.NULLABLE and "anyOf" in prop:
                kept = [s for s in prop.pop("anyOf") if s.get("type") != "null"]
                prop.update(kept[0])
        schema["minProperties"] = 1
        return schema


# -- requests -------------------------------------------------------------------------------------


class ClientCreate(Request):
    """A client to register."""

    name: Name
    public: bool = False
    grant_types: list[GrantType] = Field(default=["client_credentials"], min_length=1, max_length=3)
    scopes: list[ScopeToken] = Field(default=[], max_length=100)
    redirect_uris: list[Uri] = Field(default=[], max_length=20)
    post_logout_redirect_uris: list[Uri] = Field(default=[], max_length=20)
    audience: Uri | None = None
    token_format: TokenFormat = "jwt"
    first_party: bool = False
    client_id: ClientId | None = None


class ClientUpdate(Patch):
    """Changes to a client's registration."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"audience"})

    name: Name | None = None
    scopes: list[ScopeToken] | None = Field(default=None, max_length=100)
    redirect_uris: list[Uri] | None = Field(default=None, max_length=20)
    post_logout_redirect_uris: list[Uri] | None = Field(default=None, max_length=20)
    grant_types: list[GrantType] | None = Field(default=None, min_length=1, max_length=3)
    token_format: TokenFormat | None = None
    audience: Uri | None = None
    first_party: bool | None = None


class SecretRotation(Request):
    """How long the replaced secret keeps working."""

    overlap: int = Field(default=0, ge=0, le=30 * 86400, description="Seconds (at most 30 days).")


class UserCreate(Request):
    """A user to create."""

    username: Username
    password: Password
    roles: list[RoleName] = Field(default=[], max_length=50)
    email: Email | None = None
    name: Name | None = None


class UserUpdate(Patch):
    """Changes to a user."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"email", "name"})

    email: Email | None = None
    name: Name | None = None
    roles: list[RoleName] | None = Field(default=None, max_length=50)


class PasswordReset(Request):
    """A user's new password (every session of the user ends, every grant is revoked)."""

    password: Password


class RoleCreate(Request):
    """A role to create."""

    name: RoleName
    scopes: list[ScopeToken] = Field(min_length=1, max_length=100)
    description: Text = ""


class KeyRotation(Request):
    """Which algorithm's key to rotate, and how long the new key is published before it signs."""

    alg: Literal["ES256", "ES384", "RS256", "PS256", "EdDSA"] | None = None
    publish_delay: int | None = Field(default=None, ge=0, le=86400)


class BanCreate(Request):
    """An address or network to ban."""

    network: Annotated[str, Field(min_length=2, max_length=64, pattern=r"^[0-9A-Fa-f:./]+$")]
    duration: int = Field(ge=1, le=365 * 86400, description="Seconds (at most a year).")
    reason: Annotated[
        str, Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$")
    ]


# -- responses ------------------------------------------------------------------------------------


class Response(BaseModel):
    """A response body."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientOut(Response):
    """A registered client (never its secret)."""

    client_id: str
    name: str
    public: bool
    grant_types: list[str]
    scopes: list[str]
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    audience: str | None
    token_format: TokenFormat
    first_party: bool
    disabled: bool
    created_at: Time
    updated_at: Time
    previous_secret_valid_until: Time | None


class ClientSecretOut(Response):
    """A client with its new secret, shown this once."""

    client: ClientOut
    client_secret: str | None


class UserOut(Response):
    """A user (never the password hash)."""

    user_id: str
    username: str
    email: str | None
    name: str | None
    roles: list[str]
    disabled: bool
    created_at: Time
    updated_at: Time


class RoleOut(Response):
    """A role."""

    name: str
    scopes: list[str]
    description: str


class ConsentOut(Response):
    """Scopes a user allowed a client."""

    client_id: str
    scopes: list[str]
    granted_at: Time


class SessionOut(Response):
    """A live sign-in session."""

    sid: str
    created_at: Time
    expires_at: Time


class SessionsEnded(Response):
    """How many sessions ended."""

    ended: int


class KeyOut(Response):
    """A signing key (its public half)."""

    kid: str
    alg: str
    generation: int
    state: Literal["pending", "active", "retired", "expired", "revoked"]
    created_at: Time
    activates_at: Time
    revoked_at: Time | None
    public_jwk: dict[str, str]


class KeyRevoked(Response):
    """A revoked key and the key created to sign in its place (when it was signing)."""

    key: KeyOut
    replacement: KeyOut | None


class BanOut(Response):
    """A ban in force."""

    network: str
    reason: str
    source: Literal["auto", "manual"]
    kind: str | None
    since: Time
    until: Time
    repeat: int


class AuditEventOut(Response):
    """One audit event (``docs/audit.md``)."""

    id: int
    time: Time
    type: str
    outcome: Literal["success", "failure", "denied"]
    actor: str
    subject: str | None
    client: str | None
    address: str | None
    reason: str | None
    request_id: str | None
    details: dict[str, Any]


class Page(Response):
    """A page of a list; ``next_cursor`` fetches the next one (``null``: this is the last)."""

    next_cursor: str | None


class ClientPage(Page):
    items: list[ClientOut]


class UserPage(Page):
    items: list[UserOut]


class RolePage(Page):
    items: list[RoleOut]


class ConsentPage(Page):
    items: list[ConsentOut]


class SessionPage(Page):
    items: list[SessionOut]


class KeyPage(Page):
    items: list[KeyOut]


class BanPage(Page):
    items: list[BanOut]


class AuditPage(Page):
    items: list[AuditEventOut]


class ProblemOut(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, str]] | None = Field(
        default=None, description="Each invalid field and what is wrong with it (validation problems)."
    )

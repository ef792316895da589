"""The admin API's operations: one table, from which both the routes and the OpenAPI document
are made, so neither can name a path, method, body or answer the other lacks."""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Protocol

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.services.container import Services
from bastion.storage.ban_protocols import Ban

Handler = Callable[[Request], Awaitable[Response]]


class BanRegistry(Protocol):
    """The gateway's bans as ``bastion bans`` records them (:class:`bastion.gateway.bans.BanBook`)."""

    async def ban(self, ban: Ban) -> None:
        """Record and announce a ban."""

    async def lift(self, network: str, reason: str) -> Ban | None:
        """Lift a ban; the lifted one or ``None``."""

    async def active(self) -> list[Ban]:
        """The bans in force."""


@dataclass(frozen=True)
class AdminContext:
    """What the admin endpoints work with."""

    services: Services
    bans: BanRegistry
    #: Checks a network an operator wants to ban: its canonical form, or ``ValueError`` saying
    #: why it cannot be banned (not an address, or it holds a trusted proxy or exempt network).
    bannable: Callable[[str], str]
    #: The largest request body accepted.
    max_body: int


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    schema: dict[str, Any]
    description: str
    repeated: bool = False


@dataclass(frozen=True)
class Operation:
    """One method on one path."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    #: Status → response body model (``None``: no body).
    responses: dict[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    #: Whether the body may be left out (its model's defaults apply).
    body_optional: bool = False
    query: Sequence[Param] = field(default_factory=tuple)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")


PAGING = (
    Param("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "Items per page."),
    Param("cursor", {"type": "string", "maxLength": 512}, "The next_cursor of the previous page."),
)


def routes(operations: Sequence[Operation]) -> list[Route]:
    """One Starlette route per path, dispatching on the method (so a 405 lists every method
    the path allows in ``Allow``)."""
    by_path: dict[str, dict[str, Handler]] = {}
    for op in operations:
        by_path.setdefault(op.path, {})[op.method] = op.handler
    out = []
    for path, handlers in by_path.items():

        def dispatch(handlers: dict[str, Handler]) -> Handler:
            async def endpoint(request: Request) -> Response:
                method = "GET" if request.method == "HEAD" else request.method
                return await handlers[method](request)

            return endpoint

        out.append(Route(path, dispatch(handlers), methods=list(handlers)))
    return out

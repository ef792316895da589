"""Fixtures for the HTTP engine tests: a real upstream and a running gateway on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Callable
from typing import Any

import pytest

from bastion.gateway.contract import Decision
from bastion.gateway.contract import Forward
from bastion.gateway.contract import Outcome
from bastion.gateway.contract import RequestHead
from bastion.gateway.limits import EngineLimits
from bastion.gateway.server import GatewayServer
from bastion.gateway.upstream import UpstreamGroup

from .servers import Upstream


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        # The CLI runs the engine on uvloop; its transports differ in buffering and EOF handling.
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


class ForwardAll:
    """A handler that forwards everything to one group and records the outcomes."""

    def __init__(self, group: UpstreamGroup, **forward: Any) -> None:
        self.group = group
        self.forward = forward
        self.outcomes: list[Outcome] = []
        self.heads: list[RequestHead] = []

    def __call__(self, head: RequestHead) -> Decision:
        self.heads.append(head)
        return Forward(
            upstream=self.group,
            target=head.target,
            headers=list(head.headers),
            on_complete=self.outcomes.append,
            **self.forward,
        )


@pytest.fixture
async def gateways() -> AsyncIterator[list[GatewayServer]]:
    started: list[GatewayServer] = []
    yield started
    for gateway in started:
        await gateway.close(grace=0.5)


@pytest.fixture
async def groups() -> AsyncIterator[list[UpstreamGroup]]:
    made: list[UpstreamGroup] = []
    yield made
    for group in made:
        await group.aclose()


@pytest.fixture
def gateway_for(gateways: list[GatewayServer], groups: list[UpstreamGroup]) -> Callable[..., Any]:
    """``await gateway_for(upstream_targets, limits=..., **forward_options)`` → (server, handler)."""

    async def make(
        targets: list[str],
        *,
        limits: EngineLimits | None = None,
        group_options: dict[str, Any] | None = None,
        **forward: Any,
    ) -> tuple[GatewayServer, ForwardAll]:
        group = UpstreamGroup("test", targets, **(group_options or {}))
        groups.append(group)
        handler = ForwardAll(group, **forward)
        gateway = GatewayServer(handler, limits=limits or EngineLimits())
        await gateway.start("127.0.0.1", 0)
        gateways.append(gateway)
        return gateway, handler

    return make

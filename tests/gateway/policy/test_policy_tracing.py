"""W3C Trace Context at the gateway: the strict parse and format (pure), and what a real
upstream receives and the access log records."""

# ruff: noqa: F811 - `stack` is the fixture imported from test_policy_e2e
from __future__ import annotations

import orjson
import pytest

from bastion.gateway.tracing import gateway_traceparent
from bastion.gateway.tracing import trace_id
from bastion.tracecontext import valid_traceparent

from .test_policy_e2e import Stack
from .test_policy_e2e import get
from .test_policy_e2e import raw
from .test_policy_e2e import stack  # noqa: F401 - the fixture, used by name below

#: The example of W3C Trace Context §3.2.2.
VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

INVALID = [
    b"",
    b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a version other than 00
    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # the forbidden version
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace-id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent-id
    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper-case hex
    b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # 31-digit trace-id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  # 15-digit parent-id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # 1-digit flags
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",  # non-hex flags
    VALID + b"-extra",  # version 00 is exactly 55 characters
    VALID + b"\n",
    b" " + VALID,
    b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
]


def test_the_specification_example_is_valid() -> None:
    assert valid_traceparent(VALID)


@pytest.mark.parametrize("value", INVALID)
def test_invalid_traceparents_are_refused(value: bytes) -> None:
    assert not valid_traceparent(value)
    made, continued = gateway_traceparent(value)
    assert continued is False
    assert made[3:35] != VALID[3:35]


def test_a_valid_traceparent_is_continued_with_a_new_parent_id() -> None:
    made, continued = gateway_traceparent(VALID)
    assert continued is True
    assert valid_traceparent(made)
    assert made[:36] == VALID[:36]  # version and trace-id
    assert made[36:52] != VALID[36:52]  # the gateway's span
    assert made[52:] == b"-01"  # the caller's flags
    assert trace_id(made) == "4bf92f3577b34da6a3ce929d0e0e4736"
    unsampled, _ = gateway_traceparent(VALID[:-2] + b"00")
    assert unsampled.endswith(b"-00")


def test_without_one_a_new_sampled_trace_starts() -> None:
    first, continued = gateway_traceparent(None)
    second, _ = gateway_traceparent(None)
    assert continued is False
    assert valid_traceparent(first)
    assert first.endswith(b"-01")
    assert first[3:35] != second[3:35]


def access_lines(stack: Stack) -> list[dict[str, object]]:
    stack.gateway.access_log.flush()
    return [orjson.loads(line) for line in stack.log.getvalue().splitlines()]


@pytest.mark.anyio
async def test_a_valid_traceparent_reaches_the_upstream_continued_with_its_tracestate(stack: Stack) -> None:
    status, _, _ = await raw(
        stack.port,
        get(
            b"/public/a",
            b"traceparent: " + VALID,
            b"tracestate: congo=t61rcWkgMzE",
            b"tracestate: rojo=00f067",
        ),
    )
    assert status == 200
    [sent] = stack.public.header(0, b"traceparent")
    assert sent[:36] == VALID[:36]
    assert sent[36:52] != VALID[36:52]
    assert valid_traceparent(sent)
    assert stack.public.header(0, b"tracestate") == [b"congo=t61rcWkgMzE,rojo=00f067"]
    [line] = access_lines(stack)
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        [b"traceparent: " + INVALID[3], b"tracestate: congo=t61rcWkgMzE"],
        [b"traceparent: " + VALID, b"traceparent: " + VALID, b"tracestate: congo=t61rcWkgMzE"],
        [b"tracestate: congo=t61rcWkgMzE"],
    ],
    ids=["invalid", "repeated", "absent"],
)
async def test_an_invalid_or_absent_traceparent_is_replaced_and_tracestate_dropped(
    stack: Stack, headers: list[bytes]
) -> None:
    status, _, _ = await raw(stack.port, get(b"/public/a", *headers))
    assert status == 200
    [sent] = stack.public.header(0, b"traceparent")
    assert valid_traceparent(sent)
    assert sent[3:35] not in (VALID[3:35], INVALID[3][3:35])
    assert stack.public.header(0, b"tracestate") == []
    [line] = access_lines(stack)
    assert line["trace_id"] == sent[3:35].decode()


@pytest.mark.anyio
async def test_a_refused_request_logs_its_trace_id_too(stack: Stack) -> None:
    status, _, _ = await raw(stack.port, get(b"/catalog/items", b"traceparent: " + VALID))
    assert status == 401
    assert stack.catalog.seen == []
    [line] = access_lines(stack)
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"

"""``/keys``, ``/bans`` and ``/audit/events``: signing keys, the gateway's bans, the audit trail."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from bastion.ops.audit_events import EVENT_TYPES
from bastion.protocol.models import SigningKey
from bastion.server.admin.http import decode_cursor
from bastion.server.admin.http import encode_cursor
from bastion.server.admin.http import json_response
from bastion.server.admin.http import no_content
from bastion.server.admin.http import paginate
from bastion.server.admin.http import query_int
from bastion.server.admin.http import read_json
from bastion.server.admin.http import when
from bastion.server.admin.models import AuditEventOut
from bastion.server.admin.models import AuditPage
from bastion.server.admin.models import BanCreate
from bastion.server.admin.models import BanOut
from bastion.server.admin.models import BanPage
from bastion.server.admin.models import KeyOut
from bastion.server.admin.models import KeyPage
from bastion.server.admin.models import KeyRevoked
from bastion.server.admin.models import KeyRotation
from bastion.server.admin.problems import Problem
from bastion.server.admin.problems import invalid
from bastion.server.admin.problems import refused
from bastion.server.admin.routing import PAGING
from bastion.server.admin.routing import AdminContext
from bastion.server.admin.routing import Operation
from bastion.server.admin.routing import Param
from bastion.storage.audit_protocols import AuditQuery
from bastion.storage.audit_protocols import parse_rfc3339
from bastion.storage.ban_protocols import Ban
from bastion.storage.protocols import NotFound


def key_out(ctx: AdminContext, key: SigningKey) -> KeyOut:
    """The API's view of a key (its public half only)."""
    return KeyOut(
        kid=key.kid,
        alg=key.alg,
        generation=key.generation,
        state=ctx.services.keys.state(key).value,
        created_at=when(key.created_at) or "",
        activates_at=when(key.activates_at) or "",
        revoked_at=when(key.revoked_at),
        public_jwk=dict(key.public_jwk),
    )


def ban_out(ban: Ban) -> BanOut:
    """The API's view of a ban."""
    return BanOut(
        network=ban.network,
        reason=ban.reason,
        source=ban.source,
        kind=ban.kind,
        since=when(ban.since) or "",
        until=when(ban.until) or "",
        repeat=ban.repeat,
    )


def _time(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return parse_rfc3339(raw)
    except (ValueError, OverflowError):
        raise invalid(name, "expected an RFC 3339 time such as 2025-01-31T12:00:00Z") from None


def _types(request: Request) -> tuple[str, ...]:
    wanted = tuple(request.query_params.getlist("type"))
    for value in wanted:
        known = (
            any(name.startswith(value[:-1]) for name in EVENT_TYPES)
            if value.endswith("*")
            else value in EVENT_TYPES
        )
        if not known:
            raise invalid("type", f"{value[:64]!r} matches no event type")
    return wanted


def _text(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and (not raw or len(raw) > 255 or not raw.isprintable()):
        raise invalid(name, "expected 1 to 255 printable characters")
    return raw


def operations(ctx: AdminContext) -> list[Operation]:
    """The key, ban and audit endpoints over ``ctx``."""

    async def list_keys(request: Request) -> Response:
        await ctx.services.keys.load()
        found = sorted(ctx.services.keys.all_keys(), key=lambda k: (k.created_at, k.kid))
        page, cursor = paginate(request, found, lambda k: [k.created_at, k.kid])
        return json_response(KeyPage(items=[key_out(ctx, k) for k in page], next_cursor=cursor))

    async def rotate_key(request: Request) -> Response:
        body = await read_json(request, KeyRotation, ctx.max_body, optional=True)
        targets = ctx.services.keys.policy.algorithms if body.alg is None else (body.alg,)
        if body.alg is not None and body.alg not in ctx.services.keys.policy.algorithms:
            raise refused(
                f"this server signs with {', '.join(ctx.services.keys.policy.algorithms)}, not {body.alg}"
            )
        created = [await ctx.services.keys.rotate(alg, publish_delay=body.publish_delay) for alg in targets]
        return json_response(KeyPage(items=[key_out(ctx, k) for k in created], next_cursor=None), 201)

    async def revoke_key(request: Request) -> Response:
        kid = str(request.path_params["kid"])
        if not 1 <= len(kid) <= 128 or not kid.isprintable():
            raise Problem(404, "no such key")
        try:
            done = await ctx.services.keys.revoke(kid)
        except NotFound:
            raise Problem(404, "no such key") from None
        replacement = None if done.replacement is None else key_out(ctx, done.replacement)
        return json_response(KeyRevoked(key=key_out(ctx, done.key), replacement=replacement))

    async def list_bans(request: Request) -> Response:
        found = sorted(await ctx.bans.active(), key=lambda b: (b.since, b.network))
        page, cursor = paginate(request, found, lambda b: [b.since, b.network])
        return json_response(BanPage(items=[ban_out(b) for b in page], next_cursor=cursor))

    async def add_ban(request: Request) -> Response:
        body = await read_json(request, BanCreate, ctx.max_body)
        try:
            network = ctx.bannable(body.network)
        except ValueError as exc:
            raise refused(str(exc)) from None
        now = time.time()
        ban = Ban(network, body.reason.strip(), "manual", now, now + body.duration)
        await ctx.bans.ban(ban)
        return json_response(ban_out(ban), 201)

    async def remove_ban(request: Request) -> Response:
        try:
            network = ctx.bannable(str(request.path_params["network"]))
        except ValueError:
            raise Problem(404, "no ban of this network is in force") from None
        if await ctx.bans.lift(network, "lifted through the admin API") is None:
            raise Problem(404, "no ban of this network is in force")
        return no_content()

    async def search_audit(request: Request) -> Response:
        limit = query_int(request, "limit", 100, 1, 1000)
        after = decode_cursor(request.query_params.get("cursor"))
        if after is not None and not (
            isinstance(after, list)
            and len(after) == 2
            and isinstance(after[0], (int, float))
            and isinstance(after[1], int)
        ):
            raise invalid("cursor", "not a cursor this API gave")
        query = AuditQuery(
            since=_time(request, "since"),
            until=_time(request, "until"),
            types=_types(request),
            subject=_text(request, "subject"),
            client=_text(request, "client"),
            limit=limit,
            after=None if after is None else (float(after[0]), int(after[1])),
        )
        found = await ctx.services.stores.audit.search(query)
        items = [
            AuditEventOut(
                id=f.id,
                time=f.event.as_dict()["time"],
                type=f.event.type,
                outcome=f.event.outcome,
                actor=f.event.actor,
                subject=f.event.subject,
                client=f.event.client,
                address=f.event.address,
                reason=f.event.reason,
                request_id=f.event.request_id,
                details=dict(f.event.details),
            )
            for f in found
        ]
        cursor = encode_cursor([found[-1].event.time, found[-1].id]) if len(found) == limit else None
        return json_response(AuditPage(items=items, next_cursor=cursor))

    audit_query = (
        Param("since", {"type": "string", "format": "date-time"}, "From this time on (RFC 3339)."),
        Param("until", {"type": "string", "format": "date-time"}, "Before this time (RFC 3339)."),
        Param(
            "type",
            {"type": "array", "items": {"type": "string", "maxLength": 64}},
            "An event type (login.failed) or a family (login.*); repeat for several.",
            repeated=True,
        ),
        Param(
            "subject", {"type": "string", "minLength": 1, "maxLength": 255}, "Only events about this subject."
        ),
        Param(
            "client", {"type": "string", "minLength": 1, "maxLength": 255}, "Only events of this client id."
        ),
        Param(
            "limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Events per page."
        ),
        PAGING[1],
    )
    return [
        Operation("GET", "/keys", list_keys, "List signing keys with their states.", "keys", {200: KeyPage}, query=PAGING),
        Operation(
            "POST", "/keys/rotate", rotate_key,
            "Create the next key of an algorithm (default: every one this server signs with).", "keys",
            {201: KeyPage}, body=KeyRotation, body_optional=True,
        ),
        Operation(
            "POST", "/keys/{kid}/revoke", revoke_key,
            "Withdraw a key at once (a replacement signs when it was the active one).", "keys", {200: KeyRevoked},
        ),
        Operation("GET", "/bans", list_bans, "List the bans in force.", "bans", {200: BanPage}, query=PAGING),
        Operation(
            "POST", "/bans", add_ban, "Ban an address or network at every gateway.", "bans", {201: BanOut},
            body=BanCreate,
        ),
        Operation(
            "DELETE", "/bans/{network:path}", remove_ban, "Lift the ban of an address or network (CIDR).", "bans",
            {204: None},
        ),
        Operation(
            "GET", "/audit/events", search_audit,
            "Search the audit trail, oldest first (the filters of `bastion audit search`).", "audit",
            {200: AuditPage}, query=audit_query,
        ),
    ]  # fmt: skip

"""``/users`` and ``/roles``: people, their roles, consents and sign-in sessions."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from bastion.protocol.models import Role
from bastion.protocol.models import User
from bastion.server.admin.http import json_response
from bastion.server.admin.http import no_content
from bastion.server.admin.http import paginate
from bastion.server.admin.http import read_json
from bastion.server.admin.http import when
from bastion.server.admin.models import ConsentOut
from bastion.server.admin.models import ConsentPage
from bastion.server.admin.models import PasswordReset
from bastion.server.admin.models import RoleCreate
from bastion.server.admin.models import RoleOut
from bastion.server.admin.models import RolePage
from bastion.server.admin.models import SessionOut
from bastion.server.admin.models import SessionPage
from bastion.server.admin.models import SessionsEnded
from bastion.server.admin.models import UserCreate
from bastion.server.admin.models import UserOut
from bastion.server.admin.models import UserPage
from bastion.server.admin.models import UserUpdate
from bastion.server.admin.problems import Problem
from bastion.server.admin.problems import refused
from bastion.server.admin.routing import PAGING
from bastion.server.admin.routing import AdminContext
from bastion.server.admin.routing import Operation
from bastion.services import consent
from bastion.services import sessions
from bastion.services import users
from bastion.services.clients import is_client_id

#: A session id as sign-in makes them (URL-safe base64).
_SID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ROLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def user_out(user: User) -> UserOut:
    """The API's view of a user (never the password hash)."""
    return UserOut(
        user_id=user.user_id,
        username=user.username,
        email=user.email,
        name=user.name,
        roles=sorted(user.roles),
        disabled=user.disabled,
        created_at=when(user.created_at) or "",
        updated_at=when(user.updated_at) or "",
    )


def role_out(role: Role) -> RoleOut:
    """The API's view of a role."""
    return RoleOut(name=role.name, scopes=sorted(role.scopes), description=role.description)


def people_operations(ctx: AdminContext) -> list[Operation]:
    """The user and role endpoints over ``ctx``."""

    async def _user(request: Request) -> User:
        username = str(request.path_params["username"])
        user = await users.get_user(ctx.services, username) if users.is_username(username) else None
        if user is None:
            raise Problem(404, "no such user")
        return user

    async def list_users(request: Request) -> Response:
        found = await users.list_users(ctx.services)
        page, cursor = paginate(request, found, lambda u: [u.created_at, u.user_id])
        return json_response(UserPage(items=[user_out(u) for u in page], next_cursor=cursor))

    async def create_user(request: Request) -> Response:
        body = await read_json(request, UserCreate, ctx.max_body)
        if await users.get_user(ctx.services, body.username) is not None:
            raise refused(f"the username {body.username!r} is taken", 409)
        try:
            user = await users.create_user(
                ctx.services, body.username, body.password, roles=body.roles, email=body.email, name=body.name
            )
        except users.UserError as exc:
            raise refused(str(exc)) from None
        return json_response(user_out(user), 201)

    async def get_user(request: Request) -> Response:
        return json_response(user_out(await _user(request)))

    async def update_user(request: Request) -> Response:
        user = await _user(request)
        body = await read_json(request, UserUpdate, ctx.max_body)
        try:
            changed = await users.update_user(
                ctx.services, user.username, **body.model_dump(exclude_unset=True)
            )
        except users.UserError as exc:
            raise refused(str(exc)) from None
        return json_response(user_out(changed))

    async def delete_user(request: Request) -> Response:
        user = await _user(request)
        await users.delete_user(ctx.services, user.username)
        return no_content()

    async def _set_disabled(request: Request, disabled: bool) -> Response:
        user = await _user(request)
        return json_response(user_out(await users.set_disabled(ctx.services, user.username, disabled)))

    async def disable_user(request: Request) -> Response:
        return await _set_disabled(request, True)

    async def enable_user(request: Request) -> Response:
        return await _set_disabled(request, False)

    async def reset_password(request: Request) -> Response:
        user = await _user(request)
        body = await read_json(request, PasswordReset, ctx.max_body)
        try:
            await users.set_password(ctx.services, user.username, body.password)
        except users.UserError as exc:
            raise refused(str(exc)) from None
        return no_content()

    async def list_consents(request: Request) -> Response:
        user = await _user(request)
        found = await consent.list_for_user(ctx.services, user)
        page, cursor = paginate(request, found, lambda c: [c.client_id])
        items = [
            ConsentOut(client_id=c.client_id, scopes=sorted(c.scopes), granted_at=when(c.granted_at) or "")
            for c in page
        ]
        return json_response(ConsentPage(items=items, next_cursor=cursor))

    async def revoke_consent(request: Request) -> Response:
        user = await _user(request)
        client_id = str(request.path_params["client_id"])
        if not is_client_id(client_id) or not await consent.revoke(ctx.services, user, client_id):
            raise Problem(404, "no consent of this user to this client")
        return no_content()

    async def list_sessions(request: Request) -> Response:
        user = await _user(request)
        found = await sessions.for_user(ctx.services, user.user_id)
        page, cursor = paginate(request, found, lambda s: [s.created_at, s.sid])
        items = [
            SessionOut(sid=s.sid, created_at=when(s.created_at) or "", expires_at=when(s.expires_at) or "")
            for s in page
        ]
        return json_response(SessionPage(items=items, next_cursor=cursor))

    async def revoke_session(request: Request) -> Response:
        user = await _user(request)
        sid = str(request.path_params["sid"])
        if not _SID_RE.fullmatch(sid) or not await sessions.revoke(ctx.services, user.user_id, sid):
            raise Problem(404, "no such session of this user")
        return no_content()

    async def revoke_sessions(request: Request) -> Response:
        user = await _user(request)
        return json_response(SessionsEnded(ended=await sessions.end_for_user(ctx.services, user.user_id)))

    async def list_roles(request: Request) -> Response:
        found = await users.list_roles(ctx.services)
        page, cursor = paginate(request, found, lambda r: [r.name])
        return json_response(RolePage(items=[role_out(r) for r in page], next_cursor=cursor))

    async def create_role(request: Request) -> Response:
        body = await read_json(request, RoleCreate, ctx.max_body)
        if await services_role_exists(body.name):
            raise refused(f"the role {body.name!r} exists", 409)
        try:
            role = await users.create_role(ctx.services, body.name, body.scopes, body.description)
        except users.UserError as exc:
            raise refused(str(exc)) from None
        return json_response(role_out(role), 201)

    async def services_role_exists(name: str) -> bool:
        return bool(await users.people(ctx.services).roles.get_roles([name]))

    async def delete_role(request: Request) -> Response:
        name = str(request.path_params["name"])
        if not _ROLE_RE.fullmatch(name) or not await users.delete_role(ctx.services, name):
            raise Problem(404, "no such role")
        return no_content()

    one = "/users/{username}"
    tag = "users"
    return [
        Operation("GET", "/users", list_users, "List users, oldest first.", tag, {200: UserPage}, query=PAGING),
        Operation("POST", "/users", create_user, "Create a user.", tag, {201: UserOut, 409: None}, body=UserCreate),
        Operation("GET", one, get_user, "Read a user.", tag, {200: UserOut}),
        Operation(
            "PATCH", one, update_user, "Change a user's e-mail address, display name or roles.", tag,
            {200: UserOut}, body=UserUpdate,
        ),
        Operation("DELETE", one, delete_user, "Delete a user (sessions end, grants are revoked).", tag, {204: None}),
        Operation(
            "POST", one + "/disable", disable_user, "Disable a user (sessions end, grants are revoked).", tag,
            {200: UserOut},
        ),
        Operation("POST", one + "/enable", enable_user, "Enable a disabled user.", tag, {200: UserOut}),
        Operation(
            "POST", one + "/password", reset_password,
            "Set a new password (sessions end, grants are revoked).", tag, {204: None}, body=PasswordReset,
        ),
        Operation(
            "GET", one + "/consents", list_consents, "List the user's consents, by client.", "consents",
            {200: ConsentPage}, query=PAGING,
        ),
        Operation(
            "DELETE", one + "/consents/{client_id}", revoke_consent,
            "Revoke a consent and the client's refresh tokens for the user.", "consents", {204: None},
        ),
        Operation(
            "GET", one + "/sessions", list_sessions, "List the user's live sign-in sessions.", "sessions",
            {200: SessionPage}, query=PAGING,
        ),
        Operation(
            "DELETE", one + "/sessions", revoke_sessions, "End every sign-in session of the user.", "sessions",
            {200: SessionsEnded},
        ),
        Operation(
            "DELETE", one + "/sessions/{sid}", revoke_session, "End one sign-in session.", "sessions", {204: None}
        ),
        Operation("GET", "/roles", list_roles, "List roles, by name.", "roles", {200: RolePage}, query=PAGING),
        Operation("POST", "/roles", create_role, "Create a role.", "roles", {201: RoleOut, 409: None}, body=RoleCreate),
        Operation("DELETE", "/roles/{name}", delete_role, "Delete a role (its users lose it).", "roles", {204: None}),
    ]  # fmt: skip

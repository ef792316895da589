"""The guard: services validate every token themselves and authorize per object.

Framework adapters live in :mod:`bastion.guard.starlette` (Starlette and FastAPI) and
:mod:`bastion.guard.flask`; this module holds what every service uses whatever its framework:
the object-level policies and :func:`authorize`. It imports no web framework.
"""

from __future__ import annotations

from bastion.guard._core import InvalidRequest
from bastion.guard._core import MissingToken
from bastion.guard.policy import Forbidden
from bastion.guard.policy import NotFound
from bastion.guard.policy import Policy
from bastion.guard.policy import Refused
from bastion.guard.policy import all_of
from bastion.guard.policy import any_of
from bastion.guard.policy import authorize
from bastion.guard.policy import owner
from bastion.guard.policy import role
from bastion.guard.policy import scope
from bastion.tokens import Principal

__all__ = [
    "Forbidden",
    "InvalidRequest",
    "MissingToken",
    "NotFound",
    "Policy",
    "Principal",
    "Refused",
    "all_of",
    "any_of",
    "authorize",
    "owner",
    "role",
    "scope",
]

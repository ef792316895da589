"""Bastion: API security end to end.

An OAuth 2.1 / OpenID Connect authorization server, an API gateway, a backend-for-frontend and
a token-validation library for services, in one package.
"""

from __future__ import annotations

__version__ = "0.1.0"

"""TLS termination for the gateway's front."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["make_server_ssl_context"]


def make_server_ssl_context(
    cert: str | Path, key: str | Path, *, password: str | None = None
) -> ssl.SSLContext:
    """A server context with modern defaults: TLS 1.2+, ALPN ``http/1.1``, no compression.

    Args:
        cert: path of the PEM certificate chain (leaf first).
        key: path of the PEM private key.
        password: the key's password, if it is encrypted.

    Returns:
        The context to pass as ``GatewayServer(..., ssl=...)``.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the certificate or key is invalid, or they do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(str(cert), str(key), password=password)
    return context

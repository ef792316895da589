"""Strict request-target handling: one canonical path, decided before routing and authorization.

Path confusion is the most common way past an API gateway: the gateway authorizes one reading of
the path and the upstream acts on another (Envoy CVE-2019-9901 dot segments and CVE-2021-29492
``%2F``; Kong and APISIX ``..;/`` and encoded-slash bypasses; Traefik CVE-2024-45410 hop-by-hop
and path rewrites). The rule here is that every target whose meaning could differ between two
reasonable parsers is refused with 400, and everything else is reduced to one canonical form
that is both authorized and forwarded.

Rules (RFC 3986 §3.3 ``path-abempty``, RFC 9112 §3.2 request-target):

* Only origin-form (RFC 9112 §3.2.1) is accepted: absolute-form (``http://h/p``), authority-form
  (``h:443``) and asterisk-form (``*``) are refused.
* The path must start with ``/``; raw bytes outside ``pchar`` (controls, space, ``\\``, ``"``,
  ``<``, ``>``, ``^``, `````, ``{``, ``|``, ``}``, ``[``, ``]``, any byte ≥ 0x7F) are refused,
  as are ``;`` (matrix parameters, read by Tomcat and Jetty) and ``#``.
* Percent-escapes of unreserved characters (RFC 3986 §2.3: ``ALPHA DIGIT - . _ ~``) are decoded,
  as §6.2.2.2 says is equivalent; every other escape is kept with upper-case hex (§6.2.2.1),
  except that escapes which would change the path's structure or are never legitimate are
  refused: ``%2F`` (``/``), ``%5C`` (``\\``), ``%3B`` (``;``), ``%23`` (``#``) and ``%3F``
  (``?``: an upstream that decodes before splitting would see a query or fragment in the
  path), ``%00``-``%1F`` and ``%7F``
  (controls), and ``%25`` followed by two hex digits (double encoding), also when those digits
  were themselves escaped (``%25%32%66``: triple encoding). Nothing is decoded twice, and the
  canonical path is a fixed point: parsing it again changes nothing.
* Escaped non-ASCII bytes must be UTF-8 (overlong forms like ``%C0%AF`` are refused) and must
  not spell characters a lenient upstream reads as ASCII (fullwidth ``／``, the Kelvin sign) or
  drops (zero-width and format characters); see :func:`_check_unicode`.
* After decoding, dot segments (``.``, ``..``, including ``%2e`` forms) and empty segments
  (``//``) are refused; a single trailing ``/`` is kept, since it is meaningful to many servers.
* The query is passed through byte for byte, but must not hold controls, space, ``#`` or bytes
  ≥ 0x7F.

This module is pure: bytes in, a :class:`RequestTarget` or :class:`PathError` out.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

__all__ = ["PathError", "RequestTarget", "parse_target"]

# RFC 3986 §3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@", minus ";".
_PCHAR_NO_PCT: Final = rb"A-Za-z0-9\-._~!$&'()*+,=:@"
_SIMPLE_PATH_RE: Final = re.compile(rb"^(?:/[" + _PCHAR_NO_PCT + rb"]+)*/?$")
_PATH_CHARS_RE: Final = re.compile(rb"^[" + _PCHAR_NO_PCT + rb"%/]*$")
_DOT_SEGMENT_RE: Final = re.compile(r"/\.\.?(?:/|$)")
_BAD_QUERY_RE: Final = re.compile(rb"[\x00-\x20#\x7f-\xff]")
_ESCAPED_ESCAPE_RE: Final = re.compile(r"%25[0-9A-Fa-f]{2}")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Escapes refused outright: structure-changing (``/ \\ ; # ?``), the escape character itself when
#: it would start another escape (checked separately), and controls.
_REFUSED_ESCAPES: Final = frozenset([0x2F, 0x5C, 0x3B, 0x23, 0x3F, 0x7F, *range(0x20)])
_NON_ASCII_ESCAPE_RE: Final = re.compile(r"%[89A-F][0-9A-F]")
#: Unicode categories never legitimate in a path: controls, format characters (zero-width space,
#: bidi overrides, soft hyphen), separators, private use, surrogates, unassigned.
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
#: Look-alikes of ``/`` and ``\`` that NFKC keeps but "best fit" code-page conversions map to
#: the ASCII character (the WorstFit attacks on Windows upstreams).
_SLASH_LOOKALIKES: Final = frozenset("\u2215\u2044\u29f8\u2216\u29f9")


class PathError(ValueError):
    """The request target is refused (HTTP 400). ``reason`` is a short, loggable code."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RequestTarget:
    """A validated origin-form target."""

    #: The canonical path: ASCII, starts with ``/``, unreserved escapes decoded, other escapes
    #: upper-case, no dot or empty segments.
    path: str
    #: The raw query without the ``?``, or ``None`` when the target had no ``?``.
    query: str | None

    def with_path(self, path: str) -> bytes:
        """The origin-form target with ``path`` replacing this one's path, query unchanged."""
        if self.query is None:
            return path.encode("ascii")
        return (path + "?" + self.query).encode("ascii")


def parse_target(target: bytes) -> RequestTarget:
    """Validate an HTTP/1.1 request-target and return its canonical form.

    Args:
        target: The request-target bytes exactly as received on the request line.

    Returns:
        The canonical path and the untouched query.

    Raises:
        PathError: for any form listed in the module docstring.
    """
    if not target.startswith(b"/"):
        if target == b"*":
            raise PathError("asterisk_form")
        if b"://" in target[:16]:
            raise PathError("absolute_form")
        raise PathError("not_origin_form")
    raw_path, sep, raw_query = target.partition(b"?")
    query: str | None = None
    if sep:
        if _BAD_QUERY_RE.search(raw_query):
            raise PathError("bad_query")
        query = raw_query.decode("ascii")
    if _SIMPLE_PATH_RE.match(raw_path):
        # Fast path: no escapes, no empty segments; only dot segments left to check.
        path = raw_path.decode("ascii")
        if "/." in path and _DOT_SEGMENT_RE.search(path):
            raise PathError("dot_segment")
        return RequestTarget(path, query)
    return RequestTarget(_canonical_path(raw_path), query)


def _canonical_path(raw: bytes) -> str:
    if not _PATH_CHARS_RE.match(raw):
        if b";" in raw:
            raise PathError("matrix_parameter")
        if b"\\" in raw:
            raise PathError("backslash")
        if b"#" in raw:
            raise PathError("fragment")
        raise PathError("bad_path_byte")
    out = bytearray()
    i = 0
    size = len(raw)
    while i < size:
        byte = raw[i]
        if byte != 0x25:  # '%'
            out.append(byte)
            i += 1
            continue
        if i + 2 >= size:
            raise PathError("bad_escape")
        high, low = raw[i + 1], raw[i + 2]
        if high not in _HEX or low not in _HEX:
            raise PathError("bad_escape")
        value = int(raw[i + 1 : i + 3], 16)
        if value in _UNRESERVED:
            out.append(value)
        elif value in _REFUSED_ESCAPES:
            raise PathError("encoded_slash" if value in (0x2F, 0x5C) else "refused_escape")
        elif value == 0x25:
            nxt = raw[i + 3 : i + 5]
            if len(nxt) == 2 and nxt[0] in _HEX and nxt[1] in _HEX:
                raise PathError("double_encoding")
            out += b"%25"
        else:
            out += b"%%%02X" % value
        i += 3
    path = out.decode("ascii")
    if "%25" in path and _ESCAPED_ESCAPE_RE.search(path):
        # ``%25%32%66`` decodes (unreserved escapes only) to ``%252f``: the escape we refused
        # above, assembled by our own decoding. An upstream that decodes twice would read ``/``.
        raise PathError("double_encoding")
    if _NON_ASCII_ESCAPE_RE.search(path):
        _check_unicode(path)
    if "//" in path:
        raise PathError("empty_segment")
    if _DOT_SEGMENT_RE.search(path):
        raise PathError("dot_segment")
    return path


def _check_unicode(path: str) -> None:
    """Refuse escaped bytes that are not UTF-8, or that spell a character a lenient upstream
    would read as ASCII.

    * Invalid UTF-8 (``bad_utf8``): overlong forms such as ``%C0%AF`` for ``/`` and ``%C0%AE``
      for ``.`` (IIS, CVE-2000-0884), surrogates, stray continuation bytes, latin-1 bytes.
    * ``confusable``: characters whose NFKC form or case mapping contains ASCII (fullwidth
      ``%EF%BC%8F`` is ``/``, ``%EF%BD%81`` is ``a``, the Kelvin sign lower-cases to ``k``), slash look-alikes,
      and invisible or space characters (``%E2%80%8B`` zero-width space), which upstreams
      normalising Unicode or stripping them would turn into a different, routable path.
    """
    try:
        text = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise PathError("bad_utf8") from None
    for char in text:
        if char < "\x80":
            continue
        if (
            unicodedata.category(char) in _REFUSED_CATEGORIES
            or char in _SLASH_LOOKALIKES
            or not _non_ascii(unicodedata.normalize("NFKC", char))
            or _ascii_case_of(char)
        ):
            raise PathError("confusable")


def _ascii_case_of(char: str) -> bool:
    # Simple (one-to-one) case mappings only, which case-insensitive routers use: the dotless
    # ``ı`` upper-cases to ``I``; ``ß`` to ``SS`` is a full mapping and stays allowed.
    return any(len(mapped) == 1 and mapped < "\x80" for mapped in (char.lower(), char.upper()))


def _non_ascii(text: str) -> bool:
    return all(c >= "\x80" for c in text)

"""Path confusion attacks: the gateway authorizes one path and the upstream must see exactly it.

Two levels. The pure rules (:func:`bastion.gateway.paths.parse_target`, the route table) are
checked directly, with a property test over an alphabet of the escapes path fuzzers use. The
whole gateway is checked over sockets against a recording upstream, with an oracle: for every
attack target the gateway either refuses it (400, nothing forwarded) or forwards the canonical
path byte for byte, and *no lenient reading* of what the upstream received (decoding once more,
overlong UTF-8, Unicode NFKC, case folding, ``\\`` as ``/``, matrix parameters, dot segments)
names a protected route that the request was not authorized for.

Sources: Envoy CVE-2019-9901 (dot segments) and CVE-2021-29492 (``%2F``), Kong and APISIX
``..;/`` and encoded-slash bypasses, Traefik and Spring path-prefix confusions, IIS overlong UTF-8
(CVE-2000-0884), double decoding (CVE-2001-0333), Express's case-insensitive router.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass

import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bastion.gateway.paths import PathError
from bastion.gateway.paths import parse_target
from bastion.gateway.routing import Route
from bastion.gateway.routing import RouteTable
from bastion.gateway.settings import RouteSettings
from tests.conformance.gw_attack import Stack
from tests.conformance.gw_attack import get
from tests.conformance.gw_attack import stack

__all__ = ["stack"]

PROTECTED = ("/admin", "/catalog")

# -- a lenient upstream's readings of a path -------------------------------------------------------

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def _unquote(raw: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _lenient_utf8(raw: bytes) -> str:
    """Decode UTF-8 the way broken decoders did: overlong forms accepted, invalid bytes as-is."""
    out = []
    i = 0
    while i < len(raw):
        byte = raw[i]
        if 0xC0 <= byte < 0xE0 and i + 1 < len(raw) and raw[i + 1] & 0xC0 == 0x80:
            out.append(chr(((byte & 0x1F) << 6) | (raw[i + 1] & 0x3F)))
            i += 2
        elif 0xE0 <= byte < 0xF0 and i + 2 < len(raw) and raw[i + 1] & raw[i + 2] & 0xC0 == 0x80:
            out.append(chr(((byte & 0x0F) << 12) | ((raw[i + 1] & 0x3F) << 6) | (raw[i + 2] & 0x3F)))
            i += 3
        else:
            out.append(chr(byte))
            i += 1
    return "".join(out)


def readings(target: bytes) -> set[str]:
    """Paths a lenient upstream might act on when it receives ``target``."""
    raw = target.split(b"?", 1)[0]
    decoded = {raw}
    for _ in range(3):  # double and triple decoding
        decoded |= {_unquote(item) for item in decoded}
    texts: set[str] = set()
    for item in decoded:
        text = _lenient_utf8(item)
        for variant in (text, unicodedata.normalize("NFKC", text)):
            variant = "".join(c for c in variant if unicodedata.category(c) not in ("Cf", "Mn"))
            variant = variant.replace("\\", "/")
            variant = re.split(r"[?#]", variant, maxsplit=1)[0]
            variant = re.sub(r";[^/]*", "", variant)
            variant = re.sub(r"(?<=[^/. ])[. ]+(?=/|$)", "", variant)  # Windows: "admin." is "admin"
            texts |= {variant, variant.lower(), variant.upper().lower()}
    out = set()
    for text in texts:
        normal = posixpath.normpath("/" + text.lstrip("/")) if text else "/"
        out.add(re.sub(r"/+", "/", normal))
    return out


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def test_the_oracle_sees_through_the_classic_tricks() -> None:
    for trick in (
        b"/public/../admin",
        b"/public%2f..%2fadmin",
        b"/public%252f..%252fadmin",
        b"/public/%c0%ae%c0%ae/admin",
        b"/public%c0%af..%c0%afadmin",
        b"/ADMIN",
        b"/%ef%bd%81dmin",
        b"/ad%e2%80%8bmin",
        b"/public/..;/admin",
        b"/public\\..\\admin",
        b"/admin%3f",
        b"/admin.",
    ):
        assert any(under(reading, "/admin") for reading in readings(trick)), trick


# -- the pure rules ----------------------------------------------------------------------------------

TRIPLE_ENCODINGS = [
    # %25 followed by escaped hex digits: decoded once by the gateway, twice by the upstream.
    b"/public%25%32%66..%25%32%66admin",
    b"/public%25%32%46..%25%32%46admin",
    b"/public/%25%32%65%25%32%65/admin",
    b"/public/%25%32e%25%32e/admin",
    b"/public/%252%65%252%65/admin",
    b"/public%25%35%63..%25%35%63admin",
    b"/admin%25%33%66",
    b"/a%25%32%35%32%66b",
    b"/a%25%36%31",
]


@pytest.mark.parametrize("target", TRIPLE_ENCODINGS)
def test_escapes_that_spell_a_double_encoding_are_refused(target: bytes) -> None:
    with pytest.raises(PathError) as info:
        parse_target(target)
    assert info.value.reason == "double_encoding"


UNICODE_REFUSED = [
    # overlong UTF-8 for "/", ".", "\\" (IIS CVE-2000-0884) and other invalid UTF-8
    (b"/public%c0%af..%c0%afadmin", "bad_utf8"),
    (b"/public/%c0%ae%c0%ae/admin", "bad_utf8"),
    (b"/public/%C0%AE%C0%AE/admin", "bad_utf8"),
    (b"/public%e0%80%af..%e0%80%afadmin", "bad_utf8"),
    (b"/public%f0%80%80%af..", "bad_utf8"),
    (b"/public%c1%9c..%c1%9cadmin", "bad_utf8"),
    (b"/admin%80", "bad_utf8"),
    (b"/admin%ff", "bad_utf8"),
    (b"/admin%c3", "bad_utf8"),
    (b"/admin%ed%a0%80", "bad_utf8"),
    (b"/admin%f4%90%80%80", "bad_utf8"),
    # characters NFKC or case mapping turn into ASCII
    (b"/public%ef%bc%8f..%ef%bc%8fadmin", "confusable"),
    (b"/public/%ef%bc%8e%ef%bc%8e/admin", "confusable"),
    (b"/public%ef%bc%bc..%ef%bc%bcadmin", "confusable"),
    (b"/%ef%bd%81dmin", "confusable"),
    (b"/%EF%BC%A1DMIN", "confusable"),
    (b"/admin%e2%80%a4", "confusable"),
    (b"/ca%E2%84%AAalog", "confusable"),
    (b"/admin%C5%BF", "confusable"),
    (b"/adm%c4%b1n", "confusable"),
    (b"/admin%ef%bc%9f", "confusable"),
    # slash look-alikes best-fit code pages map to "/" or "\\"
    (b"/public%e2%88%95..%e2%88%95admin", "confusable"),
    (b"/public%e2%81%84..%e2%81%84admin", "confusable"),
    (b"/public%e2%88%96..%e2%88%96admin", "confusable"),
    # invisible and space characters
    (b"/adm%e2%80%8bin", "confusable"),
    (b"/admin%e2%80%8b", "confusable"),
    (b"/admin%ef%bb%bf", "confusable"),
    (b"/admin%c2%ad", "confusable"),
    (b"/admin%e2%80%ae", "confusable"),
    (b"/admin%c2%a0", "confusable"),
    (b"/admin%e3%80%80", "confusable"),
    (b"/admin%c2%85", "confusable"),
]


@pytest.mark.parametrize(("target", "reason"), UNICODE_REFUSED)
def test_non_utf8_and_confusable_escapes_are_refused(target: bytes, reason: str) -> None:
    with pytest.raises(PathError) as info:
        parse_target(target)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/caf%c3%a9", "/caf%C3%A9"),
        (b"/%E6%97%A5%E6%9C%AC", "/%E6%97%A5%E6%9C%AC"),
        (b"/emoji/%F0%9F%98%80", "/emoji/%F0%9F%98%80"),
        (b"/%D0%BA%D0%B0%D1%82%D0%B0%D0%BB%D0%BE%D0%B3", "/%D0%BA%D0%B0%D1%82%D0%B0%D0%BB%D0%BE%D0%B3"),
        (b"/stra%C3%9Fe", "/stra%C3%9Fe"),
    ],
)
def test_real_unicode_text_passes(target: bytes, path: str) -> None:
    assert parse_target(target).path == path


_PIECES = st.sampled_from(
    [
        "/",
        ".",
        "a",
        "A",
        "%",
        "%25",
        "%2",
        "%32",
        "%35",
        "%36",
        "%46",
        "%66",
        "%2e",
        "%2E",
        "%2f",
        "%5c",
        "%3b",
        "%3f",
        "%23",
        "%41",
        "%61",
        "%7e",
        "%c0",
        "%af",
        "%ae",
        "%e2",
        "%80",
        "%8b",
        "%ef",
        "%bc",
        "%8f",
        "%20",
        "%00",
        "~",
        "f",
        "5",
        "c",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=12))
@example(["%25", "%32", "%66"])
def test_canonical_paths_are_fixed_points_over_escape_soup(pieces: list[str]) -> None:
    """Whatever is accepted canonicalises to a path that is itself accepted unchanged: the
    upstream decoding it once more can never find an escape the gateway would have refused."""
    try:
        path = parse_target(("/" + "".join(pieces)).encode("ascii")).path
    except PathError:
        return
    assert parse_target(path.encode("ascii")).path == path


def _table(*prefixes: str) -> RouteTable:
    def route(prefix: str) -> Route:
        settings = RouteSettings(prefix=prefix, upstream="u", auth="none")
        return Route(settings=settings, upstream=_Group("u"), policies=())

    return RouteTable(route(prefix) for prefix in prefixes)


@dataclass
class _Group:
    name: str


@pytest.mark.parametrize(
    ("path", "confusable"),
    [
        ("/admin/users", False),
        ("/public/x", False),
        ("/other/Thing", False),
        ("/adminx", False),
        ("/ADMIN/users", True),
        ("/Admin", True),
        ("/aDmIn/x", True),
        ("/admin./users", True),
        ("/admin..", True),
        ("/admin%20/users", True),
        ("/admin.%20./x", True),
        ("/Public/x", True),
        ("/public/X.", False),
        ("/public/Admin", False),
        ("/Publicity", False),
    ],
)
def test_paths_a_lenient_upstream_routes_elsewhere_are_confusable(path: str, confusable: bool) -> None:
    table = _table("/", "/admin", "/public")
    route = table.match(path)
    assert route is not None
    assert table.confusable(path, route) is confusable


def test_routes_differing_only_in_case_are_not_confused_with_each_other() -> None:
    table = _table("/api", "/API", "/Mixed")
    for path in ("/api/x", "/API/x", "/Mixed/y"):
        route = table.match(path)
        assert route is not None
        assert not table.confusable(path, route)


# -- end to end --------------------------------------------------------------------------------------

E2E_TARGETS = [
    # dot segments and their encodings
    b"/public/../admin/users",
    b"/public/%2e%2e/admin/users",
    b"/public/%2E%2e/admin/users",
    b"/public/.%2e/admin/users",
    b"/public/%2e./admin/users",
    b"/public/./../admin/users",
    b"/public/.../admin/users",
    # slash and backslash encodings
    b"/public%2f..%2fadmin/users",
    b"/public%2F..%2Fadmin/users",
    b"/public%5c..%5cadmin/users",
    b"/public\\..\\admin/users",
    b"/api%2f..%2fadmin",
    b"/api/../admin",
    # double and triple encodings
    b"/public%252f..%252fadmin/users",
    b"/public/%252e%252e/admin/users",
    *TRIPLE_ENCODINGS,
    # matrix parameters
    b"/public/..;/admin/users",
    b"/public;/../admin/users",
    b"/api;x=1/admin",
    b"/admin;x=1",
    b"/public/%3b/../admin",
    # empty segments
    b"//admin/users",
    b"/public//../admin/users",
    # query and fragment characters inside encoded forms
    b"/public?/../admin",
    # oauth2-proxy skip-auth regexes matched the query too: "?/public" must not make /admin public
    b"/admin/users?/public",
    b"/admin/users?x=/public/",
    b"/admin/users?%2fpublic",
    b"/public?x=%2f..%2fadmin",
    b"/admin#/public",
    b"/public#/../admin",
    # overlong UTF-8, Unicode normalisation and invisible characters
    *(target for target, _ in UNICODE_REFUSED),
    b"/public/%u002e%u002e/admin",
    b"/public%u002fadmin",
    # case variants and trailing dots or spaces against case-sensitive prefixes
    b"/ADMIN/users",
    b"/Admin/users",
    b"/aDmIn",
    b"/CATALOG/items",
    b"/admin./users",
    b"/admin../users",
    b"/admin%20/users",
    b"/admin%2e/users",
    b"/%41dmin/users",
    b"/Public/x",
    b"/Other/Path",
    # NUL, controls, spaces
    b"/admin%00/users",
    b"/public%00/../admin",
    b"/admin%09",
    b"/admin%0a",
    # prefix boundaries
    b"/adminX",
    b"/admin-x",
    b"/admin.json",
    b"/publicX/../admin",
    # origin-form only
    b"*",
    b"http://api.example/admin/users",
    b"admin/users",
]


async def _oracle(stack: Stack, target: bytes) -> None:
    reply = await stack.send(get(target))
    received = stack.upstream.requests
    if reply.status == 400:
        assert received == [], (target, received)
        return
    # Not refused: the only protected routes are /admin and /catalog, so without a token
    # anything under them is 401 and never forwarded.
    if reply.status == 401:
        assert received == []
        return
    assert reply.status in (200, 404), (target, reply.status)
    if reply.status == 404:
        assert received == []
        return
    [seen] = received
    canonical = parse_target(target)
    assert seen.target == canonical.with_path(canonical.path), (target, seen.target)
    for reading in readings(seen.target):
        for prefix in PROTECTED:
            assert not under(reading, prefix), (target, seen.target, reading)


@pytest.mark.anyio
@pytest.mark.parametrize("target", E2E_TARGETS)
async def test_path_attacks_end_to_end(stack: Stack, target: bytes) -> None:
    await _oracle(stack, target)

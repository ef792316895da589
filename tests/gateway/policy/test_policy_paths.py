"""Strict request-target handling: every known bypass form is refused, the rest canonicalised."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.gateway.paths import PathError
from bastion.gateway.paths import RequestTarget
from bastion.gateway.paths import parse_target

#: (target, reason): each form has let some gateway's authorization see one path and its
#: upstream another.
REFUSED = [
    # not origin-form
    (b"http://evil/admin", "absolute_form"),
    (b"https://api.example.com/catalog", "absolute_form"),
    (b"api.example.com:443", "not_origin_form"),
    (b"*", "asterisk_form"),
    (b"", "not_origin_form"),
    (b"admin", "not_origin_form"),
    (b"%2Fadmin", "not_origin_form"),
    # encoded slash and backslash
    (b"/public%2F..%2Fadmin", "encoded_slash"),
    (b"/public%2fadmin", "encoded_slash"),
    (b"/public%5Cadmin", "encoded_slash"),
    (b"/public%5cadmin", "encoded_slash"),
    (b"/public\\admin", "backslash"),
    (b"/public\\..\\admin", "backslash"),
    # NUL and controls, raw and encoded
    (b"/admin%00.json", "refused_escape"),
    (b"/admin%0d%0aX-Injected:%201", "refused_escape"),
    (b"/admin%7F", "refused_escape"),
    (b"/admin\x00", "bad_path_byte"),
    (b"/admin\t", "bad_path_byte"),
    (b"/admin x", "bad_path_byte"),
    (b"/admin\x7f", "bad_path_byte"),
    (b"/caf\xc3\xa9", "bad_path_byte"),
    (b"/admin\xff", "bad_path_byte"),
    (b'/a"b', "bad_path_byte"),
    (b"/a<b>", "bad_path_byte"),
    (b"/a{b}", "bad_path_byte"),
    (b"/a|b", "bad_path_byte"),
    (b"/a[0]", "bad_path_byte"),
    (b"/a^b", "bad_path_byte"),
    (b"/a`b", "bad_path_byte"),
    # matrix parameters, raw and encoded
    (b"/public/..;/admin", "matrix_parameter"),
    (b"/admin;jsessionid=1", "matrix_parameter"),
    (b"/admin;", "matrix_parameter"),
    (b"/;/admin", "matrix_parameter"),
    (b"/public%3B/admin", "refused_escape"),
    (b"/public%3b/admin", "refused_escape"),
    # fragments and queries, raw and encoded (an upstream decoding before splitting sees them)
    (b"/admin#frag", "fragment"),
    (b"/admin%23frag", "refused_escape"),
    (b"/public%3F/../admin", "refused_escape"),
    (b"/admin%3fx=1", "refused_escape"),
    (b"/admin?x=1#frag", "bad_query"),
    # double encoding
    (b"/public%252F..%252Fadmin", "double_encoding"),
    (b"/public/%252e%252e/admin", "double_encoding"),
    (b"/admin%2541", "double_encoding"),
    # malformed escapes
    (b"/admin%", "bad_escape"),
    (b"/admin%4", "bad_escape"),
    (b"/admin%zz", "bad_escape"),
    (b"/admin%G1", "bad_escape"),
    # dot segments, raw and encoded
    (b"/public/../admin", "dot_segment"),
    (b"/public/./admin", "dot_segment"),
    (b"/public/..", "dot_segment"),
    (b"/public/.", "dot_segment"),
    (b"/..", "dot_segment"),
    (b"/.", "dot_segment"),
    (b"/public/%2e%2e/admin", "dot_segment"),
    (b"/public/%2E%2E/admin", "dot_segment"),
    (b"/public/.%2e/admin", "dot_segment"),
    (b"/public/%2e./admin", "dot_segment"),
    (b"/public/%2e/admin", "dot_segment"),
    (b"/public/%2e", "dot_segment"),
    # empty segments
    (b"//admin", "empty_segment"),
    (b"/public//admin", "empty_segment"),
    (b"/admin//", "empty_segment"),
    (b"/%41//b", "empty_segment"),
    # query must not carry raw controls, spaces or non-ASCII
    (b"/admin?x=1 HTTP/1.1", "bad_query"),
    (b"/admin?x=\x00", "bad_query"),
    (b"/admin?x=\r\nInjected: 1", "bad_query"),
    (b"/admin?x=\xc3\xa9", "bad_query"),
    (b"/admin?x=\x7f", "bad_query"),
]


@pytest.mark.parametrize(("target", "reason"), REFUSED)
def test_bypass_forms_are_refused(target: bytes, reason: str) -> None:
    with pytest.raises(PathError) as info:
        parse_target(target)
    assert info.value.reason == reason
    assert info.value.status == 400


CANONICAL = [
    (b"/", "/", None),
    (b"/catalog", "/catalog", None),
    (b"/catalog/", "/catalog/", None),
    (b"/catalog/items/42", "/catalog/items/42", None),
    (b"/%41dmin", "/Admin", None),
    (b"/%61dmin", "/admin", None),
    (b"/a%7Eb", "/a~b", None),
    (b"/a%7eb", "/a~b", None),
    (b"/a%2Db%5Fc%2Ed", "/a-b_c.d", None),
    (b"/a%30%39", "/a09", None),
    (b"/caf%c3%a9", "/caf%C3%A9", None),
    (b"/a%20b", "/a%20b", None),
    (b"/p%25zz", "/p%25zz", None),
    (b"/p%25", "/p%25", None),
    (b"/.well-known/jwks.json", "/.well-known/jwks.json", None),
    (b"/a/.b/..c/...", "/a/.b/..c/...", None),
    (b"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", None),
    (b"/search?q=a%20b&x=%2F..%2F", "/search", "q=a%20b&x=%2F..%2F"),
    (b"/search?", "/search", ""),
    (b"/search?a=1?b=2", "/search", "a=1?b=2"),
    (b"/search?a=;b", "/search", "a=;b"),
]


@pytest.mark.parametrize(("target", "path", "query"), CANONICAL)
def test_canonical_forms(target: bytes, path: str, query: str | None) -> None:
    assert parse_target(target) == RequestTarget(path, query)


def test_with_path_keeps_the_query_byte_for_byte() -> None:
    parsed = parse_target(b"/api/x?b=2&a=%2f")
    assert parsed.with_path("/x") == b"/x?b=2&a=%2f"
    assert parse_target(b"/api/x").with_path("/x") == b"/x"
    assert parse_target(b"/api/x?").with_path("/x") == b"/x?"


@given(st.binary(max_size=40))
def test_canonical_is_a_fixed_point(raw: bytes) -> None:
    """Whatever is accepted is canonical: parsing the result again changes nothing, and the
    result never holds a dot segment, an empty segment or an escape of a structural byte."""
    try:
        parsed = parse_target(b"/" + raw)
    except PathError:
        return
    path = parsed.path
    assert parse_target(path.encode("ascii")).path == path
    segments = path.split("/")[1:]
    assert all(segment not in (".", "..") for segment in segments)
    assert "" not in segments[:-1]
    upper = path.upper()
    for refused in ("%2F", "%5C", "%00", "%3B", ";", "\\"):
        assert refused not in upper

"""After sign-in the BFF redirects only to same-origin relative paths (open-redirect tricks)."""

from __future__ import annotations

import pytest

from bastion.bff.redirects import safe_return_path


@pytest.mark.parametrize(
    "value",
    [
        "/",
        "/orders",
        "/orders/42?tab=items#top",
        "/search?q=a%20b",
        "/a/b/../c",
    ],
)
def test_same_origin_paths_are_kept(value: str) -> None:
    assert safe_return_path(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "//evil.example",
        "//evil.example/path",
        "/\\evil.example",
        "\\\\evil.example",
        "/%5Cevil.example",
        "/%2F/evil.example",
        "%2F%2Fevil.example",
        "/%09/evil.example",
        "/\t/evil.example",
        "/%0a/evil.example",
        "/%0D%0A/evil.example",
        "/ /evil",
        "https:evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "evil.example",
        "orders",
        "/" + "a" * 3000,
    ],
)
def test_tricks_are_refused(value: str) -> None:
    assert safe_return_path(value) is None

"""Unit tests of gateway.paths.split_target: request-target normalisation and refusal."""
from __future__ import annotations

from urllib.parse import unquote_to_bytes

import pytest

from gateway.errors import BadRequest
from gateway.paths import Target, split_target


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", Target("/", "/", "")),
        ("/api/v1/users", Target("/api/v1/users", "/api/v1/users", "")),
        ("/api/v1/users/", Target("/api/v1/users/", "/api/v1/users/", "")),
        ("/api/v1/users?page=2&sort=-name", Target("/api/v1/users", "/api/v1/users", "page=2&sort=-name")),
        ("/a?q=%2F..%2f&x=a%20b", Target("/a", "/a", "q=%2F..%2f&x=a%20b")),
        ("/a?", Target("/a", "/a", "")),
        ("/a/b.c/d..e/.f", Target("/a/b.c/d..e/.f", "/a/b.c/d..e/.f", "")),
        ("/a/b-c_d~e", Target("/a/b-c_d~e", "/a/b-c_d~e", "")),
    ],
    ids=["root", "plain", "trailing-slash", "query", "query-kept-raw", "empty-query", "dots-inside-names",
         "unreserved"],
)
def test_plain_targets_pass_unchanged(raw: str, expected: Target) -> None:
    assert split_target(raw) == expected


@pytest.mark.parametrize(
    ("raw", "path", "encoded"),
    [
        ("/a/b/../c", "/a/c", "/a/c"),
        ("/a/./b", "/a/b", "/a/b"),
        ("/a/b/./../c/", "/a/c/", "/a/c/"),
        ("/a/%2e%2e/c", "/c", "/c"),
        ("/a/%2E%2E/c", "/c", "/c"),
        ("/a/.%2e/c", "/c", "/c"),
        ("/a/%2e/c", "/a/c", "/a/c"),
        ("/a/..", "/", "/"),
        ("/..x/y", "/..x/y", "/..x/y"),
        ("/a//b", "/a/b", "/a/b"),
        ("//a///b//", "/a/b/", "/a/b/"),
        ("/a/b/../c?x=1", "/a/c", "/a/c"),
    ],
    ids=["dot-dot", "dot", "mixed-trailing-slash", "encoded-dot-dot", "encoded-dot-dot-upper", "half-encoded",
         "encoded-dot", "back-to-root", "dot-dot-prefix-name", "double-slash", "many-slashes", "with-query"],
)
def test_dot_segments_and_slashes_are_resolved(raw: str, path: str, encoded: str) -> None:
    target = split_target(raw)
    assert (target.path, target.encoded) == (path, encoded)


def test_query_survives_normalisation() -> None:
    assert split_target("/a/../b?x=%2F&y").query == "x=%2F&y"


@pytest.mark.parametrize(
    ("raw", "path", "encoded"),
    [
        ("/a/%252f", "/a/%2f", "/a/%252f"),
        ("/a/%252F/b", "/a/%2F/b", "/a/%252F/b"),
        ("/a%20b", "/a b", "/a%20b"),
        ("/caf%C3%A9", "/café", "/caf%C3%A9"),
        ("/caf%c3%a9", "/café", "/caf%C3%A9"),
        ("/x/%ff", "/x/\udcff", "/x/%FF"),
        ("/x/%C3%28", "/x/\udcc3(", "/x/%C3("),
        ("/a%3bb", "/a;b", "/a;b"),
        ("/a;v=1/b", "/a;v=1/b", "/a;v=1/b"),
        ("/a%40b%3Ac", "/a@b:c", "/a@b:c"),
        ("/a%3Fb", "/a?b", "/a%3Fb"),
        ("/a%23b", "/a#b", "/a%23b"),
        ("/a%25", "/a%", "/a%25"),
    ],
    ids=["double-encoded-slash", "double-encoded-slash-upper", "space", "utf8-upper", "utf8-lower", "invalid-utf8",
         "truncated-utf8", "encoded-semicolon", "matrix-param", "pchar-decoded", "question-mark-stays-encoded",
         "hash-stays-encoded", "percent-stays-encoded"],
)
def test_percent_escapes_are_reencoded_byte_exactly(raw: str, path: str, encoded: str) -> None:
    target = split_target(raw)
    assert (target.path, target.encoded) == (path, encoded)
    assert unquote_to_bytes(target.encoded) == unquote_to_bytes(raw)
    assert target.path.encode("utf-8", "surrogateescape") == unquote_to_bytes(raw)
    assert split_target(target.encoded) == target


@pytest.mark.parametrize(
    "raw",
    [
        "/..",
        "/../etc/passwd",
        "/a/../../b",
        "/%2e%2e/x",
        "/a/%2E%2E/%2e%2e/x",
        "/a%2fb",
        "/a%2Fb",
        "/a/%2F../b",
        "/a/..;/b",
        "/a/.;x/b",
        "/..;x",
        "/a/%2e%2e%3bx",
        "/a%00b",
        "/a%0ab",
        "/a%0D%0Ab",
        "/a%7fb",
        "/a%1Fb",
        "/a\\b",
        "/a%5cb",
        "/a%5C..%5Cb",
        "a/b",
        "",
        "*",
        "http://example.com/a",
        "?x=1",
    ],
    ids=["dot-dot-at-root", "climb-to-etc", "climb-twice", "encoded-climb", "encoded-climb-twice", "encoded-slash",
         "encoded-slash-upper", "encoded-slash-dot-dot", "dot-dot-param", "dot-param", "dot-dot-param-at-root",
         "encoded-dot-dot-param", "nul", "newline", "crlf", "del", "unit-separator", "backslash",
         "encoded-backslash", "encoded-backslash-upper", "relative", "empty", "asterisk", "absolute-form",
         "query-only"],
)
def test_refused_targets_raise_bad_request(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        split_target(raw)
    assert caught.value.status == 400
    assert caught.value.message


@pytest.mark.parametrize("raw", ["/a\x00b", "/a\x7fb", "/a\tb"], ids=["nul", "del", "tab"])
def test_raw_control_characters_are_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        split_target(raw)


def test_raw_non_ascii_is_percent_encoded() -> None:
    assert split_target("/café").encoded == "/caf%C3%A9"

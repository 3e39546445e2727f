"""Bytes of an HTTP/1.1 request as the pool writes them: the head, with the pool's own body framing."""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

# The pool frames the body and manages the connection itself; caller-given values would contradict it.
_DROPPED = frozenset({"content-length", "transfer-encoding", "connection"})
_EMPTY_BODY_NEEDS_LENGTH = frozenset({"POST", "PUT", "PATCH"})

CHUNKED = "Transfer-Encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"
_CRLF = "\r\n"
_LINE_BREAKS = b"\r\n\0"


def framing(method: str, body_length: int | None, streamed: bool) -> str:
    """The framing header line: a length when it is known, chunked for a stream of unknown length."""
    if body_length is not None:
        if body_length < 0:
            raise ValueError(f"content_length must not be negative, not {body_length}")
        return f"Content-Length: {body_length}\r\n"
    if streamed:
        return CHUNKED
    # Without a body a POST/PUT/PATCH still says so: some servers answer 411 to a missing length.
    return "Content-Length: 0\r\n" if method in _EMPTY_BODY_NEEDS_LENGTH else ""


Headers = Iterable[tuple[str, str]] | Mapping[str, str]


def build_head(method: str, target: str, host_line: str, headers: Headers, framing_line: str) -> bytes:
    """Request line, Host (``host_line``, unless the caller gave one), the caller's end-to-end headers
    and the framing line, encoded once.

    Header text round-trips as UTF-8 with surrogate escapes, the way aiohttp's server decoded it.
    CR, LF or NUL anywhere raises ValueError: each line of the head ends in one CR and one LF, so one
    count of those bytes over the encoded head finds any smuggled one without scanning each value.
    A (multi)dict is taken by its items(), duplicates included.
    """
    if target[:1] != "/" or " " in target or " " in method:
        raise ValueError(f"invalid request line: {method!r} {target!r}")
    pairs, has_host = _end_to_end(headers)
    if has_host:
        host_line = ""
    lines = "\r\n".join(map(": ".join, pairs))  # one C loop, no string formatting per header
    end_of_lines = _CRLF if lines else ""
    head = f"{method} {target} HTTP/1.1\r\n{host_line}{lines}{end_of_lines}{framing_line}\r\n".encode(
        "utf-8", "surrogateescape"
    )
    expected = 2 * (2 + len(pairs) + (host_line != "") + (framing_line != ""))
    if len(head) - len(head.translate(None, _LINE_BREAKS)) != expected:
        raise ValueError(_culprit(method, target, pairs))
    return head


def _end_to_end(headers: Headers) -> tuple[Collection[tuple[str, str]], bool]:
    """The headers minus the framing ones the pool sets itself, and whether a Host is among them."""
    if isinstance(headers, (CIMultiDict, CIMultiDictProxy)):  # the gateway's own: case-blind lookups in C
        has_host = "Host" in headers
        if "Content-Length" in headers or "Transfer-Encoding" in headers or "Connection" in headers:
            return [(name, value) for name, value in headers.items() if name.lower() not in _DROPPED], has_host
        return headers.items(), has_host
    # Duck-typed, not isinstance(headers, Mapping): an ABC check on every request costs more than the test.
    items = getattr(headers, "items", None)
    pairs: Iterable[tuple[str, str]] = items() if items is not None else headers
    kept = [(name, value) for name, value in pairs if name.lower() not in _DROPPED]
    return kept, any(name.lower() == "host" for name, _ in kept)


def _culprit(method: str, target: str, headers: Iterable[tuple[str, str]]) -> str:
    """Name what broke the head (the slow path, only once the cheap check has failed)."""
    for name, value in (("request line", f"{method} {target}"), *headers):
        if any(c in name or c in value for c in "\r\n\0"):
            return f"CR, LF or NUL in header {name!r}"
    return "CR, LF or NUL in the request head"

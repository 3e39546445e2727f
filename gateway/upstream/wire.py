"""Bytes of an HTTP/1.1 request as the pool writes them: the head, with the pool's own body framing."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

# The pool frames the body and manages the connection itself; caller-given values would contradict it.
_DROPPED = frozenset({"content-length", "transfer-encoding", "connection"})
_EMPTY_BODY_NEEDS_LENGTH = frozenset({"POST", "PUT", "PATCH"})

CHUNKED = "Transfer-Encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"


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
    CR, LF or NUL anywhere raises ValueError: counting line ends over the joined head finds any smuggled
    one without scanning each value. A (multi)dict is taken by its items(), duplicates included.
    """
    # Duck-typed, not isinstance(headers, Mapping): an ABC check on every request costs more than the test.
    items = getattr(headers, "items", None)
    pairs: Iterable[tuple[str, str]] = items() if items is not None else headers
    if target[:1] != "/" or " " in target or " " in method:
        raise ValueError(f"invalid request line: {method!r} {target!r}")
    parts = [method, " ", target, " HTTP/1.1\r\n", host_line]
    line_ends = 3  # request line, framing (or the empty string) and the blank line, counted below
    for name, value in pairs:
        lowered = name.lower()
        if lowered in _DROPPED:
            continue
        if lowered == "host":
            parts[4] = ""
        parts += (name, ": ", value, "\r\n")
        line_ends += 1
    if parts[4]:
        line_ends += 1
    if not framing_line:
        line_ends -= 1
    parts.append(framing_line)
    parts.append("\r\n")
    head = "".join(parts)
    if head.count("\n") != line_ends or head.count("\r") != line_ends or "\0" in head:
        raise ValueError(_culprit(method, target, pairs))
    return head.encode("utf-8", "surrogateescape")


def _culprit(method: str, target: str, headers: Iterable[tuple[str, str]]) -> str:
    """Name what broke the head (the slow path, only once the cheap check has failed)."""
    for name, value in (("request line", f"{method} {target}"), *headers):
        if any(c in name or c in value for c in "\r\n\0"):
            return f"CR, LF or NUL in header {name!r}"
    return "CR, LF or NUL in the request head"

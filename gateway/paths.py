"""Request-target normalisation: a path can never be forwarded outside the prefix it was routed by.

The router matches on the decoded, normalised path; the upstream gets that same path re-encoded, so the
gateway and the service always agree on what the path means.
"""
from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote_from_bytes, unquote_to_bytes

from gateway.errors import BadRequest

# RFC 3986 pchar minus "%": these stay literal when a segment is re-encoded.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_FORBIDDEN_BYTES = frozenset(range(0x20)) | {0x7F, ord("\\")}
# Paths made only of these characters, without "/." or "//", need no decoding and no checks.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,=:@/-]*").fullmatch


class Target(NamedTuple):
    path: str
    """Decoded, normalised path used for routing."""
    encoded: str
    """The same path, percent-encoded, as it is forwarded."""
    query: str
    """Raw query string without the '?', forwarded untouched."""


def split_target(raw: str) -> Target:
    """Normalise a raw request target (origin form) or refuse it with 400."""
    path, _, query = raw.partition("?")
    path = path.partition("#")[0]
    if not path.startswith("/"):
        raise BadRequest("The request target must be a path starting with /")
    if _PLAIN_PATH(path) and "/." not in path and "//" not in path:
        return Target(path, path, query)
    return Target(*_normalise(path), query)


def _normalise(path: str) -> tuple[str, str]:
    last = unquote_to_bytes(path.rsplit("/", 1)[1])
    trailing_slash = (path.endswith("/") and path != "/") or last in (b".", b"..")
    decoded: list[bytes] = []
    for raw_segment in path.split("/")[1:]:
        if not raw_segment:
            continue  # "//" collapses, as most servers read it
        segment = unquote_to_bytes(raw_segment)
        if b"/" in segment:
            raise BadRequest("Encoded slashes (%2F) are not allowed in the path")
        if not _FORBIDDEN_BYTES.isdisjoint(segment):
            raise BadRequest("The path contains a control character or a backslash")
        stem = segment.split(b";", 1)[0]
        if segment == b".":
            continue
        if segment == b"..":
            if not decoded:
                raise BadRequest("The path climbs above the root")
            decoded.pop()
            continue
        if stem in (b".", b".."):
            raise BadRequest("Dot segments with parameters are not allowed in the path")
        decoded.append(segment)
    if not decoded:
        return "/", "/"
    text = "/" + "/".join(s.decode("utf-8", "surrogateescape") for s in decoded)
    encoded = "/" + "/".join(quote_from_bytes(s, safe=_SEGMENT_SAFE) for s in decoded)
    if trailing_slash:
        text += "/"
        encoded += "/"
    return text, encoded

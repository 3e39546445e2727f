"""What httptools reports of a request head, made into the message aiohttp's web.Request is built on.

llhttp (httptools) already refuses what breaks the framing: Content-Length with Transfer-Encoding, a
repeated or malformed Content-Length, Transfer-Encoding not ending in chunked, obs-fold, bare LF, CR,
NUL and other controls in a header. What is left to check here is what aiohttp's own parser checks on
top: the version, Host (present once on HTTP/1.1), the other headers a request may carry only once,
Transfer-Encoding on HTTP/1.0, and the form of the request target.
"""
from __future__ import annotations

from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

MAX_TARGET = 8190
"""Bytes of a request target (longer is 414, as aiohttp's and nginx's default line limits)."""
MAX_FIELD = 8190
"""Bytes of one header line's name and value (longer is 431)."""
MAX_HEADERS = 128
"""Header lines in one request (more is 431)."""
MAX_HEAD = 65536
"""Bytes of a whole request head still incomplete (more is 431): bounds what a client can make the
parser hold before any callback sees it."""


class RequestRefused(Exception):
    """A request this server will not serve: answered with status and reason, then the connection closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_VERSIONS = {"1.1": HttpVersion11, "1.0": HttpVersion10}
_METHODS: dict[bytes, str] = {}


def method_text(method: bytes) -> str:
    text = _METHODS.get(method)
    if text is None:
        text = method.decode("ascii")
        if len(_METHODS) < 64:  # llhttp knows a few dozen methods: the cache stays small
            _METHODS[method] = text
    return text


def request_message(
    method: str, target: bytes, version: str, raw_headers: list[tuple[bytes, bytes]], upgrade: bool
) -> RawRequestMessage:
    http_version = _VERSIONS.get(version)
    if http_version is None:
        raise RequestRefused(505, f"HTTP/{version} is not supported")
    headers: CIMultiDict[str] = CIMultiDict()
    add = headers.add
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("utf-8", "surrogateescape")
        if name in headers and name.lower() in SINGLETON_HEADERS:
            raise RequestRefused(400, f"Duplicate '{name}' header found")
        add(name, raw_value.decode("utf-8", "surrogateescape"))
    chunked = "Transfer-Encoding" in headers
    if http_version is HttpVersion11:
        if "Host" not in headers:
            raise RequestRefused(400, "Missing 'Host' header in request")
    elif chunked:
        raise RequestRefused(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
    path = target.decode("utf-8", "surrogateescape")
    return RawRequestMessage(
        method,
        path,
        http_version,
        CIMultiDictProxy(headers),
        tuple(raw_headers),
        _should_close(http_version, headers.get("Connection")),
        None,  # compression: bodies go upstream as the client encoded them
        upgrade,
        chunked,
        _target_url(method, path),
    )


def _should_close(version: HttpVersion, connection: str | None) -> bool:
    if connection is not None:
        tokens = {token.strip().lower() for token in connection.split(",")}
        if "close" in tokens:
            return True
        if "keep-alive" in tokens:
            return False
    return version is not HttpVersion11


def _target_url(method: str, path: str) -> URL:
    """The target as aiohttp's parser builds it, so that request.url, .path and .rel_url agree with it."""
    try:
        if path.startswith("/"):  # origin-form
            path_part, _, fragment = path.partition("#")
            path_part, _, query = path_part.partition("?")
            return URL.build(path=path_part, query_string=query, fragment=fragment, encoded=True)
        if method == "CONNECT":  # authority-form
            url = URL.build(authority=path, encoded=True)
        elif path == "*" and method == "OPTIONS":  # asterisk-form
            return URL(path, encoded=True)
        else:  # absolute-form
            url = URL(path, encoded=True)
    except ValueError:
        raise RequestRefused(400, "Invalid request target") from None
    if url.raw_host is None:
        raise RequestRefused(400, "Invalid request target")
    return url

"""A reply whose body is already in memory, written to the client's socket in one go.

aiohttp's way (a web.Response, prepare(), write_eof()) builds a response object, runs its header logic
through a StreamWriter and serialises the headers; on the proxied hot path that was about an eighth of a
request's CPU. Here the status line, headers and body become one bytes object and one transport write,
with the header rules aiohttp applies kept as they are: Content-Type, Date and Connection defaults, CR/LF
refused in any header, keep-alive as the request asked. What is returned to aiohttp is a StreamResponse
already marked as sent, so its prepare() and write_eof() do nothing and its keep_alive steers the
connection as usual.

Only for replies that carry a body the client may get (not HEAD, not 1xx/204/304): those keep aiohttp's
rules about which framing headers go.
"""
from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion10, HttpVersion11
from multidict import CIMultiDict


# Control characters aiohttp's writer refuses in a header (HT is allowed; CR and LF are counted below).
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


class SentResponse(web.StreamResponse):
    """A response already on the wire: aiohttp's finish_response() finds it prepared and finished."""

    def __init__(self, status: int, reason: str, headers: CIMultiDict[str], body_length: int, keep_alive: bool):
        self._state = {}
        self._headers = headers
        self._status = status
        self._reason = reason
        self._keep_alive = keep_alive
        self._body_length = body_length
        self._eof_sent = True


def reason_phrase(status: int) -> str:
    """The standard phrase of a status, "" for one without (aiohttp's default reason)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def header_block(status_line: str, headers: CIMultiDict[str]) -> bytes:
    """The head of a response, ending in the blank line. Raises ValueError for a CR or LF inside a line
    (header injection) or another control character in it, as aiohttp's writer does."""
    try:
        lines = "\r\n".join(map(": ".join, headers.items()))  # one C loop, no string formatting per header
    except TypeError:  # a value that is not a string: formatted as aiohttp would have
        lines = "\r\n".join(f"{name}: {value}" for name, value in headers.items())
    # Upstream header bytes were decoded as UTF-8 with surrogate escapes: they go out byte for byte.
    head = (f"{status_line}\r\n{lines}\r\n\r\n" if lines else f"{status_line}\r\n\r\n").encode(
        "utf-8", "surrogateescape"
    )
    # Each line ends in one CR and one LF. Counted on the bytes, where both tests are single C passes: a
    # control character below 0x80 is the same byte in UTF-8, and every byte of a longer sequence is >= 0x80.
    line_ends = len(headers) + 2 if lines else 2
    if (
        head.count(b"\r") != line_ends
        or head.count(b"\n") != line_ends
        or len(head.translate(None, _CONTROL_BYTES)) != len(head)
    ):
        raise ValueError("Newline or carriage return character detected in HTTP status message or header")
    return head


async def send_whole(
    request: web.BaseRequest, status: int, reason: str, headers: CIMultiDict[str], body: bytes
) -> tuple[web.StreamResponse, bool]:
    """Write status, headers and body in one write; (the response for aiohttp, whether the client got it)."""
    version = request.version
    keep_alive = request.keep_alive
    if body and "Content-Type" not in headers:
        headers["Content-Type"] = "application/octet-stream"
    if "Date" not in headers:
        headers["Date"] = rfc822_formatted_time()
    if "Connection" not in headers:
        if keep_alive:
            if version == HttpVersion10:
                headers["Connection"] = "keep-alive"
        elif version == HttpVersion11:
            headers["Connection"] = "close"
    head = header_block(f"HTTP/{version.major}.{version.minor} {status} {reason}", headers)
    response = SentResponse(status, reason, headers, len(body), keep_alive)
    transport = request.transport
    if transport is None or transport.is_closing():
        response._keep_alive = False
        return response, False
    transport.write(head + body)
    if transport.get_write_buffer_size():  # else the socket took it all: nothing to drain
        try:
            await request.writer.drain()  # waits only while the client's socket buffer is full
        except ConnectionError:
            response._keep_alive = False
            return response, False
    return response, True

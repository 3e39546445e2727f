"""Responses the connection writes itself, where no request object exists: whole, in the envelope."""
from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus

import httptools

from gateway.envelope import error_body
from gateway.exchange import JSON_CONTENT_TYPE, SERVER


def error_reply(status: int, text: str, request_id: str) -> bytes:
    """A whole error response in the envelope, with `Connection: close`."""
    body = error_body(status, text, request_id)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {JSON_CONTENT_TYPE}\r\n"
        f"Server: {SERVER}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def parser_reason(exc: httptools.HttpParserError) -> str:
    """llhttp's reason for refusing a request, without anything of the client's bytes."""
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return "Invalid method"
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return "Invalid request target"
    text = str(exc).strip().rstrip(".")
    return text if text and text.isprintable() and len(text) < 120 else "Malformed request"

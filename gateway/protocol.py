"""HTTP-level errors in the spec's envelope: what aiohttp answers before (or instead of) the gateway's
handler — a request its parser cannot read, or an exception that escaped — gets the same error body,
request ID and Server header as every other error, and one log line instead of a traceback per request.

aiohttp has no public hook for this; the request handler class is swapped on the runner's server, the
one place aiohttp builds it (Server.__call__).
"""
from __future__ import annotations

import logging
import os
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from gateway.envelope import error_body
from gateway.exchange import JSON_CONTENT_TYPE, SERVER
from gateway.logs import log_fields, request_id_var

log = logging.getLogger("gateway.protocol")


class EnvelopeRequestHandler(RequestHandler):  # type: ignore[type-arg]
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response is out already: nothing can be answered on this connection any more.
            raise ConnectionError("response already started; the connection is closed")
        request_id = "req_" + os.urandom(12).hex()
        token = request_id_var.set(request_id)
        try:
            if isinstance(exc, HttpProcessingError):
                reason = _reason(exc.message or HTTPStatus(status).phrase)
                log.info(
                    "rejected a request the HTTP parser could not read: %s",
                    reason,
                    extra=log_fields(status=status, client=request.remote),
                )
                text = f"{HTTPStatus(status).phrase}: {reason}"
            else:
                log.error("unhandled error in the HTTP layer", exc_info=exc)
                text = HTTPStatus(status).phrase
        finally:
            request_id_var.reset(token)
        response = web.Response(
            status=status,
            body=error_body(status, text, request_id),
            headers={"Content-Type": JSON_CONTENT_TYPE, "Server": SERVER, "X-Request-ID": request_id},
        )
        response.force_close()
        return response


def _reason(message: str) -> str:
    """The parser's reason, without the excerpt of the client's bytes it appends."""
    first = message.splitlines()[0]
    return first.split(": b'", 1)[0].split(': b"', 1)[0].rstrip(":. ")


class EnvelopeServer(web.Server):
    def __call__(self) -> RequestHandler:  # type: ignore[type-arg]
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)


def use_envelope_errors(runner: web.BaseRunner) -> None:
    """After runner.setup(): make the runner's server build EnvelopeRequestHandlers."""
    server = runner.server
    if server is None or type(server) is not web.Server:
        raise RuntimeError("use_envelope_errors() needs a set-up runner with aiohttp's own Server")
    server.__class__ = EnvelopeServer

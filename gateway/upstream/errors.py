"""The errors of the upstream pool, one class per way an exchange with an instance can fail.

    UpstreamError
     +-- UpstreamConnectError     refused, unreachable, DNS failure, pool closed
     +-- UpstreamTimeout          also a TimeoutError; .phase is "connect", "read" or "total"
     +-- UpstreamResetError       closed or reset before the response or mid-body, or a body shorter than
     |                            its Content-Length; .reused / .sent_nothing tell whether a retry is safe
     +-- UpstreamProtocolError    a response that does not parse as HTTP/1.x
     +-- RequestBodyLengthError   also a ValueError; a streamed request body that did not match its
                                  declared content_length (the caller's body, not the instance, is at fault)
"""
from __future__ import annotations

from typing import Literal

TimeoutPhase = Literal["connect", "read", "total"]


class UpstreamError(Exception):
    """Base of every failure of an exchange with an upstream instance."""


class UpstreamConnectError(UpstreamError):
    """No connection could be opened (or the pool is closed)."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """A timeout of the exchange; ``phase`` says which budget ran out."""

    def __init__(self, phase: TimeoutPhase) -> None:
        super().__init__(f"upstream {phase} timeout")
        self.phase: TimeoutPhase = phase


class UpstreamResetError(UpstreamError):
    """The connection ended before the response was complete.

    ``reused`` is True only when the exchange ran on a kept-alive connection and not one byte of the
    response arrived: the instance most likely closed the idle connection as the request went out, so an
    idempotent request may be retried. ``sent_nothing`` is True when the connection was found dead before
    any byte of this request was written to it. The pool itself never retries.
    """

    def __init__(self, message: str, *, reused: bool = False, sent_nothing: bool = False) -> None:
        super().__init__(message)
        self.reused = reused
        self.sent_nothing = sent_nothing


class UpstreamProtocolError(UpstreamError):
    """The instance sent bytes that are not a valid HTTP/1.x response."""


class RequestBodyLengthError(UpstreamError, ValueError):
    """A streamed request body yielded more or fewer bytes than its declared content_length."""

    def __init__(self, expected: int, sent: int) -> None:
        relation = "more" if sent > expected else "fewer"
        super().__init__(f"request body has {relation} bytes than its content_length {expected}")
        self.expected = expected
        self.sent = sent

"""Which upstream failures left the request unsent, so that any method may be retried (gateway/proxy.py)."""
from __future__ import annotations

import aiohttp
import pytest

from gateway.proxy import _never_sent
from gateway.upstream import UpstreamConnectError, UpstreamProtocolError, UpstreamResetError, UpstreamTimeout


@pytest.mark.parametrize(
    ("error", "unsent"),
    [
        (UpstreamConnectError("refused"), True),
        (UpstreamTimeout("connect"), True),
        (UpstreamTimeout("read"), False),
        (UpstreamTimeout("total"), False),  # may have run out while the instance was working on it
        (UpstreamResetError("dead keep-alive connection", reused=True, sent_nothing=True), True),
        (UpstreamResetError("reset mid-response", reused=True), False),
        (UpstreamProtocolError("garbage"), False),
        (aiohttp.ConnectionTimeoutError(), True),
        (aiohttp.ServerDisconnectedError(), False),
        (aiohttp.SocketTimeoutError(), False),
    ],
    ids=lambda value: value if isinstance(value, bool) else f"{type(value).__name__}:{value}",
)
def test_only_failures_before_the_request_left_count_as_unsent(error: BaseException, unsent: bool) -> None:
    assert _never_sent(error) is unsent

"""Compressed request bodies at a service: the gateway forwards them as sent (see test_bad_input.py), so
the service that inflates one is the one that limits it. A good gzip body is read, one that inflates past
the service's limit is 413, and one its encoding cannot decode is 400, never a 500.

Invalid JSON, non-UTF-8 and empty bodies (400) and invalid fields (422) are proven in
tests/services/test_kit_http.py (test_every_error_uses_the_envelope, test_invalid_fields_are_422_...).
"""
from __future__ import annotations

import gzip
import io
import zlib

import aiohttp
import pytest

from services.kit.app import CLIENT_MAX_SIZE
from tests.services import demo
from tests.services.conftest import MakeSettings, Serve, events_prefix, make_settings, serve  # noqa: F401 - fixtures
from tests.services.helpers import bearer
from tests.services.test_kit_http import assert_error

THING = b'{"name": "compressed", "quantity": 3}'
CASES: list[tuple[str, str, bytes, int, str | None]] = [
    ("gzip", "gzip", gzip.compress(THING), 201, None),
    ("deflate", "deflate", zlib.compress(THING), 201, None),
    ("gzip-bomb", "gzip", gzip.compress(b" " * (CLIENT_MAX_SIZE * 8)), 413, "Request body too large"),
    ("broken-gzip", "gzip", b"\x1f\x8b\x08\x00" + b"not gzip at all" * 8, 400, "The body could not be read"),
    ("truncated-gzip", "gzip", gzip.compress(THING * 50)[:40], 400, None),
    ("broken-deflate", "deflate", b"not deflate", 400, "The body could not be read"),
    ("gzip-of-invalid-json", "gzip", gzip.compress(b'{"name": '), 400, "The body is not valid JSON"),
]


@pytest.mark.parametrize(("encoding", "body", "status", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_compressed_bodies_are_read_limited_or_refused_by_the_service(
    serve: Serve, make_settings: MakeSettings, encoding: str, body: bytes, status: int, error: str | None
) -> None:
    settings = make_settings()
    served = await serve(demo.publisher(), settings)
    headers = {**bearer(settings), "Content-Encoding": encoding, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(served.url + "/things", data=io.BytesIO(body), headers=headers) as response:
            reply = await response.json()
            assert response.status == status, reply
            if status >= 400:
                assert_error(reply, status, response.headers)
                if error is not None:
                    assert reply["error"].startswith(error)
        # The service keeps serving.
        async with session.get(served.url + "/things", headers=bearer(settings)) as response:
            assert response.status == 200
            names = [thing["name"] for thing in (await response.json())["data"]]
    assert names == (["compressed"] if status == 201 else [])

"""Bodies in both directions: large uploads (chunked and sized), streamed downloads, HEAD, 204 and 304."""
from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.helpers import Client, GatewayClient, StartUpstream, raw_request
from tests.support import service, write_registry

UPLOAD = os.urandom(5 * 1024 * 1024)
DOWNLOAD_CHUNK = os.urandom(64 * 1024)
DOWNLOAD_CHUNKS = 320  # 20 MiB


async def _hashing_upstream(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response(
        {
            "sha256": digest.hexdigest(),
            "size": size,
            "contentLength": request.headers.get("Content-Length"),
            "transferEncoding": request.headers.get("Transfer-Encoding"),
        }
    )


async def _download(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("sized"):
        response.content_length = len(DOWNLOAD_CHUNK) * DOWNLOAD_CHUNKS
    await response.prepare(request)
    for _ in range(DOWNLOAD_CHUNKS):
        await response.write(DOWNLOAD_CHUNK)
    await response.write_eof()
    return response


async def _no_body(request: web.Request) -> web.Response:
    status = int(request.match_info["status"])
    response = web.Response(status=status, headers={"ETag": '"v1"', "X-Upstream": "yes"})
    return response


async def _document(request: web.Request) -> web.Response:
    return web.Response(body=b"d" * 12_345, content_type="text/plain", headers={"X-Doc": "1"})


async def _gateway(registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient) -> Client:
    app = web.Application()
    app.router.add_post("/files/upload", _hashing_upstream)
    app.router.add_get("/files/download", _download)
    app.router.add_get("/files/status/{status}", _no_body)
    app.router.add_get("/files/document", _document)
    base = await start_upstream(app)
    return await gateway_client(write_registry(registry_path, {"file-service": service([base], "/api/v1/files")}))


async def _upload_chunks() -> AsyncIterator[bytes]:
    for start in range(0, len(UPLOAD), 200_000):
        yield UPLOAD[start : start + 200_000]


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_large_upload_arrives_intact(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, framing: str
) -> None:
    client = await _gateway(registry_path, start_upstream, gateway_client)
    data = _upload_chunks() if framing == "chunked" else io.BytesIO(UPLOAD)

    response = await client.post("/api/v1/files/upload", data=data)

    assert response.status == 200
    seen = await response.json()
    assert seen["sha256"] == hashlib.sha256(UPLOAD).hexdigest()
    assert seen["size"] == len(UPLOAD)
    if framing == "chunked":
        assert (seen["contentLength"], seen["transferEncoding"]) == (None, "chunked")
    else:
        assert (seen["contentLength"], seen["transferEncoding"]) == (str(len(UPLOAD)), None)


@pytest.mark.parametrize("sized", [False, True], ids=["chunked", "content-length"])
async def test_large_download_streams_intact(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, sized: bool
) -> None:
    client = await _gateway(registry_path, start_upstream, gateway_client)
    expected = hashlib.sha256(DOWNLOAD_CHUNK * DOWNLOAD_CHUNKS).hexdigest()

    response = await client.get("/api/v1/files/download", params={"sized": "1"} if sized else None)

    assert response.status == 200
    if sized:
        assert response.headers["Content-Length"] == str(len(DOWNLOAD_CHUNK) * DOWNLOAD_CHUNKS)
    else:
        assert "Content-Length" not in response.headers
        assert response.headers["Transfer-Encoding"] == "chunked"
    digest = hashlib.sha256()
    size = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        digest.update(chunk)
        size += len(chunk)
    assert size == len(DOWNLOAD_CHUNK) * DOWNLOAD_CHUNKS
    assert digest.hexdigest() == expected


async def test_head_returns_the_upstream_headers_without_a_body(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    client = await _gateway(registry_path, start_upstream, gateway_client)

    head = await raw_request(client, "/api/v1/files/document", method="HEAD")
    get = await raw_request(client, "/api/v1/files/document")

    assert head.status == get.status == 200
    assert head.body == b""
    assert len(get.body) == 12_345
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == "12345"
    assert head.headers["Content-Type"] == get.headers["Content-Type"] == "text/plain"
    assert head.headers["X-Doc"] == "1"
    assert head.headers["X-Gateway-Service"] == "file-service"


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_carry_no_body_and_no_content_length(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, status: int
) -> None:
    client = await _gateway(registry_path, start_upstream, gateway_client)

    response = await raw_request(client, f"/api/v1/files/status/{status}")

    assert response.status == status
    assert response.body == b""
    assert "Content-Length" not in response.headers
    assert "Transfer-Encoding" not in response.headers
    assert response.headers["ETag"] == '"v1"'
    assert response.headers["X-Upstream"] == "yes"

    # The connection stays in sync: the next response on a keep-alive connection parses cleanly.
    for _ in range(2):
        again = await client.get(f"/api/v1/files/status/{status}")
        assert again.status == status
        assert await again.read() == b""
    follow = await client.get("/api/v1/files/document")
    assert follow.status == 200
    assert len(await follow.read()) == 12_345

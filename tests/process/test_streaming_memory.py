"""200 MB bodies through a real gateway process: bytes intact, and the gateway's memory stays flat."""
from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.support import GatewayProcess, service, write_registry

pytestmark = pytest.mark.slow

CHUNK = 64 * 1024
CHUNKS = 3200
TOTAL = CHUNK * CHUNKS  # 200 MiB
PEAK_LIMIT_KIB = 150 * 1024
GROWTH_LIMIT_KIB = 64 * 1024
_BASE = hashlib.shake_256(b"kadai streaming test").digest(CHUNK)


def _chunk(index: int, seed: bytes) -> bytes:
    """The index-th 64 KiB chunk of a deterministic stream: every chunk differs, none is all zeros."""
    return seed + index.to_bytes(8, "big") + _BASE[len(seed) + 8:]


async def _generated(seed: bytes, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    for index in range(CHUNKS):
        chunk = _chunk(index, seed)
        digest.update(chunk)
        yield chunk


async def _receive(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "size": size})


async def _send(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = TOTAL
    await response.prepare(request)
    for index in range(CHUNKS):
        await response.write(_chunk(index, b"down"))
    await response.write_eof()
    return response


def _rss_kib(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("VmRSS not found")


async def _gateway(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> GatewayProcess:
    app = web.Application(client_max_size=1024)  # _receive streams; it never calls request.read()
    app.router.add_post("/files/upload", _receive)
    app.router.add_get("/files/download", _send)
    base = await start_upstream(app)
    route = {"prefix": "/api/v1/files", "max_body_size": "300MB", "timeouts": {"read": "30s", "total": "0"}}
    return gateway_process(write_registry(tmp_path / "registry.yaml", {"files": service([base], route)}))


async def _warm_up(session: aiohttp.ClientSession, gw: GatewayProcess) -> None:
    """One small exchange each way, so the baseline includes the imports and buffers every request needs."""
    async with session.post(f"{gw.url}/api/v1/files/upload", data=b"warm-up") as response:
        assert response.status == 200
        assert (await response.json())["size"] == 7
    async with session.get(f"{gw.url}/api/v1/health") as response:
        assert response.status == 200
        await response.read()


def _report(direction: str, gw: GatewayProcess, before_peak: int, before_rss: int) -> int:
    after_peak = gw.rss_peak_kib()
    print(
        f"\n{direction} {TOTAL / 2**20:.0f} MiB: gateway RSS before {before_rss / 1024:.1f} MiB "
        f"(peak {before_peak / 1024:.1f} MiB), peak after {after_peak / 1024:.1f} MiB, "
        f"growth {(after_peak - before_peak) / 1024:.1f} MiB, now {_rss_kib(gw) / 1024:.1f} MiB"
    )
    return after_peak


async def test_200mb_upload_streams_through(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw = await _gateway(tmp_path, start_upstream, gateway_process)
    sent = hashlib.sha256()
    async with aiohttp.ClientSession() as session:
        await _warm_up(session, gw)
        before_peak, before_rss = gw.rss_peak_kib(), _rss_kib(gw)
        async with session.post(f"{gw.url}/api/v1/files/upload", data=_generated(b"up", sent)) as response:
            assert response.status == 200, await response.text()
            received = await response.json()
    after_peak = _report("upload", gw, before_peak, before_rss)
    assert received == {"sha256": sent.hexdigest(), "size": TOTAL}
    assert after_peak < PEAK_LIMIT_KIB
    assert after_peak - before_peak < GROWTH_LIMIT_KIB


async def test_200mb_download_streams_through(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw = await _gateway(tmp_path, start_upstream, gateway_process)
    expected = hashlib.sha256()
    for index in range(CHUNKS):
        expected.update(_chunk(index, b"down"))
    received = hashlib.sha256()
    size = 0
    async with aiohttp.ClientSession() as session:
        await _warm_up(session, gw)
        before_peak, before_rss = gw.rss_peak_kib(), _rss_kib(gw)
        async with session.get(f"{gw.url}/api/v1/files/download") as response:
            assert response.status == 200
            assert response.headers["X-Gateway-Service"] == "files"
            async for chunk in response.content.iter_any():
                received.update(chunk)
                size += len(chunk)
    after_peak = _report("download", gw, before_peak, before_rss)
    assert size == TOTAL
    assert received.hexdigest() == expected.hexdigest()
    assert after_peak < PEAK_LIMIT_KIB
    assert after_peak - before_peak < GROWTH_LIMIT_KIB

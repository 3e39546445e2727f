"""A real upstream process killed with SIGKILL: 502 envelopes, other routes unaffected, recovery on restart."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.process.helpers import json_lines, wait_until
from tests.support import GatewayProcess, free_port, service, write_registry

pytestmark = pytest.mark.slow

UPSTREAM_SCRIPT = '''
import asyncio
import os
import sys

from aiohttp import web

port, marks = int(sys.argv[1]), sys.argv[2]


def mark(text):
    with open(marks, "a") as file:
        file.write(text + "\\n")


async def handle(request):
    if request.path.startswith("/flaky/hang"):
        mark("hang")
        await asyncio.sleep(60)
    if request.path.startswith("/flaky/stream"):
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 10 * 65536
        await response.prepare(request)
        await response.write(b"x" * 65536)
        mark("streaming")
        await asyncio.sleep(60)
        return response
    return web.json_response({"pid": os.getpid(), "path": request.path})


app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
'''


class UpstreamProcess:
    """A tiny aiohttp app in its own process, on a fixed port, so it can be killed and started again."""

    def __init__(self, directory: Path, port: int) -> None:
        self.script = directory / "upstream_app.py"
        self.script.write_text(UPSTREAM_SCRIPT)
        self.marks = directory / "upstream.marks"
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 10.0) -> UpstreamProcess:
        self.marks.write_text("")
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), str(self.port), str(self.marks)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"upstream exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"upstream did not listen within {wait}s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def marked(self, text: str) -> bool:
        return text in self.marks.read_text().splitlines()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def upstream_process(tmp_path: Path) -> Iterator[UpstreamProcess]:
    upstream = UpstreamProcess(tmp_path, free_port())
    try:
        yield upstream.start()
    finally:
        upstream.stop()


async def stable_upstream(start_upstream: StartUpstream) -> str:
    """An upstream that answers every GET with its path (the instance that stays up)."""
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"service": "stable", "path": request.path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return await start_upstream(app)


async def _gateway(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    upstream: UpstreamProcess,
) -> GatewayProcess:
    registry = write_registry(
        tmp_path / "registry.yaml",
        {
            # One attempt per request and no breaker: these tests pin the core's own error mapping;
            # retries and breakers have tests of their own.
            "flaky": service(
                [upstream.url], {"prefix": "/api/v1/flaky", "timeouts": {"read": "30s"}}, retry=False, breaker=False
            ),
            "stable": service([await stable_upstream(start_upstream)], "/api/v1/stable"),
        },
    )
    return gateway_process(registry)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.json()


def _assert_bad_gateway(status: int, content_type: str, body: Any) -> None:
    assert status == 502, body
    assert content_type.startswith("application/json")
    assert body["success"] is False
    assert body["statusCode"] == 502
    assert isinstance(body["error"], str) and body["error"]
    assert body["details"] == {"service": "flaky"}
    assert body["timestamp"].endswith("Z")


async def test_killed_upstream_gives_502_and_recovers_on_restart(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    upstream_process: UpstreamProcess,
) -> None:
    gw = await _gateway(tmp_path, start_upstream, gateway_process, upstream_process)
    async with aiohttp.ClientSession() as session:
        status, _, body = await _get(session, f"{gw.url}/api/v1/flaky/a")
        assert status == 200
        first_pid = body["pid"]

        upstream_process.kill()
        for index in range(3):
            _assert_bad_gateway(*await _get(session, f"{gw.url}/api/v1/flaky/down/{index}"))
            status, _, body = await _get(session, f"{gw.url}/api/v1/stable/still/{index}")
            assert (status, body) == (200, {"service": "stable", "path": f"/stable/still/{index}"})

        upstream_process.start()
        assert upstream_process.proc is not None
        restarted_pid = upstream_process.proc.pid
        assert restarted_pid != first_pid
        for index in range(5):  # from the very first request on: no stale pooled connection to the dead process
            status, _, body = await _get(session, f"{gw.url}/api/v1/flaky/back/{index}")
            assert (status, body) == (200, {"pid": restarted_pid, "path": f"/flaky/back/{index}"})

        async with session.get(f"{gw.url}/metrics") as response:
            metrics = await response.text()
    assert 'kadai_gateway_upstream_errors_total{kind="connect",service="flaky"} 3.0' in metrics
    assert 'kadai_gateway_requests_total{method="GET",service="flaky",status_class="5xx"} 3.0' in metrics
    bad = [r for r in json_lines(gw.output()) if r.get("path", "").startswith("/api/v1/flaky/down/")]
    assert [r["status"] for r in bad] == [502, 502, 502]
    assert all(r["level"] == "error" for r in bad)


async def test_upstream_killed_before_answering_gives_502(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    upstream_process: UpstreamProcess,
) -> None:
    gw = await _gateway(tmp_path, start_upstream, gateway_process, upstream_process)
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(_get(session, f"{gw.url}/api/v1/flaky/hang"))
        try:
            await wait_until(lambda: upstream_process.marked("hang"), 5.0, "the request to reach the upstream")
            upstream_process.kill()
            outcome = await asyncio.wait_for(pending, 5.0)
        finally:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        _assert_bad_gateway(*outcome)
        status, _, _ = await _get(session, f"{gw.url}/api/v1/stable/x")
        assert status == 200


async def test_upstream_killed_mid_body_cuts_the_client_off(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    upstream_process: UpstreamProcess,
) -> None:
    gw = await _gateway(tmp_path, start_upstream, gateway_process, upstream_process)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/api/v1/flaky/stream") as response:
            # Headers are out with the upstream's status: the gateway can no longer turn this into a 502.
            assert response.status == 200
            assert response.content_length == 10 * 65536
            first = await asyncio.wait_for(response.content.readexactly(65536), 5.0)
            assert first == b"x" * 65536
            await wait_until(lambda: upstream_process.marked("streaming"), 5.0, "the upstream to be mid-body")
            upstream_process.kill()
            # The client must see a broken body, never a short one that looks complete.
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), 5.0)

        status, _, _ = await _get(session, f"{gw.url}/api/v1/stable/after")
        assert status == 200

    async def logged() -> bool:
        return any(
            r.get("path") == "/api/v1/flaky/stream" and r.get("failure", "").startswith("upstream reset")
            for r in json_lines(gw.output())
        )

    await wait_until(logged, 3.0, "the access log to record the broken response")


async def test_a_client_hanging_up_cancels_its_upstream_request(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """Abandoned requests must not keep pooled connections busy until the route's timeout."""
    arrived = asyncio.Event()
    gone = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        for _ in range(100):  # up to 5 s
            await asyncio.sleep(0.05)
            if request.transport is None or request.transport.is_closing():
                gone.set()
                break
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    base = await start_upstream(app)
    registry = write_registry(tmp_path / "registry.yaml", {"slow": service([base], "/api/v1/slow")})
    gw = gateway_process(registry)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /api/v1/slow/x HTTP/1.1\r\nHost: gw\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(arrived.wait(), 5.0)
    writer.close()
    await writer.wait_closed()

    await asyncio.wait_for(gone.wait(), 3.0)  # the gateway closed its upstream connection
    await wait_until(
        lambda: any(r.get("path") == "/api/v1/slow/x" for r in json_lines(gw.output())), 3.0,
        "the access log line of the abandoned request",
    )
    line = next(r for r in json_lines(gw.output()) if r.get("path") == "/api/v1/slow/x")
    assert line["status"] == 499 and line["level"] == "info"

"""`kadai gateway --workers 2`: two processes share the port, /metrics adds them up, SIGTERM stops them all."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.process.helpers import json_lines, pid_alive, spawn, wait_exit, wait_listening, wait_until
from tests.support import GatewayProcess, service, write_registry

pytestmark = pytest.mark.slow

REQUESTS = 40


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path})


async def _start(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _echo)
    base = await start_upstream(app)
    registry = write_registry(tmp_path / "registry.yaml", {"echo": service([base], "/api/v1/echo")})
    return gateway_process(registry, args=["--workers", "2"], env=env or {"KADAI_DRAIN_TIMEOUT": "5s"})


async def _pid_of_new_connection(gw: GatewayProcess) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.get(f"{gw.url}/api/v1/gateway/status") as response:
            assert response.status == 200
            pid: int = (await response.json())["data"]["pid"]
            return pid


async def _worker_pids(gw: GatewayProcess, expected: int = 2, timeout: float = 10.0) -> set[int]:
    """Open new connections until `expected` distinct worker pids have answered."""
    pids: set[int] = set()

    async def enough() -> bool:
        pids.add(await _pid_of_new_connection(gw))
        return len(pids) >= expected

    await wait_until(enough, timeout, f"{expected} distinct worker pids over new connections", interval=0.01)
    return pids


async def _echo_requests_total(session: aiohttp.ClientSession, gw: GatewayProcess) -> float:
    async with session.get(f"{gw.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kadai_gateway_requests_total{") and 'service="echo"' in line
    )


async def _send_counted(gw: GatewayProcess, count: int) -> Counter[int]:
    """Send count proxied requests, each on a new connection; returns how many each worker pid served."""
    served: Counter[int] = Counter()
    for index in range(count):
        # One connection per session: the status call and the proxied request reach the same worker.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            async with session.get(f"{gw.url}/api/v1/gateway/status") as response:
                pid = (await response.json())["data"]["pid"]
            async with session.get(f"{gw.url}/api/v1/echo/n/{index}") as response:
                assert response.status == 200
                assert await response.json() == {"path": f"/echo/n/{index}"}
            served[pid] += 1
    return served


async def test_two_workers_serve_and_metrics_add_up(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw = await _start(tmp_path, start_upstream, gateway_process)
    assert gw.proc is not None
    pids = await _worker_pids(gw)
    assert gw.proc.pid not in pids, "the supervisor itself answered"

    served = await _send_counted(gw, REQUESTS)
    print(f"\nrequests per worker pid: {dict(served)}")
    assert set(served) == pids, f"both workers should have served proxied requests: {dict(served)}"

    async with aiohttp.ClientSession() as session:

        async def counted() -> bool:
            total = await _echo_requests_total(session, gw)
            assert total <= REQUESTS, f"counted {total} of {REQUESTS} requests"
            return total == REQUESTS

        # The counter is bumped just after the reply is written: allow the last one a moment.
        await wait_until(counted, 3.0, f"kadai_gateway_requests_total for echo to reach {REQUESTS}")
        # Any worker answering /metrics reports the same total.
        for _ in range(6):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                assert await _echo_requests_total(fresh, gw) == REQUESTS

    gw.signal(signal.SIGTERM)
    code, waited = await wait_exit(gw, 10.0)
    assert code == 0, gw.output()[-3000:]
    assert waited < 5.0
    await wait_until(lambda: not any(pid_alive(pid) for pid in pids), 2.0, "the workers to be gone")
    stopped = [r for r in json_lines(gw.output()) if r["message"] == "gateway stopped"]
    assert len(stopped) == 2


async def test_killed_worker_is_replaced_and_its_counts_kept(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw = await _start(tmp_path, start_upstream, gateway_process)
    started = time.monotonic()
    pids = await _worker_pids(gw)
    served = await _send_counted(gw, 20)
    assert set(served) == pids, dict(served)

    # A worker dying right after start-up counts as a crash loop (the supervisor gives up); after that it is replaced.
    await asyncio.sleep(max(0.0, 6.0 - (time.monotonic() - started)))
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    new_pids = await _worker_pids(gw, timeout=15.0)
    survivors = pids - {victim}
    assert victim not in new_pids and survivors <= new_pids, (pids, new_pids)

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/api/v1/echo/after") as response:
            assert response.status == 200
            await response.read()
        expected = 20 + 1

        async def counted() -> bool:
            return await _echo_requests_total(session, gw) == expected

        # The dead worker's requests stay in the total.
        await wait_until(counted, 3.0, f"the echo total to be {expected}")

    restarted = [r for r in json_lines(gw.output()) if r["message"] == "worker exited; starting another"]
    assert [r["pid"] for r in restarted] == [victim]
    gw.signal(signal.SIGTERM)
    code, _ = await wait_exit(gw, 10.0)
    assert code == 0
    await wait_until(lambda: not any(pid_alive(pid) for pid in new_pids), 2.0, "the workers to be gone")


async def test_sighup_to_the_supervisor_reloads_every_worker(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _echo)
    base = await start_upstream(app)
    registry = write_registry(tmp_path / "registry.yaml", {"echo": service([base], "/api/v1/echo")})
    # Polling once a minute: only the forwarded SIGHUP can apply the edit within the test.
    gw = gateway_process(
        registry, args=["--workers", "2"], env={"KADAI_RELOAD_INTERVAL": "60s", "KADAI_DRAIN_TIMEOUT": "5s"}
    )
    pids = await _worker_pids(gw)
    write_registry(registry, {"echo": service([base], "/api/v1/echo", "/api/v1/echo2")})
    gw.signal(signal.SIGHUP)
    await asyncio.sleep(0.5)

    revisions: dict[int, int] = {}

    async def every_worker_reloaded() -> bool:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            async with session.get(f"{gw.url}/api/v1/gateway/status") as response:
                data = (await response.json())["data"]
            async with session.get(f"{gw.url}/api/v1/echo2/x") as response:
                await response.read()
                assert response.status == 200, f"worker {data['pid']} still routes the old registry"
        revisions[data["pid"]] = data["config"]["revision"]
        return set(revisions) == pids

    await wait_until(every_worker_reloaded, 10.0, "both workers to answer the new route", interval=0.01)
    assert set(revisions.values()) == {2}
    assert gw.proc is not None and gw.proc.poll() is None, "SIGHUP stopped the supervisor"


SpawnGateway = Callable[..., GatewayProcess]


@pytest.fixture
def spawned() -> Iterator[SpawnGateway]:
    """Start gateways without waiting for their port; stopped (their process group killed if own) at teardown."""
    started: list[tuple[GatewayProcess, bool]] = []

    def start(process: GatewayProcess, new_session: bool = False) -> GatewayProcess:
        started.append((spawn(process, new_session=new_session), new_session))
        return process

    yield start
    for process, own_group in started:
        process.stop()
        if own_group and process.proc is not None:
            try:
                os.killpg(process.proc.pid, signal.SIGKILL)  # workers a failed test may have left behind
            except ProcessLookupError:
                pass


async def test_sigterm_to_the_process_group_still_drains(
    tmp_path: Path, start_upstream: StartUpstream, spawned: SpawnGateway
) -> None:
    """Ctrl-C in a terminal, or systemd's default KillMode=control-group, signal every process of the group."""
    arrived = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        await asyncio.sleep(1.5)
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    base = await start_upstream(app)
    registry = write_registry(tmp_path / "registry.yaml", {"slow": service([base], "/api/v1/slow")})
    gw = spawned(
        GatewayProcess(registry, args=["--workers", "2"], env={"KADAI_DRAIN_TIMEOUT": "10s"}), new_session=True
    )
    await wait_listening(gw)
    await _worker_pids(gw)
    assert gw.proc is not None

    async def fetch(index: int) -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.get(f"{gw.url}/api/v1/slow/{index}") as response:
                await response.read()
                return response.status

    tasks = [asyncio.create_task(fetch(i)) for i in range(10)]
    try:
        await wait_until(lambda: arrived == 10, 5.0, "the requests to reach the upstream")
        os.killpg(gw.proc.pid, signal.SIGTERM)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    code, _ = await wait_exit(gw, 10.0)
    assert outcomes == [200] * 10
    assert code == 0


async def test_sighup_while_workers_start_does_not_stop_the_gateway(tmp_path: Path, spawned: SpawnGateway) -> None:
    registry = write_registry(tmp_path / "registry.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    gw = spawned(GatewayProcess(registry, args=["--workers", "2"]))
    await wait_until(lambda: "gateway supervisor started" in gw.output(), 10.0, "the supervisor to start its workers")
    gw.signal(signal.SIGHUP)  # e.g. `systemctl reload` right after a start, or while a worker is being replaced
    await wait_listening(gw)
    assert len(await _worker_pids(gw)) == 2
    assert gw.proc is not None and gw.proc.poll() is None


async def test_workers_all_report_draining_for_the_whole_drain_delay(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """The supervisor waits for the delay plus the drain, not a fixed time per worker."""
    gw = await _start(
        tmp_path, start_upstream, gateway_process, env={"KADAI_DRAIN_DELAY": "3s", "KADAI_DRAIN_TIMEOUT": "1s"}
    )
    await _worker_pids(gw)
    started = time.monotonic()
    gw.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)  # the signal travels: supervisor, then each worker's event loop
    answers: list[bool] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while time.monotonic() - started < 2.5:
            async with session.get(f"{gw.url}/api/v1/health/detailed") as response:
                assert response.status == 503
                answers.append((await response.json())["data"]["gateway"]["draining"])
            await asyncio.sleep(0.1)
    assert len(answers) >= 10 and all(answers)  # every worker kept serving, saying it drains
    code, _ = await wait_exit(gw, 15.0)
    assert code == 0
    assert time.monotonic() - started >= 3.0

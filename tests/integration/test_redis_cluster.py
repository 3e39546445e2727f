"""Rate limits on a Redis Cluster (REDIS_CLUSTER=true): a real three-node cluster on loopback ports,
started by this module. Clients' buckets spread over the nodes by their {hash tag}, each decision still
one atomic EVALSHA on the node owning its slot, and two gateways on the cluster enforce one limit."""
from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.app import Gateway, create_app
from gateway.config.settings import Settings, load_settings
from gateway.config.errors import ConfigError
from gateway.ratelimit import RedisBackend
from gateway.tokens import mint_token
from tests import backends
from tests.integration.helpers import Client, StartRecorder
from tests.integration.test_rate_limit import limiter_of, limits, metrics_text, users_registry

NODES = 3
MakeClient = Callable[[Path], Awaitable[Client]]


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _node_port() -> int:
    """A free port whose cluster bus port (10,000 higher, so at most 65,535) is free too."""
    for _ in range(200):
        port = random.randint(20_000, 55_000)
        try:
            with socket.socket() as sock, socket.socket() as bus:
                sock.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise AssertionError("no free pair of ports for a Redis Cluster node")


def _cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three cluster-enabled redis-servers, joined with `redis-cli --cluster create`, no replicas."""
    binary = backends.redis_server_binary("the Redis Cluster tests")
    home = tmp_path_factory.mktemp("redis-cluster")
    ports = [_node_port() for _ in range(NODES)]
    servers = [
        subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--dir", str(home), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--logfile", str(home / f"{port}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port in ports:
            _wait(lambda port=port: backends.redis_answers(f"redis://127.0.0.1:{port}", 0.5), 10, f"node {port}")
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        for port in ports:
            _wait(lambda port=port: "cluster_state:ok" in _cli(port, "cluster", "info"), 20, f"node {port} ready")
        yield ports
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=10)


@pytest.fixture
def cluster_url(cluster_ports: list[int]) -> str:
    return f"redis://127.0.0.1:{cluster_ports[0]}"


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], cluster_url: str, cluster_ports: list[int]
) -> AsyncIterator[MakeClient]:
    """A gateway with REDIS_CLUSTER on; the cluster's keys are emptied between tests."""
    settings = Settings(redis_url=cluster_url, redis_cluster=True, reload_interval=0.1, drain_timeout=2.0)

    async def make(registry: Path) -> Client:
        return await aiohttp_client(TestServer(create_app(Gateway(settings, registry)), host="127.0.0.1"))

    yield make
    for port in cluster_ports:
        _cli(port, "flushall")


def _bearer(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(Settings(), sub, 'customer')}"}


def _limits(tiers: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """Limits for the tests where every decision must reach the cluster: the limiter's 20 ms default would
    let a loaded CI machine fail open now and then (a slow answer is not what these tests are about)."""
    return limits(tiers, timeout="500ms")


async def _statuses(client: Client, sub: str, count: int) -> list[int]:
    result = []
    for _ in range(count):
        async with client.get("/api/v1/users/1", headers=_bearer(sub)) as response:
            await response.read()
            result.append(response.status)
    return result


async def _keys_per_node(ports: list[int]) -> list[int]:
    counts = []
    for port in ports:
        node = Redis(port=port)
        counts.append(len([key async for key in node.scan_iter(match="kadai:ratelimit:*")]))
        await node.aclose()
    return counts


async def test_clients_spread_over_the_nodes_and_each_is_limited(
    make_client: MakeClient, tmp_path: Path, start_recorder: StartRecorder, cluster_ports: list[int]
) -> None:
    upstream = await start_recorder("users")
    client = await make_client(
        users_registry(tmp_path / "registry.yaml", upstream.url, _limits({"minute": (3, "1m")}), auth=True)
    )
    assert isinstance(limiter_of(client).backend, RedisBackend)  # not the single-node batched backend

    subs = [f"user-{n}" for n in range(12)]
    for sub in subs:
        assert await _statuses(client, sub, 4) == [200, 200, 200, 429], sub

    per_node = await _keys_per_node(cluster_ports)
    assert sum(per_node) == len(subs)  # one bucket per client, each on exactly one node
    assert sum(1 for count in per_node if count) >= 2, per_node  # the slots spread them
    decisions = await metrics_text(client)
    assert 'kadai_gateway_ratelimit_decisions_total{outcome="rejected",service="user-service",tier="minute"} 12.0' in decisions


async def test_two_gateways_on_the_cluster_enforce_one_limit(
    make_client: MakeClient, tmp_path: Path, start_recorder: StartRecorder
) -> None:
    upstream = await start_recorder("users")
    registry = users_registry(tmp_path / "registry.yaml", upstream.url, _limits({"minute": (10, "1m")}), auth=True)
    first, second = await make_client(registry), await make_client(registry)

    results = await asyncio.gather(*(_statuses(gateway, "shared-user", 8) for gateway in (first, second)))

    assert sum(status == 200 for statuses in results for status in statuses) == 10
    assert sum(status == 429 for statuses in results for status in statuses) == 6


async def test_a_flushed_script_cache_is_reloaded_on_every_node(
    make_client: MakeClient, tmp_path: Path, start_recorder: StartRecorder, cluster_ports: list[int]
) -> None:
    upstream = await start_recorder("users")
    client = await make_client(
        users_registry(tmp_path / "registry.yaml", upstream.url, _limits({"minute": (100, "1m")}), auth=True)
    )
    assert await _statuses(client, "before-flush", 1) == [200]
    backend = limiter_of(client).backend
    assert isinstance(backend, RedisBackend)
    loads_before = backend.script_loads
    for port in cluster_ports:
        assert _cli(port, "script", "flush").strip() == "OK"

    for n in range(8):  # clients on every node meet NOSCRIPT, and get through
        assert await _statuses(client, f"after-flush-{n}", 2) == [200, 200]
    # One reload after the first NOSCRIPT: redis-py sends SCRIPT LOAD to every primary.
    assert backend.script_loads == loads_before + 1
    assert 'outcome="failed_open"' in (text := await metrics_text(client))
    assert 'kadai_gateway_ratelimit_decisions_total{outcome="failed_open",service="user-service",tier="-"} 0.0' in text
    cluster = RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    try:
        from gateway.ratelimit.redis_backend import SCRIPT_SHA

        loaded: Any = await cluster.script_exists(SCRIPT_SHA)
        assert loaded == [True]  # redis-py folds the nodes' answers: loaded on all of them
    finally:
        await cluster.aclose()


def test_redis_cluster_is_validated_with_the_url() -> None:
    assert load_settings({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://10.0.0.5:7000"}).redis_cluster is True
    assert load_settings({}).redis_cluster is False
    with pytest.raises(ConfigError, match="REDIS_CLUSTER: expected true or false, got 'maybe'"):
        load_settings({"REDIS_CLUSTER": "maybe"})
    with pytest.raises(ConfigError, match="REDIS_CLUSTER: needs REDIS_URL to name a node"):
        load_settings({"REDIS_CLUSTER": "true", "REDIS_URL": "memory://"})


async def test_a_cluster_down_at_start_up_does_not_stop_the_gateway(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path, start_recorder: StartRecorder
) -> None:
    with socket.socket() as unused:  # bound, not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{unused.getsockname()[1]}"
        upstream = await start_recorder("users")
        settings = Settings(redis_url=url, redis_cluster=True, reload_interval=0.1, drain_timeout=2.0)
        registry = users_registry(tmp_path / "registry.yaml", upstream.url, limits({"minute": (3, "1m")}), auth=True)
        client = await aiohttp_client(TestServer(create_app(Gateway(settings, registry)), host="127.0.0.1"))

        # The limiter fails open (its default) and says so; the request is served.
        assert await _statuses(client, "early-user", 1) == [200]
        text = await metrics_text(client)
    assert 'kadai_gateway_ratelimit_decisions_total{outcome="failed_open",service="user-service",tier="-"} 1.0' in text

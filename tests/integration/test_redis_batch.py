"""The batched Redis rate-limit backend against real Redis servers: the same decisions as RedisBackend, one
write per event-loop tick, NOSCRIPT, killed and stalled connections, cancelled callers, AUTH, SELECT and
unix sockets. Tests that pause, kill or flush use a private redis-server (password, unix socket) of their own."""
from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from yarl import URL

from gateway.ratelimit import Decision, Plan, RedisBackend, Tier
from gateway.ratelimit.redis_batch import BatchedRedisBackend
from gateway.redis_client import open_redis
from tests import backends
from tests.backends import redis_answers
from tests.support import free_port

pytestmark = pytest.mark.redis

MakeBackend = Callable[..., BatchedRedisBackend]
MINUTE = 60_000


@dataclass
class Names:
    """Tier and client names unique to one test: its buckets and its connection are its own."""

    tag: str

    def tier(self, name: str, limit: int, window_ms: int = MINUTE) -> Tier:
        return Tier(f"{name}_{self.tag}", limit, window_ms)

    @property
    def client_name(self) -> str:
        return f"kadai-gateway-test-{self.tag}"


@pytest.fixture
def names() -> Names:
    return Names(secrets.token_hex(4))


@pytest.fixture
async def make_backend(names: Names) -> AsyncIterator[MakeBackend]:
    """Batched backends named after the test; closed at teardown."""
    made: list[BatchedRedisBackend] = []

    def make(url: str, **options: Any) -> BatchedRedisBackend:
        backend = BatchedRedisBackend(url, client_name=names.client_name, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


async def delete_buckets(admin: Redis, names: Names) -> None:
    keys = [key async for key in admin.scan_iter(match=f"kadai:ratelimit:*_{names.tag}.*", count=1000)]
    if keys:
        await admin.delete(*keys)


def with_db(url: str, db: int) -> str:
    return str(URL(url).with_path(f"/{db}"))


@pytest.fixture
async def admin(redis_server: str, names: Names) -> AsyncIterator[Redis]:
    """A redis-py client on the shared Redis; deletes the test's buckets at teardown."""
    client = Redis.from_url(redis_server)
    yield client
    await delete_buckets(client, names)
    await client.aclose()


async def connections_named(admin: Redis, name: str) -> list[dict[str, Any]]:
    return [client for client in await admin.client_list() if client["name"] == name]


# --- on the shared Redis ------------------------------------------------------------------------------------


async def test_decisions_equal_those_of_redis_backend(
    redis_server: str, admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    reference = open_redis(redis_server)
    try:
        runs: dict[str, tuple[list[Decision], float]] = {}
        for label, backend in (("old", RedisBackend(lambda: reference)), ("new", make_backend(redis_server))):
            # Two plans sharing tier b: the first refuses on its tier a, the second on the shared b.
            a, b, c = names.tier(f"a{label}", 3), names.tier(f"b{label}", 5, 10 * MINUTE), names.tier(f"c{label}", 10)
            first, second = Plan([a, b]), Plan([c, b])
            started = time.monotonic()
            decisions = [await backend.acquire(first, "ip:10.0.0.1") for _ in range(4)]
            decisions += [await backend.acquire(second, "ip:10.0.0.1") for _ in range(3)]
            decisions += [await backend.acquire(first, "ip:10.0.0.2")]
            runs[label] = decisions, time.monotonic() - started
    finally:
        await reference.aclose()

    (old, old_took), (new, new_took) = runs["old"], runs["new"]
    assert [d.allowed for d in new] == [True, True, True, False, True, True, False, True]
    assert [d[:3] for d in new] == [d[:3] for d in old]  # allowed, tier, remaining
    # The times count down on Redis's clock from each bucket's first use: the runs may differ by how long
    # each took, and nothing else (a wrong field would be off by seconds).
    slack = (max(old_took, new_took) * 1000) + 1
    for old_decision, new_decision in zip(old, new):
        assert abs(old_decision.reset_ms - new_decision.reset_ms) <= slack, (old_decision, new_decision)
        assert abs(old_decision.retry_after_ms - new_decision.retry_after_ms) <= slack, (old_decision, new_decision)
    assert new[0] == old[0] == Decision(True, 0, 2, 20_000, 0)  # fresh buckets: no clock in it


async def test_one_tick_of_acquires_is_one_write_with_exact_counts(
    redis_server: str, admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    backend = make_backend(redis_server)
    plan = Plan([names.tier("burst", 7), names.tier("hour", 1000, 60 * MINUTE)])
    await backend.acquire(plan, "warm-up")  # connects and loads the script
    assert backend.connection is not None
    writes = backend.connection.writes

    clients = [f"sub:{n}" for n in range(30)] * 10
    decisions = await asyncio.gather(*(backend.acquire(plan, client) for client in clients))

    assert backend.connection.writes == writes + 1
    for n in range(30):
        mine = [d for client, d in zip(clients, decisions) if client == f"sub:{n}"]
        # Replies come back in the order the calls were made: each client's first seven pass.
        assert [d.allowed for d in mine] == [True] * 7 + [False] * 3
        assert [d.remaining for d in mine[:7]] == [6, 5, 4, 3, 2, 1, 0]
        assert {d.tier for d in mine[7:]} == {0}


async def test_concurrent_first_calls_share_one_connection(
    redis_server: str, admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    backend = make_backend(redis_server)
    plan = Plan([names.tier("t", 100)])
    decisions = await asyncio.gather(*(backend.acquire(plan, "c") for _ in range(20)))
    assert sorted(d.remaining for d in decisions) == list(range(80, 100))
    assert len(await connections_named(admin, names.client_name)) == 1


async def test_select_puts_the_buckets_in_the_urls_db(
    redis_server: str, admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    db = int(URL(redis_server).path.strip("/") or 0) + 3
    other = Redis.from_url(with_db(redis_server, db))
    try:
        backend = make_backend(with_db(redis_server, db))
        tier = names.tier("t", 5)
        await backend.acquire(Plan([tier]), "c")
        key = Plan([tier]).keys("c")[0]
        assert await other.exists(key) and not await admin.exists(key)
    finally:
        await delete_buckets(other, names)
        await other.aclose()


@dataclass
class Silent:
    """A TCP server that accepts connections and never answers: a Redis that hangs before its handshake."""

    port: int
    accepted: int = 0


@pytest.fixture
async def silent() -> AsyncIterator[Silent]:
    found = Silent(0)

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        found.accepted += 1
        await reader.read()  # returns when the client gives up
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    yield found
    server.close()
    await server.wait_closed()


async def test_refused_connection(make_backend: MakeBackend, names: Names) -> None:
    backend = make_backend(f"redis://:secret@127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisConnectionError, match=r"^cannot connect to Redis at redis://:\*\*\*@127.0.0.1"):
        await backend.acquire(Plan([names.tier("t", 5)]), "c")


async def test_connect_timeout_is_one_attempt_for_concurrent_callers(
    make_backend: MakeBackend, names: Names, silent: Silent
) -> None:
    backend = make_backend(f"redis://127.0.0.1:{silent.port}/0", connect_timeout=0.1)
    plan = Plan([names.tier("t", 5)])
    results = await asyncio.gather(*(backend.acquire(plan, "c") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert silent.accepted == 1
    with pytest.raises(RedisTimeoutError, match="took over 0.1 s"):
        await backend.acquire(plan, "c")  # a later call tries again
    assert silent.accepted == 2


async def test_close_while_connecting_fails_the_callers_with_connection_error(
    make_backend: MakeBackend, names: Names, silent: Silent
) -> None:
    backend = make_backend(f"redis://127.0.0.1:{silent.port}/0", connect_timeout=5)
    waiting = asyncio.create_task(backend.acquire(Plan([names.tier("t", 5)]), "c"))
    while not silent.accepted:
        await asyncio.sleep(0.001)
    await backend.close()
    with pytest.raises(RedisConnectionError, match="closed while connecting"):
        await waiting


# --- on a private redis-server ------------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    url: str
    """redis://:password@127.0.0.1:port/0"""
    socket: Path
    password: str


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A redis-server of this module's own, with a password and a unix socket, which tests may pause and kill."""
    binary = backends.redis_server_binary("the batched backend's fault tests")
    port, password = free_port(), secrets.token_hex(8)
    path = tmp_path_factory.mktemp("redis") / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", str(path), "--unixsocketperm", "700",
         "--requirepass", password, "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(url, timeout=0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the private redis-server did not answer on port {port}")
            time.sleep(0.01)
        yield PrivateRedis(url, path, password)
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
async def private_admin(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis.url)
    yield client
    await client.execute_command("CLIENT", "UNPAUSE")
    await client.aclose()


async def test_script_flush_loads_the_script_once_per_flush(
    private_redis: PrivateRedis, private_admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    backend = make_backend(private_redis.url)
    plan = Plan([names.tier("t", 8)])
    await private_admin.script_flush()
    assert (await backend.acquire(plan, "warm-up")).allowed
    assert backend.script_loads == 1

    await private_admin.script_flush()
    clients = [f"c{n}" for n in range(5)] * 10
    decisions = await asyncio.gather(*(backend.acquire(plan, client) for client in clients))
    assert backend.script_loads == 2  # fifty NOSCRIPTs in one batch, one SCRIPT LOAD
    for n in range(5):
        assert [d.allowed for client, d in zip(clients, decisions) if client == f"c{n}"] == [True] * 8 + [False] * 2

    await private_admin.script_flush()
    assert (await backend.acquire(plan, "warm-up")).remaining == 6
    assert backend.script_loads == 3


async def test_a_killed_connection_fails_its_waiting_calls_and_the_next_call_reconnects(
    private_redis: PrivateRedis, private_admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    backend = make_backend(private_redis.url)
    plan = Plan([names.tier("t", 5)])
    assert (await backend.acquire(plan, "c")).remaining == 4
    [before] = await connections_named(private_admin, names.client_name)

    # Paused writes hold the EVALSHAs in Redis, unanswered, while the connection is killed.
    await private_admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    assert backend.connection is not None
    writes = backend.connection.writes
    waiting = [asyncio.create_task(backend.acquire(plan, "c")) for _ in range(3)]
    while backend.connection.writes == writes:
        await asyncio.sleep(0)
    await private_admin.client_kill_filter(_id=before["id"])
    results = await asyncio.gather(*waiting, return_exceptions=True)
    await private_admin.execute_command("CLIENT", "UNPAUSE")
    assert all(isinstance(r, RedisConnectionError) for r in results), results

    assert (await backend.acquire(plan, "c")).remaining == 3  # the killed calls never ran
    [after] = await connections_named(private_admin, names.client_name)
    assert after["id"] != before["id"]

    # Killed while idle: the next call sends nothing on the dead connection and opens a new one.
    await private_admin.client_kill_filter(_id=after["id"])
    while not backend.connection.closed:
        await asyncio.sleep(0.001)
    assert (await backend.acquire(plan, "c")).remaining == 2


async def test_a_cancelled_caller_does_not_shift_the_replies_of_later_ones(
    private_redis: PrivateRedis, private_admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    backend = make_backend(private_redis.url)
    plan = Plan([names.tier("t", 5)])
    for _ in range(3):
        await backend.acquire(plan, "y")
    connection = backend.connection

    await private_admin.execute_command("CLIENT", "PAUSE", 200, "WRITE")  # Redis stalls our writes for 0.2 s
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await backend.acquire(plan, "x")
    decisions = await asyncio.gather(*(backend.acquire(plan, client) for client in ("x", "y", "z")))

    # x's cancelled call ran (its reply was read and dropped); each later call got its own reply.
    assert [d.remaining for d in decisions] == [3, 1, 4]
    assert backend.connection is connection


async def test_the_callers_timeout_fails_a_late_reply_and_later_calls_get_their_own(
    private_redis: PrivateRedis, private_admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    backend = make_backend(private_redis.url)
    plan = Plan([names.tier("t", 5)])
    for _ in range(3):
        await backend.acquire(plan, "y")
    connection = backend.connection

    await private_admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # Redis stalls our writes
    started = asyncio.get_running_loop().time()
    late = await asyncio.gather(*(backend.acquire(plan, "x", 0.02) for _ in range(2)), return_exceptions=True)
    waited = asyncio.get_running_loop().time() - started
    await private_admin.execute_command("CLIENT", "UNPAUSE")
    assert [type(result) for result in late] == [TimeoutError, TimeoutError]
    assert waited < 2.5  # the callers' timeout ended the wait, not the end of the 5 s pause
    decisions = await asyncio.gather(*(backend.acquire(plan, client, 1.0) for client in ("x", "y", "z")))

    # Both timed-out calls ran (their replies were read and dropped); each later call got its own reply.
    assert [d.remaining for d in decisions] == [2, 1, 4]
    assert backend.connection is connection


async def test_a_stalled_redis_drops_the_connection(
    private_redis: PrivateRedis, private_admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    plan = Plan([names.tier("t", 5)])
    stalling = make_backend(private_redis.url, stall_timeout=0.05)
    crowded = make_backend(private_redis.url, max_pending=4)
    await stalling.acquire(plan, "warm-up")
    await crowded.acquire(plan, "warm-up")

    await private_admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    with pytest.raises(RedisConnectionError, match="Redis answered nothing for 0.05 s with 1 replies outstanding"):
        await stalling.acquire(plan, "c")
    results = await asyncio.gather(*(crowded.acquire(plan, "c") for _ in range(5)), return_exceptions=True)
    await private_admin.execute_command("CLIENT", "UNPAUSE")
    assert [type(r) for r in results] == [RedisConnectionError] * 5
    assert "4 Redis replies outstanding" in str(results[0]) and "too many replies" in str(results[4])

    assert (await stalling.acquire(plan, "d")).allowed
    assert (await crowded.acquire(plan, "d")).allowed


async def test_credentials_user_and_unix_socket(
    private_redis: PrivateRedis, private_admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    plan = Plan([names.tier("t", 5)])
    wrong = private_redis.url.replace(private_redis.password, "not-the-password")
    with pytest.raises(AuthenticationError, match=r"^Redis at redis://:\*\*\*@127.*refused the URL's credentials: WRONGPASS"):
        await make_backend(wrong).acquire(plan, "c")

    user = f"gateway_{names.tag}"
    await private_admin.execute_command("ACL", "SETUSER", user, "on", ">user-secret", "~*", "&*", "+@all")
    try:
        port = URL(private_redis.url).port
        assert (await make_backend(f"redis://{user}:user-secret@127.0.0.1:{port}/0").acquire(plan, "c")).remaining == 4
        with pytest.raises(AuthenticationError, match="WRONGPASS"):
            await make_backend(f"redis://{user}:nope@127.0.0.1:{port}/0").acquire(plan, "c")
    finally:
        await private_admin.execute_command("ACL", "DELUSER", user)

    on_socket = make_backend(f"unix://:{private_redis.password}@{private_redis.socket}?db=2")
    assert (await on_socket.acquire(plan, "c")).remaining == 4  # db 2: buckets of their own
    in_db2 = Redis.from_url(with_db(private_redis.url, 2))
    try:
        assert await in_db2.exists(plan.keys("c")[0])
        on_unix = [c for c in await connections_named(private_admin, names.client_name)
                   if c["addr"].startswith(str(private_redis.socket))]
        assert [c["db"] for c in on_unix] == ["2"]
    finally:
        await in_db2.aclose()


async def test_close_fails_the_calls_in_flight_and_a_later_call_reconnects(
    private_redis: PrivateRedis, private_admin: Redis, names: Names, make_backend: MakeBackend
) -> None:
    backend = make_backend(private_redis.url)
    plan = Plan([names.tier("t", 5)])
    await backend.acquire(plan, "c")
    await private_admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    waiting = [asyncio.create_task(backend.acquire(plan, "c")) for _ in range(2)]
    await asyncio.sleep(0)
    await backend.close()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    await private_admin.execute_command("CLIENT", "UNPAUSE")
    assert [str(r) for r in results] == ["the rate-limit backend was closed"] * 2
    assert all(isinstance(r, RedisConnectionError) for r in results)
    assert backend.connection is None
    assert (await backend.acquire(plan, "c")).allowed

"""Unit tests of the batched rate-limit backend's pure parts: RESP packing, URL parsing, reply mapping, and the
pipelined connection's reply dispatch over a real socket pair (no Redis)."""
from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator

import hiredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.ratelimit import Decision, Plan, Tier
from gateway.ratelimit.redis_backend import SCRIPT_SHA
from gateway.ratelimit.redis_batch import RedisAddress, to_decision
from gateway.ratelimit.resp import EvalshaPacker, RespConnection, pack


def test_pack_is_an_array_of_bulk_strings() -> None:
    assert pack(b"SET", "k\u00fc", 15) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\xc3\xbc\r\n$2\r\n15\r\n"
    assert pack(b"PING") == b"*1\r\n$4\r\nPING\r\n"


def test_evalsha_of_a_plan_exact_bytes() -> None:
    packer = EvalshaPacker("ab", ["x:{", "yy:{"], "}", [3, 4000])
    assert packer.command("c1") == (
        b"*7\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n"
        b"$6\r\nx:{c1}\r\n$7\r\nyy:{c1}\r\n$1\r\n3\r\n$4\r\n4000\r\n"
    )


@pytest.mark.parametrize(
    ("tiers", "client"),
    [
        ((Tier("a", 3, 1000),), "ip:127.0.0.1"),
        ((Tier("a", 3, 1000), Tier("b", 100, 3_600_000)), "sub:u-1"),
        ((Tier("a", 1, 1), Tier("b", 2, 2), Tier("c", 10**6, 86_400_000)), "sub:\u00e9t\u00e9\u4e2d"),
        ((Tier("a", 5, 60_000),), ""),
    ],
    ids=["one-tier", "two-tiers", "three-tiers-multibyte-client", "empty-client"],
)
def test_plan_packing_matches_hiredis(tiers: tuple[Tier, ...], client: str) -> None:
    plan = Plan(tiers)
    packer = EvalshaPacker(SCRIPT_SHA, plan.key_heads, "}", plan.script_args)
    keys = plan.keys(client)
    expected = hiredis.pack_command(("EVALSHA", SCRIPT_SHA, len(keys), *keys, *plan.script_args))
    assert packer.command(client) == expected
    assert packer.command(client) == expected  # the cached parts are not consumed by a call


@pytest.mark.parametrize(
    ("reply", "decision"),
    [
        ([1, 1, 4, 200], Decision(True, 0, 4, 200, 0)),
        ([1, 2, 0, 60_000], Decision(True, 1, 0, 60_000, 0)),
        ([0, 1, 150, 900], Decision(False, 0, 0, 900, 150)),
        ([0, 3, 5, 7], Decision(False, 2, 0, 7, 5)),
    ],
    ids=["allowed-first-tier", "allowed-second-tier", "refused-first-tier", "refused-third-tier"],
)
def test_reply_mapping(reply: list[int], decision: Decision) -> None:
    assert to_decision(reply) == decision


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1:6379/0", RedisAddress("127.0.0.1", 6379, None, 0, None, None)),
        ("redis://cache", RedisAddress("cache", 6379, None, 0, None, None)),
        ("redis://:p%40ss@cache:7000/3", RedisAddress("cache", 7000, None, 3, None, "p@ss")),
        ("redis://svc:pw@cache/2", RedisAddress("cache", 6379, None, 2, "svc", "pw")),
        ("redis://cache:1?db=5", RedisAddress("cache", 1, None, 5, None, None)),
        ("unix:///run/redis.sock", RedisAddress("", 0, "/run/redis.sock", 0, None, None)),
        ("unix://:pw@/run/redis.sock?db=4", RedisAddress("", 0, "/run/redis.sock", 4, None, "pw")),
        ("unix:///run/redis.sock?db=1&password=pw&username=u", RedisAddress("", 0, "/run/redis.sock", 1, "u", "pw")),
    ],
    ids=["tcp-db0", "defaults", "password-only", "user-and-password", "db-in-query", "unix", "unix-password",
         "unix-query-credentials"],
)
def test_addresses(url: str, address: RedisAddress) -> None:
    assert RedisAddress.from_url(url) == address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rediss://cache:6380/0", "TLS (rediss://) is not supported by the batched rate-limit backend"),
        ("http://:secret@cache/0", "not a redis:// or unix:// URL: http://:***@cache/0"),
        ("redis://cache/zero", "the Redis database must be a number, not 'zero'"),
        ("unix://", "a unix:// Redis URL needs a socket path"),
    ],
    ids=["tls", "other-scheme-masked", "db-not-a-number", "unix-without-path"],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        RedisAddress.from_url(url)


@pytest.mark.parametrize(
    ("url", "commands"),
    [
        ("redis://h/0", [b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$2\r\nme\r\n"]),
        (
            "redis://:pw@h/2",
            [b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n", b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n",
             b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$2\r\nme\r\n"],
        ),
        (
            "redis://u:pw@h/0",
            [b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$2\r\npw\r\n", b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$2\r\nme\r\n"],
        ),
    ],
    ids=["name-only", "password-and-db", "user-and-password"],
)
def test_handshake(url: str, commands: list[bytes]) -> None:
    assert [command for _, command in RedisAddress.from_url(url).handshake("me")] == commands


# --- the connection's reply dispatch, over a socket pair ----------------------------------------------------


Pair = tuple[RespConnection, socket.socket]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A RespConnection on one end of a socket pair; the test plays Redis on the other (blocking) end."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        lambda: RespConnection(max_pending=3, stall_timeout=60), sock=ours
    )
    yield connection, theirs
    connection.drop("test over")
    await connection.lost
    theirs.close()


async def test_commands_of_one_tick_leave_in_one_write_and_replies_resolve_in_order(pair: Pair) -> None:
    connection, redis = pair
    first, second = connection.call(b"A"), connection.call(b"B")
    assert connection.writes == 0  # the write waits for the end of the tick
    await asyncio.sleep(0)
    assert connection.writes == 1
    assert redis.recv(100) == b"AB"
    redis.sendall(b":1\r\n*2\r\n:2\r\n$1")  # the second reply split across reads
    await asyncio.sleep(0.01)
    assert first.result() == 1 and not second.done()
    redis.sendall(b"\r\nx\r\n")
    assert await second == [2, b"x"]


async def test_a_cancelled_caller_reply_is_dropped_and_error_replies_are_returned(pair: Pair) -> None:
    connection, redis = pair
    cancelled, error, third = connection.call(b"A"), connection.call(b"B"), connection.call(b"C")
    cancelled.cancel()
    await asyncio.sleep(0)
    redis.sendall(b":1\r\n-NOSCRIPT No matching script\r\n:3\r\n")
    reply = await error
    assert isinstance(reply, ResponseError) and str(reply) == "NOSCRIPT No matching script"
    assert await third == 3


async def test_an_unreadable_reply_drops_the_connection(pair: Pair) -> None:
    connection, redis = pair
    waiting = connection.call(b"A")
    redis.sendall(b"?what\r\n")
    with pytest.raises(RedisConnectionError, match="unreadable reply from Redis"):
        await waiting
    assert connection.closed
    with pytest.raises(RedisConnectionError, match="closed"):
        connection.call(b"B")


async def test_a_reply_nobody_asked_for_drops_the_connection(pair: Pair) -> None:
    connection, redis = pair
    waiting = connection.call(b"A")
    redis.sendall(b":1\r\n:2\r\n")
    assert await waiting == 1
    await connection.lost
    assert connection.closed


async def test_too_many_outstanding_replies_drop_the_connection(pair: Pair) -> None:
    connection, _ = pair
    waiting = [connection.call(b"X") for _ in range(3)]
    with pytest.raises(RedisConnectionError, match="too many replies outstanding"):
        connection.call(b"X")
    for future in waiting:
        with pytest.raises(RedisConnectionError, match="3 Redis replies outstanding"):
            await future


async def test_the_server_closing_fails_the_waiting_callers(pair: Pair) -> None:
    connection, redis = pair
    waiting = connection.call(b"A")
    await asyncio.sleep(0)
    assert redis.recv(100) == b"A"
    redis.shutdown(socket.SHUT_RDWR)
    with pytest.raises(RedisConnectionError, match="closed by the server"):
        await waiting
    await connection.lost

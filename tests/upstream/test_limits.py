"""The per-origin limit and its FIFO waiters, and cancellation leaving nothing half-used behind."""
from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import UpstreamConnectError, UpstreamPool, UpstreamResetError, UpstreamTimeout
from tests.upstream.conftest import StartRaw, Timeouts, read_request, until

# Held responses sit on quiet sockets while a test arranges waiters: a roomy read timeout.
PATIENT: Timeouts = {"connect_timeout": 5.0, "read_timeout": 5.0, "total_timeout": 10.0}


async def held_bodies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request with the head and half the body, never the rest: a response from this server
    holds its connection until the caller closes it."""
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nha")


async def test_third_request_waits_for_a_release(raw_server: StartRaw) -> None:
    raw = await raw_server(held_bodies)
    pool = UpstreamPool(max_per_origin=2)
    try:
        first = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
        second = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
        third = asyncio.create_task(pool.request(raw.url, "GET", "/", [], None, **PATIENT))
        await until(lambda: pool.stats()["waiters"] == 1, "waiting")
        assert not third.done()
        assert pool.stats() == {"open": 2, "idle": 0, "in_use": 2, "waiters": 1}
        first.release()  # body incomplete: the connection closes and its slot passes to the waiter
        response = await third
        assert await response.content.readany() == b"ha"
        assert len(raw.peers) == 3
        assert pool.stats() == {"open": 2, "idle": 0, "in_use": 2, "waiters": 0}
        second.close()
        response.close()
        assert pool.stats()["open"] == 0
    finally:
        await pool.close()


async def test_waiters_are_served_first_come_first_served(raw_server: StartRaw) -> None:
    raw = await raw_server(held_bodies)
    pool = UpstreamPool(max_per_origin=1)
    try:
        holder = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
        order: list[int] = []

        async def wait(n: int) -> None:
            response = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
            order.append(n)
            response.close()

        tasks = []
        for n in range(3):
            tasks.append(asyncio.create_task(wait(n)))
            await until(lambda: pool.stats()["waiters"] == n + 1, "queued")
        holder.close()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]
    finally:
        await pool.close()


async def test_waiting_for_a_slot_times_out_as_connect(raw_server: StartRaw) -> None:
    raw = await raw_server(held_bodies)
    pool = UpstreamPool(max_per_origin=2)
    try:
        held = [await pool.request(raw.url, "GET", "/", [], None, **PATIENT) for _ in range(2)]
        with pytest.raises(UpstreamTimeout) as caught:
            await pool.request(raw.url, "GET", "/", [], None, connect_timeout=0.1, read_timeout=5.0, total_timeout=10.0)
        assert caught.value.phase == "connect"
        assert pool.stats() == {"open": 2, "idle": 0, "in_use": 2, "waiters": 0}
        for response in held:
            response.close()
    finally:
        await pool.close()


async def test_kept_alive_connection_goes_to_the_waiter(raw_server: StartRaw) -> None:
    finish = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nha")
            await finish.wait()
            writer.write(b"ha")

    raw = await raw_server(handler)
    pool = UpstreamPool(max_per_origin=1)
    try:
        first = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
        second = asyncio.create_task(pool.request(raw.url, "GET", "/", [], None, **PATIENT))
        await until(lambda: pool.stats()["waiters"] == 1, "waiting")
        finish.set()
        assert await first.read() == b"haha"
        assert await (await second).read() == b"haha"
        assert len(raw.peers) == 1
    finally:
        await pool.close()


async def test_cancelled_while_waiting_for_the_response(pool: UpstreamPool, raw_server: StartRaw) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    raw = await raw_server(silent)
    task = asyncio.create_task(pool.request(raw.url, "GET", "/", [], None, **PATIENT))
    await until(lambda: len(raw.peers) == 1 and pool.stats()["in_use"] == 1, "sent")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats() == {"open": 0, "idle": 0, "in_use": 0, "waiters": 0}


async def test_cancelled_while_reading_the_body(pool: UpstreamPool, raw_server: StartRaw) -> None:
    raw = await raw_server(held_bodies)
    response = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
    assert await response.content.readany() == b"ha"
    reader = asyncio.create_task(response.content.readany())
    await asyncio.sleep(0)  # the reader starts and waits for bytes that never come
    assert not reader.done()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert pool.stats() == {"open": 0, "idle": 0, "in_use": 0, "waiters": 0}


async def test_cancelled_while_waiting_for_a_slot(raw_server: StartRaw) -> None:
    raw = await raw_server(held_bodies)
    pool = UpstreamPool(max_per_origin=1)
    try:
        holder = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
        waiting = asyncio.create_task(pool.request(raw.url, "GET", "/", [], None, **PATIENT))
        await until(lambda: pool.stats()["waiters"] == 1, "waiting")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.stats() == {"open": 1, "idle": 0, "in_use": 1, "waiters": 0}
        holder.close()
        assert pool.stats()["open"] == 0
    finally:
        await pool.close()


async def test_cancelled_right_after_being_granted_a_slot(raw_server: StartRaw) -> None:
    """Granted and cancelled in the same tick: the slot passes on instead of leaking."""
    raw = await raw_server(held_bodies)
    pool = UpstreamPool(max_per_origin=1)
    try:
        holder = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
        unlucky = asyncio.create_task(pool.request(raw.url, "GET", "/", [], None, **PATIENT))
        await until(lambda: pool.stats()["waiters"] == 1, "waiting")
        patient = asyncio.create_task(pool.request(raw.url, "GET", "/", [], None, **PATIENT))
        await until(lambda: pool.stats()["waiters"] == 2, "waiting")
        holder.close()  # grants the slot to `unlucky`, which is cancelled before it runs
        unlucky.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unlucky
        response = await patient
        assert await response.content.readany() == b"ha"
        response.close()
        assert pool.stats() == {"open": 0, "idle": 0, "in_use": 0, "waiters": 0}
    finally:
        await pool.close()


async def test_closed_pool_fails_its_waiters(raw_server: StartRaw) -> None:
    raw = await raw_server(held_bodies)
    pool = UpstreamPool(max_per_origin=1)
    holder = await pool.request(raw.url, "GET", "/", [], None, **PATIENT)
    waiting = asyncio.create_task(pool.request(raw.url, "GET", "/", [], None, **PATIENT))
    await until(lambda: pool.stats()["waiters"] == 1, "waiting")
    await pool.close()
    with pytest.raises(UpstreamConnectError):
        await waiting
    with pytest.raises(UpstreamResetError):
        await holder.read()
    with pytest.raises(UpstreamConnectError):
        await pool.request(raw.url, "GET", "/", [], None, **PATIENT)

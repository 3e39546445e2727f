"""SQLite storage of a service on real files: migrations applied once and in order, data surviving a
restart, transactions that take their outbox events with them, serialised writers."""
from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from services.kit.db import PAGE_CACHE_KIB, Database, Migration, MigrationError
from tests.services import demo
from services.user import SERVICE as USERS
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import bearer

M1 = Migration(1, "notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
M2 = Migration(2, "note authors", "ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'nobody'")


async def open_db(path: Path, migrations: list[Migration], publishes: tuple[str, ...] = ()) -> Database:
    db = Database(path, "test-service", publishes)
    await db.open(migrations)
    return db


def applied(path: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT component, version, name FROM kadai_schema_migrations ORDER BY component, version"
        ).fetchall()


async def test_data_and_schema_survive_a_restart_and_migrations_run_once(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    first = await serve(demo.publisher(), settings)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            first.url + "/things", headers=bearer(settings), json={"name": "lamp", "quantity": 3}
        ) as response:
            assert response.status == 201
        await first.stop()
        second = await serve(demo.publisher(), settings)
        async with session.get(second.url + "/things", headers=bearer(settings)) as response:
            things = (await response.json())["data"]

    assert things == [{"id": 1, "name": "lamp", "quantity": 3}]
    path = settings.database_path("product-service")
    assert applied(path) == [
        ("kit", 1, "outbox and processed events"),
        ("service", 1, "things"),
        ("service", 2, "thing quantity"),
    ]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_new_migration_is_applied_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = await open_db(path, [M1])
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO notes (text) VALUES (?)", ("kept",))
    await db.close()

    db = await open_db(path, [M1, M2])
    try:
        rows = [tuple(row) for row in await db.fetchall("SELECT text, author FROM notes")]
        assert rows == [("kept", "nobody")]
        assert await db.schema_version() == 2
    finally:
        await db.close()


_BROKEN = [
    (
        "failing-step",
        [M1, Migration(2, "half done", "CREATE TABLE half (x INTEGER); CREATE TABLE oops (")],
        "service migration 2 (half done) failed",
    ),
    ("renamed-step", [Migration(1, "renamed", M1.sql)], "was applied as 'notes' but the code calls it 'renamed'"),
    ("older-code", [], "newer than this code (0)"),
]


@pytest.mark.parametrize(("migrations", "message"), [case[1:] for case in _BROKEN], ids=[case[0] for case in _BROKEN])
async def test_an_inconsistent_schema_stops_the_start_and_changes_nothing(
    tmp_path: Path, migrations: list[Migration], message: str
) -> None:
    path = tmp_path / "db.sqlite3"
    await (await open_db(path, [M1])).close()

    db = Database(path, "test-service")
    with pytest.raises(MigrationError, match=re.escape(message)):
        await db.open(migrations)
    await db.close()

    assert applied(path) == [("kit", 1, "outbox and processed events"), ("service", 1, "notes")]
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half" not in tables  # the failing step's first statement was rolled back with it


async def test_rows_and_their_events_commit_together_or_not_at_all(serve: Serve, make_settings: MakeSettings) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            service.url + "/things",
            headers=bearer(settings),
            json={"name": "vase", "quantity": 1, "failAfterWrite": True},
        ) as response:
            assert response.status == 500
        db = service.runtime.db
        assert await db.fetchall("SELECT * FROM things") == []
        assert await db.fetchall("SELECT * FROM kadai_outbox") == []

        async with session.post(
            service.url + "/things", headers=bearer(settings), json={"name": "vase", "quantity": 1}
        ) as response:
            event_id = (await response.json())["data"]["eventId"]
    outbox = await db.fetchall("SELECT event_id, type FROM kadai_outbox")
    assert [tuple(row) for row in outbox] == [(event_id, demo.THING_CREATED)]
    assert len(await db.fetchall("SELECT * FROM things")) == 1


async def test_writers_are_serialised_and_readers_see_committed_data_only(tmp_path: Path) -> None:
    db = await open_db(
        tmp_path / "db.sqlite3",
        [Migration(1, "counter", "CREATE TABLE counter (n INTEGER); INSERT INTO counter VALUES (0)")],
    )
    try:

        async def increment() -> None:
            async with db.transaction() as tx:
                row = await tx.fetchone("SELECT n FROM counter")
                assert row is not None
                await asyncio.sleep(0)  # give every other writer a chance to interleave
                await tx.execute("UPDATE counter SET n = ?", (row["n"] + 1,))

        await asyncio.gather(*(increment() for _ in range(20)))
        assert tuple(await db.fetchone("SELECT n FROM counter") or ()) == (20,)

        async with db.transaction() as tx:
            await tx.execute("UPDATE counter SET n = 99")
            assert tuple(await db.fetchone("SELECT n FROM counter") or ()) == (20,)
        assert tuple(await db.fetchone("SELECT n FROM counter") or ()) == (99,)
    finally:
        await db.close()


async def test_misuse_of_transactions_is_refused(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "db.sqlite3", [M1], publishes=("notes.added",))
    try:
        async with db.transaction() as tx:
            with pytest.raises(RuntimeError, match="would wait for itself"):
                async with db.transaction():
                    pass
            with pytest.raises(ValueError, match=re.escape("does not declare 'notes.removed'")):
                tx.publish("notes.removed", {})
            with pytest.raises(TypeError):
                tx.publish("notes.added", {"when": object()})
            event = tx.publish("notes.added", {"id": 1})
        rows = await db.fetchall("SELECT event_id FROM kadai_outbox")
        assert [row[0] for row in rows] == [event.id]
    finally:
        await db.close()


async def test_the_outbox_relay_stops_when_a_commit_wakes_it_in_the_same_tick(
    serve: Serve, make_settings: MakeSettings
) -> None:
    """Python 3.11's wait_for swallows a cancellation that arrives with a wake-up: the relay (woken by
    every commit) then never stopped, and shutdown hung with the database open."""
    running = await serve(USERS, make_settings())
    relay = running.runtime.relay
    for _ in range(10):
        await relay.start()
        await asyncio.sleep(0.005)  # asleep on its wake-up event
        relay.wake()
        await asyncio.wait_for(relay.stop(flush_timeout=0.5), 2.0)


async def test_both_connections_keep_a_bounded_page_cache(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "cache.sqlite3", [M1])
    try:
        for conn in (db._reader, db._writer):
            assert conn is not None
            assert [tuple(row) for row in await conn.execute_fetchall("PRAGMA cache_size")] == [(-PAGE_CACHE_KIB,)]
    finally:
        await db.close()


async def test_a_transaction_cancelled_while_it_commits_stays_cancelled_and_committed(tmp_path: Path) -> None:
    db = await open_db(tmp_path / "db.sqlite3", [M1])
    writer = db._writer_conn()
    inside = asyncio.Event()

    async def write() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO notes (text) VALUES ('kept')")
            # The commit is queued behind this in the writer's thread: the cancel lands while it waits.
            asyncio.ensure_future(writer._execute(time.sleep, 0.3))
            inside.set()

    task = asyncio.create_task(write())
    await inside.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # cancelled, not some error of a rollback that came after the commit

    assert task.cancelled()
    assert [row[0] for row in await db.fetchall("SELECT text FROM notes")] == ["kept"]
    async with db.transaction() as tx:  # the connection is left usable, outside any transaction
        await tx.execute("INSERT INTO notes (text) VALUES ('next')")
    assert [row[0] for row in await db.fetchall("SELECT text FROM notes ORDER BY id")] == ["kept", "next"]
    await db.close()

"""A service's SQLite database: one file, WAL mode, migrations applied at start, one transaction helper.

    async with db.transaction() as tx:
        await tx.execute("UPDATE products SET stock = stock - ? WHERE id = ?", (qty, product_id))
        tx.publish(PRODUCT_STOCK_UPDATED, {"productId": product_id, "stock": stock})

The event goes into the outbox table in the same transaction as the change: both commit or neither
does, and the relay publishes it after the commit. Writes are serialised on one connection (SQLite has
one writer anyway); reads outside a transaction use a second connection and see committed data only.
Nothing blocks the event loop: aiosqlite runs each connection in its own thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosqlite
from pydantic import BaseModel

from gateway.envelope import utc_timestamp
from gateway.logs import log_fields, request_id_var
from services.events.event import Event

log = logging.getLogger("services.kit.db")

Params = Sequence[Any] | Mapping[str, Any]
Row = sqlite3.Row


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of a schema: version 1, 2, 3 ... in order; sql may hold several statements."""

    version: int
    name: str
    sql: str


class MigrationError(RuntimeError):
    """The database cannot be brought to the code's schema (a failing or inconsistent migration)."""


KIT_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "outbox and processed events",
        """
        CREATE TABLE kadai_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            body BLOB NOT NULL,
            created_at REAL NOT NULL,
            sent_at REAL
        );
        CREATE INDEX kadai_outbox_pending ON kadai_outbox (seq) WHERE sent_at IS NULL;
        CREATE INDEX kadai_outbox_sent ON kadai_outbox (sent_at) WHERE sent_at IS NOT NULL;
        CREATE TABLE kadai_processed_events (
            event_id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            processed_at REAL NOT NULL
        );
        CREATE INDEX kadai_processed_events_age ON kadai_processed_events (processed_at);
        """,
    ),
)

_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS kadai_schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (component, version)
)
"""

PAGE_CACHE_KIB = 512
"""SQLite page cache per connection, in KiB."""

# Set while the current task holds the write transaction: a nested transaction() would wait for itself.
_holding: ContextVar[bool] = ContextVar("kadai_db_transaction", default=False)


async def _run(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> None:
    """Execute and close the cursor: a statement left open would pin a read snapshot."""
    async with conn.execute(sql, params):
        pass


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements (semicolons inside strings and triggers are kept)."""
    statements, pending = [], ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement: {pending.strip()[:80]!r}")
    return statements


def check_migrations(migrations: Sequence[Migration]) -> None:
    """Versions must be 1, 2, 3 ... in order, and each script must split into statements (no unterminated
    string or trigger); SQLite itself judges the statements when they run."""
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise ValueError(f"migration {migration.name!r} has version {migration.version}, expected {index}")
        split_statements(migration.sql)


@dataclass(frozen=True, slots=True)
class Result:
    rowcount: int
    lastrowid: int | None


class Transaction:
    """The write transaction of one `async with db.transaction()` block."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn = db._writer_conn()
        self.events: list[Event] = []
        """Events published in this transaction, in order; written to the outbox at commit."""
        self._bodies: list[bytes] = []

    async def execute(self, sql: str, params: Params = ()) -> Result:
        async with self._conn.execute(sql, params) as cursor:
            return Result(cursor.rowcount, cursor.lastrowid)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> Result:
        async with self._conn.executemany(sql, rows) as cursor:
            return Result(cursor.rowcount, cursor.lastrowid)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._conn.execute(sql, params) as cursor:
            row: Row | None = await cursor.fetchone()
            return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    def publish(self, event_type: str, data: Mapping[str, Any] | BaseModel) -> Event:
        """Publish an event when (and only if) this transaction commits. The type must be one the service
        declared in `publishes`; data is a mapping or a model (written camelCase)."""
        if event_type not in self._db.publishes:
            raise ValueError(f"{self._db.service} does not declare {event_type!r} in publishes")
        payload = data.model_dump(mode="json", by_alias=True) if isinstance(data, BaseModel) else dict(data)
        event = Event.create(event_type, self._db.service, payload, request_id_var.get())
        try:
            body = event.to_json()  # fails here, in the caller's code, rather than at commit
        except ValueError as exc:
            raise TypeError(f"the data of {event_type} is not JSON-serialisable: {exc}") from None
        self.events.append(event)
        self._bodies.append(body)
        return event

    async def mark_processed(self, event: Event) -> bool:
        """Record that this service handled the event; False when it already had (a duplicate delivery)."""
        result = await self.execute(
            "INSERT OR IGNORE INTO kadai_processed_events (event_id, type, processed_at) VALUES (?, ?, ?)",
            (event.id, event.type, time.time()),
        )
        return result.rowcount == 1

    async def _write_outbox(self) -> None:
        if not self.events:
            return
        now = time.time()
        await self.executemany(
            "INSERT INTO kadai_outbox (event_id, type, body, created_at) VALUES (?, ?, ?, ?)",
            [(event.id, event.type, body, now) for event, body in zip(self.events, self._bodies, strict=True)],
        )


Role = Literal["reader", "writer"]
"""Which of a Database's two connections."""
_UNREADABLE = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
REOPEN_INTERVAL = 1.0
"""Seconds between two attempts to replace a connection that found the file unreadable."""


def _unreadable(exc: BaseException) -> bool:
    """SQLite found the file corrupt or not a database at all (a failing disk, a bad copy)."""
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", None) in _UNREADABLE


class Database:
    """The service's SQLite file. open() connects and migrates; close() at shutdown.

    A connection that found the file unreadable keeps its view of it after the file is repaired (until
    some other connection writes to the file), so it is replaced on its next use: a repaired file serves
    again without a restart. At most once a REOPEN_INTERVAL per connection while the file stays broken.
    """

    def __init__(self, path: Path, service: str, publishes: Collection[str] = (), busy_timeout: float = 5.0) -> None:
        self.path = path
        self.service = service
        self.publishes = frozenset(publishes)
        self.busy_timeout = busy_timeout
        self.commit_listeners: list[Callable[[Sequence[Event]], None]] = []
        """Called after a commit that published events (the outbox relay wakes up)."""
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._stale: set[Role] = set()
        """The connections that found the file unreadable: replaced on their next use."""
        self._reopen_after: dict[Role, float] = {}
        """Loop time before which a connection is not replaced again (one attempt per REOPEN_INTERVAL)."""
        self._reopening = asyncio.Lock()

    async def open(self, migrations: Sequence[Migration] = ()) -> None:
        """Connect (creating the file and its directory) and apply the kit's then the service's migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect_writer()
        self._reader = await self._connect_reader()
        await self._migrate("kit", KIT_MIGRATIONS)
        await self._migrate("service", migrations)

    async def _connect(self, *pragmas: str) -> aiosqlite.Connection:
        # isolation_level=None: no implicit transactions; transaction() issues BEGIN IMMEDIATE itself.
        conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        conn.row_factory = sqlite3.Row
        try:
            await _run(conn, "PRAGMA foreign_keys=ON")
            await _run(conn, f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            # A bounded page cache per connection (SQLite's default is 2 MiB): every service holds two, and
            # the operating system caches the file anyway.
            await _run(conn, f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            for pragma in pragmas:
                await _run(conn, pragma)
        except BaseException:
            await asyncio.shield(conn.close())  # its worker thread must not outlive the failed attempt
            raise
        return conn

    async def _connect_writer(self) -> aiosqlite.Connection:
        return await self._connect("PRAGMA journal_mode=WAL")

    async def _connect_reader(self) -> aiosqlite.Connection:
        return await self._connect("PRAGMA query_only=ON")

    def _failed(self, role: Role, exc: BaseException) -> None:
        """Note a connection to replace when exc says it found the file unreadable."""
        if _unreadable(exc):
            self._stale.add(role)

    async def _replace_if_stale(self, role: Role) -> None:
        """Put a fresh connection in place of one that found the file unreadable, when one is due."""
        if role not in self._stale:  # the usual case: nothing more to do on every query
            return
        loop = asyncio.get_running_loop()
        async with self._reopening:
            if role not in self._stale or loop.time() < self._reopen_after.get(role, 0.0):
                return  # another caller replaced it meanwhile, or the last attempt was too recent
            self._reopen_after[role] = loop.time() + REOPEN_INTERVAL
            if role == "reader":
                old, self._reader = self._reader, await self._connect_reader()
            else:
                old, self._writer = self._writer, await self._connect_writer()
            self._stale.discard(role)
            log.warning(
                "database connection replaced after the file was found unreadable",
                extra=log_fields(service=self.service, connection=role),
            )
            if old is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await old.close()

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    def _writer_conn(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("the database is not open")
        return self._writer

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises. Keep it short: other writers
        wait for it (no calls to other services inside)."""
        if _holding.get():
            raise RuntimeError("transaction() inside a transaction of the same task would wait for itself")
        async with self._lock:
            await self._replace_if_stale("writer")
            token = _holding.set(True)
            tx = Transaction(self)
            try:
                # Shielded: a task cancelled here (a client gone, shutdown) must not leave the connection
                # inside a transaction; the rollback is queued behind whatever already reached the thread.
                await asyncio.shield(_run(tx._conn, "BEGIN IMMEDIATE"))
                yield tx
                await tx._write_outbox()
                await asyncio.shield(tx._conn.commit())
            except BaseException as exc:
                self._failed("writer", exc)
                try:
                    await asyncio.shield(tx._conn.rollback())
                except sqlite3.DatabaseError as rollback_failed:
                    self._failed("writer", rollback_failed)
                    if not _unreadable(rollback_failed):
                        raise
                raise
            finally:
                _holding.reset(token)
        if tx.events:
            for listener in self.commit_listeners:
                listener(tx.events)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """A read outside any transaction: sees what was committed when it runs (for queries of one row)."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        # Executed and read to the end in one job of the reader's thread: a cursor left open between two
        # awaits would hold the connection's read snapshot, and a concurrent read on the same connection
        # would not see rows committed since.
        await self._replace_if_stale("reader")
        try:
            return list(await self._reader_conn().execute_fetchall(sql, params))
        except sqlite3.DatabaseError as exc:
            self._failed("reader", exc)
            raise

    def _reader_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("the database is not open")
        return self._reader

    async def schema_version(self, component: str = "service") -> int:
        row = await self.fetchone(
            "SELECT COALESCE(MAX(version), 0) FROM kadai_schema_migrations WHERE component = ?", (component,)
        )
        return int(row[0]) if row else 0

    async def ping(self, timeout: float = 1.0) -> bool:
        """Whether the file answers a query in time (health)."""
        try:
            # The schema cookie is read from the file's header; SELECT 1 touches no page and answers even
            # when the file can no longer be read.
            await asyncio.wait_for(self.fetchone("PRAGMA schema_version"), timeout)
        except (sqlite3.Error, TimeoutError, RuntimeError, ValueError):
            return False
        return True

    async def _migrate(self, component: str, migrations: Sequence[Migration]) -> None:
        check_migrations(migrations)
        conn = self._writer_conn()
        await _run(conn, _SCHEMA_TABLE)
        for migration in migrations:
            # One transaction per step, its record included: a failing step leaves the previous version.
            await _run(conn, "BEGIN IMMEDIATE")
            try:
                async with conn.execute(
                    "SELECT name FROM kadai_schema_migrations WHERE component = ? AND version = ?",
                    (component, migration.version),
                ) as cursor:
                    applied = await cursor.fetchone()
                if applied is not None:
                    await conn.rollback()
                    if applied[0] != migration.name:
                        raise MigrationError(
                            f"{self.path}: {component} migration {migration.version} was applied as "
                            f"{applied[0]!r} but the code calls it {migration.name!r}"
                        )
                    continue
                for statement in split_statements(migration.sql):
                    await _run(conn, statement)
                await _run(
                    conn,
                    "INSERT INTO kadai_schema_migrations (component, version, name, applied_at) VALUES (?, ?, ?, ?)",
                    (component, migration.version, migration.name, utc_timestamp()),
                )
                await conn.commit()
            except sqlite3.Error as exc:
                await conn.rollback()
                raise MigrationError(
                    f"{self.path}: {component} migration {migration.version} ({migration.name}) failed: {exc}"
                ) from exc
            log.info(
                "applied migration",
                extra=log_fields(component=component, version=migration.version, migration=migration.name),
            )
        async with conn.execute(
            "SELECT MAX(version) FROM kadai_schema_migrations WHERE component = ?", (component,)
        ) as cursor:
            row = await cursor.fetchone()
        newest = int(row[0] or 0) if row else 0
        if newest > len(migrations):
            raise MigrationError(
                f"{self.path}: the {component} schema is at version {newest}, newer than this code "
                f"({len(migrations)}): refusing to run an older release on it"
            )

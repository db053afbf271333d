"""The SQLite engine: the file in the data dir, migrated at open, and the one thread every query runs on.

The event loop never touches SQLite: each call runs on the database thread and is awaited there; queued
writes run in order on the same thread, so a read issued after a write sees it. Several processes may
open one file (`serve --workers`): WAL lets readers go on beside the one writer, and migrations run under
SQLite's own write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from codexlb import log
from codexlb.store import schema
from codexlb.store.engine import DatabaseError, OnChanges, OnResync, Params, Statement

DB_FILE_NAME = "codexlb.db"
# Processes on one file (`serve --workers`) read each other's changes this often, and keep them this long.
POLL_S = 0.25
KEEP_CHANGES_S = 600.0
T = TypeVar("T")
_log = log.get("codexlb.store")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > schema.SCHEMA_VERSION:
        raise DatabaseError(f"{path} has schema version {current}, newer than this codexlb "
                            f"({schema.SCHEMA_VERSION}); upgrade codexlb")
    if current == schema.SCHEMA_VERSION:
        return
    if current > 0:
        # Before taking the write lock: a backup inside a write transaction waits for itself.
        backup = path.with_name(f"{path.name}.v{current}-{time.strftime('%Y%m%d%H%M%S')}.bak")
        with sqlite3.connect(backup) as copy:
            conn.backup(copy)
        backup.chmod(0o600)
        _log.info("database backed up before migration", backup=str(backup), from_version=current,
                  to_version=schema.SCHEMA_VERSION)
    # IMMEDIATE takes the write lock first: of several processes starting at once, one migrates and the
    # others then find the schema current.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(conn.execute("PRAGMA user_version").fetchone()[0] + 1, schema.SCHEMA_VERSION + 1):
            for statement in schema.render(schema.MIGRATIONS[version - 1], "sqlite"):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    fresh = not path.exists()
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if fresh:
            path.chmod(0o600)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL under WAL: a commit survives a process crash (kill -9); only power loss can drop the last ones.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from None
    return conn


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    # In autocommit mode every row would be a commit of its own (~20x the cost of one transaction).
    conn.execute("BEGIN")
    try:
        result = work()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class SQLiteEngine:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codexlb-db")
        self._conn: sqlite3.Connection | None = None
        self._pending: set[Future[Any]] = set()

    @classmethod
    async def open(cls, path: Path) -> "SQLiteEngine":
        engine = cls(path)
        try:
            engine._conn = await asyncio.get_running_loop().run_in_executor(engine._thread, _connect, path)
        except BaseException:
            engine._thread.shutdown(wait=False)
            raise
        return engine

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the database thread and wait for it (after everything queued before)."""
        return await asyncio.wrap_future(self._thread.submit(self._run, fn))

    # `quick` changes nothing here: a file on this machine is never unreachable.
    async def fetch(self, sql: str, params: Params = (), *, quick: bool = False) -> list[tuple[Any, ...]]:
        return await self.call(lambda conn: conn.execute(sql, params).fetchall())

    async def execute(self, sql: str, params: Params = (), *, quick: bool = False) -> int:
        return await self.call(lambda conn: conn.execute(sql, params).rowcount)

    async def transaction(self, statements: Sequence[Statement], *, quick: bool = False) -> list[int]:
        return await self.call(lambda conn: _in_transaction(
            conn, lambda: [conn.execute(sql, params).rowcount for sql, params in statements]))

    async def write_returning(self, sql: str, params: Params, also: Sequence[Statement]) -> list[tuple[Any, ...]]:
        def work(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows = conn.execute(sql, params).fetchall()
            for statement, values in also:
                conn.execute(statement, values)
            return rows

        return await self.call(lambda conn: _in_transaction(conn, lambda: work(conn)))

    def submit(self, sql: str, params: Params = ()) -> None:
        self._queue(lambda conn: conn.execute(sql, params))

    def submit_all(self, statements: Sequence[Statement]) -> None:
        self._queue(lambda conn: _in_transaction(conn, lambda: [conn.execute(sql, params) for sql, params in statements]))

    def submit_many(self, sql: str, rows: Sequence[Params]) -> None:
        self._queue(lambda conn: _in_transaction(conn, lambda: conn.executemany(sql, rows)))

    async def barrier(self) -> None:
        await self.call(lambda conn: None)

    def change(self, origin: str, kind: str, ref: str) -> Statement:
        return ("INSERT INTO changes (ts, origin, kind, ref) VALUES (?, ?, ?, ?)", (time.time(), origin, kind, ref))

    async def follow(self, origin: str, on_changes: OnChanges, on_resync: OnResync) -> None:
        # SQLite lets one writer commit at a time, so ids are in commit order: reading past the last one seen
        # misses nothing. One file has no connection to lose: only what came before the first read is read again.
        last = (await self.fetch("SELECT coalesce(max(id), 0) FROM changes"))[0][0]
        await on_resync()
        pruned = time.monotonic()
        while True:
            await asyncio.sleep(POLL_S)
            try:
                rows = await self.fetch("SELECT id, origin, kind, ref FROM changes WHERE id > ? ORDER BY id", (last,))
            except DatabaseError as exc:
                _log.warning("change feed: read failed; will retry", error=str(exc))
                continue
            if rows:
                last = rows[-1][0]
                theirs = [(kind, ref) for _, who, kind, ref in rows if who != origin]
                if theirs:
                    await on_changes(theirs)
            if time.monotonic() - pruned > KEEP_CHANGES_S / 10:
                pruned = time.monotonic()
                self.submit("DELETE FROM changes WHERE ts < ?", (time.time() - KEEP_CHANGES_S,))

    def _queue(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        future = self._thread.submit(self._run, fn)
        self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[Any]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            _log.error("queued database write failed", error=str(future.exception()))

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise DatabaseError("database is not open")
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise DatabaseError(f"database {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Finish queued writes, checkpoint the WAL, close the file and the thread."""
        if self._conn is not None:
            def finish(conn: sqlite3.Connection) -> None:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()

            await self.call(finish)
            self._conn = None
        self._thread.shutdown(wait=True)

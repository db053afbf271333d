"""The SQLite file: schema, forward migrations, and the one thread every query runs on.

The event loop never touches SQLite: `Database.call` runs a function on the
database thread and awaits it; `Database.submit` queues one without waiting
(queued work runs in order, so a later write never lands before an earlier one).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from codexlb import log

DB_FILE_NAME = "codexlb.db"
T = TypeVar("T")
_log = log.get("codexlb.store")

# Migration N (1-based) takes the schema from version N-1 to N. Append only; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        alias TEXT NOT NULL UNIQUE,
        email TEXT,
        plan TEXT,
        status TEXT NOT NULL,
        status_until REAL,
        status_reason TEXT,
        access_token BLOB NOT NULL,
        refresh_token BLOB NOT NULL,
        id_token BLOB NOT NULL,
        access_expires_at REAL NOT NULL,
        last_refresh REAL NOT NULL,
        primary_used_percent REAL,
        primary_window_minutes INTEGER,
        primary_reset_at REAL,
        secondary_used_percent REAL,
        secondary_window_minutes INTEGER,
        secondary_reset_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        account_id TEXT,
        api_key_id TEXT,
        route TEXT,
        model TEXT,
        status INTEGER,
        error_code TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        duration_ms REAL
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_account_ts ON usage (account_id, ts);
    """,
    # 2: client API keys, stored as SHA-256 digests (see codexlb/keys.py); the key itself is never stored.
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        last_used_at REAL,
        revoked_at REAL,
        max_concurrency INTEGER
    );
    """,
    # 3: time to first byte per request, beside its total duration.
    """
    ALTER TABLE usage ADD COLUMN ttfb_ms REAL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class DatabaseError(Exception):
    """The database cannot be used; the message is for the operator."""


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise DatabaseError(
            f"{path} has schema version {current}, newer than this codexlb ({SCHEMA_VERSION}); upgrade codexlb"
        )
    if current == SCHEMA_VERSION:
        return
    if current > 0:
        backup = path.with_name(f"{path.name}.v{current}-{time.strftime('%Y%m%d%H%M%S')}.bak")
        with sqlite3.connect(backup) as copy:
            conn.backup(copy)
        backup.chmod(0o600)
        _log.info("database backed up before migration", backup=str(backup), from_version=current,
                  to_version=SCHEMA_VERSION)
    for version in range(current + 1, SCHEMA_VERSION + 1):
        # executescript commits first, so the migration and its version bump share one explicit transaction.
        conn.executescript(f"BEGIN; {MIGRATIONS[version - 1]}; PRAGMA user_version = {version}; COMMIT;")


def _connect(path: Path) -> sqlite3.Connection:
    fresh = not path.exists()
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if fresh:
            path.chmod(0o600)
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL under WAL: a commit survives a process crash (kill -9); only power loss can drop the last ones.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from None
    return conn


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codexlb-db")
        self._conn: sqlite3.Connection | None = None
        self._pending: set[Future[Any]] = set()

    async def open(self) -> None:
        self._conn = await asyncio.get_running_loop().run_in_executor(self._thread, _connect, self.path)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the database thread and wait for it (after everything queued before)."""
        return await asyncio.wrap_future(self._thread.submit(self._run, fn))

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue `fn(conn)` without waiting; a failure is logged, since nobody awaits it."""
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
        return fn(self._conn)

    async def close(self) -> None:
        """Finish queued writes, checkpoint the WAL, close the file and the thread."""
        if self._conn is not None:
            def finish(conn: sqlite3.Connection) -> None:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()

            await self.call(finish)
            self._conn = None
        self._thread.shutdown(wait=True)

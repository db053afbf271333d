"""Durable state: accounts (tokens sealed), client API keys (digests only) and usage records, in SQLite,
off the event loop.

Reads happen once at start-up; the running process serves from memory. Account
writes are committed one by one (an account is never lost); usage records are
batched and flushed every `flush_interval_s` (a crash loses at most that batch).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

from codexlb import log
from codexlb.account import Account
from codexlb.store import accounts as account_rows
from codexlb.store import api_keys as key_rows
from codexlb.store.api_keys import KeyRecord
from codexlb.store.db import DB_FILE_NAME, Database, DatabaseError
from codexlb.store.secrets import (
    KEY_FILE_NAME,
    SecretBox,
    SecretKeyError,
    load_or_create_key,
)

__all__ = ["Store", "UsageRecord", "DatabaseError", "SecretKeyError", "DB_FILE_NAME"]

_log = log.get("codexlb.store")
_KEY_CHECK = "key_check"
_REQUEST_COLUMNS = ("id", "ts", "account_id", "api_key_id", "route", "model", "status", "error_code", "input_tokens",
                    "cached_tokens", "output_tokens", "reasoning_tokens", "duration_ms", "ttfb_ms")
_FILTERABLE = frozenset({"account_id", "api_key_id", "model", "status", "error_code"})
_ADMIN_PASSWORD = "admin_password"


class UsageRecord(NamedTuple):
    """One proxied request; a tuple in the usage table's column order, so a batch inserts as it is."""

    ts: float
    account_id: str | None
    api_key_id: str | None
    route: str
    model: str | None
    status: int
    error_code: str | None
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    duration_ms: float | None = None
    ttfb_ms: float | None = None


_INSERT_USAGE = (
    "INSERT INTO usage (ts, account_id, api_key_id, route, model, status, error_code, input_tokens, "
    "cached_tokens, output_tokens, reasoning_tokens, duration_ms, ttfb_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_usage(conn: sqlite3.Connection, batch: list[UsageRecord]) -> None:
    # One transaction per batch: in autocommit mode every row would be a commit of its own (~20x the cost).
    conn.execute("BEGIN")
    try:
        conn.executemany(_INSERT_USAGE, batch)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _prune_batch(conn: sqlite3.Connection, before_ts: float | None, max_rows: int | None, batch: int) -> int:
    """One batch of the oldest records that are too old or beyond the newest `max_rows`."""
    floor = 0
    if max_rows is not None:
        row = conn.execute("SELECT id FROM usage ORDER BY id DESC LIMIT 1 OFFSET ?", (max_rows,)).fetchone()
        floor = row[0] if row else 0
    cursor = conn.execute(
        "DELETE FROM usage WHERE id IN (SELECT id FROM usage WHERE id <= ? OR ts < ? ORDER BY id LIMIT ?)",
        (floor, before_ts if before_ts is not None else float("-inf"), batch))
    return cursor.rowcount


def _check_key(conn: sqlite3.Connection, box: SecretBox, path: Path) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY_CHECK,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (_KEY_CHECK, box.seal(_KEY_CHECK, _KEY_CHECK)))
        return
    try:
        box.open(row[0], _KEY_CHECK)
    except SecretKeyError:
        raise SecretKeyError(
            f"the secret key does not match {path}: start with the key file it was created with "
            f"(CODEXLB_SECRET_KEY_FILE), or move the database aside to start empty"
        ) from None


class Store:
    def __init__(self, db: Database, box: SecretBox, flush_interval_s: float) -> None:
        self._db = db
        self._box = box
        self._flush_interval_s = flush_interval_s
        self._usage: list[UsageRecord] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, data_dir: Path, key_file: Path | None = None, *, flush_interval_s: float = 1.0) -> "Store":
        """Open (creating if needed) the database and key in `data_dir`; raises SecretKeyError or DatabaseError."""
        key_path = key_file or data_dir / KEY_FILE_NAME
        db_path = data_dir / DB_FILE_NAME
        # A new key is only right beside a new database: a lost key must not silently start a second one.
        fresh = not db_path.exists()
        key = await asyncio.get_running_loop().run_in_executor(None, load_or_create_key, key_path, fresh)
        box = SecretBox(key)
        db = Database(db_path)
        try:
            await db.open()
            await db.call(lambda conn: _check_key(conn, box, db_path))
        except BaseException:
            await db.close()
            raise
        store = cls(db, box, flush_interval_s)
        store._flusher = asyncio.create_task(store._flush_forever(), name="codexlb-usage-flush")
        return store

    async def load_accounts(self) -> list[Account]:
        return await self._db.call(lambda conn: account_rows.load_all(conn, self._box))

    async def save_account(self, account: Account) -> None:
        """Commit now: for changes that must be durable before the caller goes on (a rotated refresh token)."""
        row = account_rows.to_row(account, self._box)
        await self._db.call(lambda conn: account_rows.upsert(conn, row))

    def save_account_soon(self, account: Account) -> None:
        """Queue the write (status, usage windows); queued writes land in order."""
        row = account_rows.to_row(account, self._box)
        self._db.submit(lambda conn: account_rows.upsert(conn, row))

    async def delete_account(self, account_id: str) -> bool:
        return await self._db.call(lambda conn: account_rows.delete(conn, account_id))

    async def create_api_key(self, record: KeyRecord) -> None:
        await self._db.call(lambda conn: key_rows.insert(conn, record))

    async def list_api_keys(self) -> list[KeyRecord]:
        return await self._db.call(lambda conn: key_rows.load(conn, active_only=False))

    async def load_active_api_keys(self) -> list[KeyRecord]:
        return await self._db.call(lambda conn: key_rows.load(conn, active_only=True))

    async def revoke_api_key(self, key_id: str, at: float) -> bool:
        return await self._db.call(lambda conn: key_rows.revoke(conn, key_id, at))

    def touch_api_key_soon(self, key_id: str, at: float) -> None:
        """Queue a key's last use; the caller keeps this to about once a minute per key."""
        self._db.submit(lambda conn: key_rows.touch(conn, key_id, at))

    def record_usage(self, record: UsageRecord) -> None:
        self._usage.append(record)

    async def flush_usage(self) -> None:
        if not self._usage:
            return
        batch, self._usage = self._usage, []
        await self._db.call(lambda conn: _insert_usage(conn, batch))

    async def usage_rows(self, account_id: str | None = None) -> list[tuple]:
        query = "SELECT * FROM usage" + (" WHERE account_id = ?" if account_id else "") + " ORDER BY id"
        return await self._db.call(lambda conn: conn.execute(query, (account_id,) if account_id else ()).fetchall())

    async def requests(self, filters: dict[str, Any], limit: int, before_id: int | None) -> list[dict[str, Any]]:
        """The request log, newest first: rows matching every filter (column -> value), older than `before_id`."""
        where = [f"{column} = ?" for column in filters if column in _FILTERABLE]
        params: list[Any] = [filters[column] for column in filters if column in _FILTERABLE]
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        query = (f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM usage" + (" WHERE " + " AND ".join(where) if where else "")
                 + " ORDER BY id DESC LIMIT ?")
        rows = await self._db.call(lambda conn: conn.execute(query, (*params, limit)).fetchall())
        return [dict(zip(_REQUEST_COLUMNS, row)) for row in rows]

    async def token_series(self, by: str, since: float, bucket_s: int) -> list[dict[str, Any]]:
        """Tokens per `bucket_s` seconds since `since`, per account (`by="account_id"`) or API key."""
        if by not in ("account_id", "api_key_id"):
            raise ValueError(by)
        query = (f"SELECT CAST(ts / ? AS INTEGER) * ? AS t, {by}, SUM(input_tokens), SUM(cached_tokens), "
                 f"SUM(output_tokens), COUNT(*) FROM usage WHERE ts >= ? GROUP BY t, {by} ORDER BY t")
        rows = await self._db.call(lambda conn: conn.execute(query, (bucket_s, bucket_s, since)).fetchall())
        return [{"t": t, "who": who, "input_tokens": i, "cached_tokens": c, "output_tokens": o, "requests": n}
                for t, who, i, c, o, n in rows]

    async def admin_password(self) -> str | None:
        """The admin password's hash (`codexlb.admin_auth`), if one is set."""
        row = await self._db.call(lambda conn: conn.execute(
            "SELECT value FROM meta WHERE key = ?", (_ADMIN_PASSWORD,)).fetchone())
        return None if row is None else bytes(row[0]).decode()

    async def set_admin_password(self, password_hash: str) -> None:
        await self._db.call(lambda conn: conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_ADMIN_PASSWORD, password_hash.encode())))

    async def prune_usage(self, before_ts: float | None, max_rows: int | None, batch: int = 10_000) -> int:
        """Drop usage records older than `before_ts` and past the newest `max_rows`; returns how many.
        In batches, each its own call on the database thread, so other writes go between them."""
        deleted = 0
        while True:
            n = await self._db.call(lambda conn: _prune_batch(conn, before_ts, max_rows, batch))
            deleted += n
            if n < batch:
                return deleted

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self.flush_usage()
            except sqlite3.Error as exc:
                _log.error("usage flush failed", error=str(exc))

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        await self.flush_usage()
        await self._db.close()

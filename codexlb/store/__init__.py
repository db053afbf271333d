"""Durable state: accounts (tokens sealed), client API keys (digests only) and usage records, in SQLite or
PostgreSQL (`store/engine`), off the event loop.

Reads happen at start-up (and when another replica changed something); the running process serves from
memory. Account writes are committed one by one (an account is never lost); usage records are batched and
queued every `flush_interval_s` (a crash loses at most that batch).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import socket
import time
from pathlib import Path
from secrets import token_hex
from typing import Any, NamedTuple

from codexlb import log
from codexlb.account import Account
from codexlb.config import Settings
from codexlb.store import accounts as account_rows
from codexlb.store import api_keys as key_rows
from codexlb.store.api_keys import KeyRecord
from codexlb.store.engine import (
    DatabaseError,
    DatabaseUnavailable,
    DatabaseUnreachable,
    Engine,
    OnChanges,
    OnResync,
    Statement,
)
from codexlb.store.leases import Leases
from codexlb.store.secrets import (
    KEY_FILE_NAME,
    SecretBox,
    SecretKeyError,
    load_or_create_key,
)
from codexlb.store.sqlite import DB_FILE_NAME, SQLiteEngine

__all__ = ["Store", "UsageRecord", "DatabaseError", "DatabaseUnavailable", "DatabaseUnreachable", "SecretKeyError",
           "DB_FILE_NAME"]

_log = log.get("codexlb.store")
_KEY_CHECK = "key_check"
_REQUEST_COLUMNS = ("id", "ts", "account_id", "api_key_id", "route", "model", "status", "error_code", "input_tokens",
                    "cached_tokens", "output_tokens", "reasoning_tokens", "duration_ms", "ttfb_ms")
_FILTERABLE = frozenset({"account_id", "api_key_id", "model", "status", "error_code"})
_ADMIN_PASSWORD = "admin_password"
_META = "SELECT value FROM meta WHERE key = ?"
# Time buckets for charts: the two engines floor a float differently.
_BUCKET = {"sqlite": "CAST(ts / ? AS INTEGER) * ?", "postgres": "CAST(FLOOR(ts / ?) * ? AS BIGINT)"}


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
    # The ledger (`store/ledger`).
    conversation: str | None = None
    turn_id: str | None = None
    transport: str | None = None
    client_bytes: int | None = None
    client_items: int | None = None
    upstream_bytes: int | None = None
    upstream_items: int | None = None
    recoveries: int | None = None
    recovery_kinds: str | None = None
    recovery_bytes: int | None = None
    unanchored_bytes: int | None = None


_INSERT_USAGE = (f"INSERT INTO usage ({', '.join(UsageRecord._fields)}) "
                 f"VALUES ({', '.join('?' * len(UsageRecord._fields))})")


def _key_from_text(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretKeyError(f"{source} is not base64") from None
    if len(key) != 32:
        raise SecretKeyError(f"{source} does not hold a 256-bit key")
    return key


async def _open_engine(data_dir: Path, database_url: str) -> Engine:
    if database_url:
        from codexlb.store.postgres import (
            PostgresEngine,  # asyncpg is only loaded by those who use it
        )

        return await PostgresEngine.open(database_url)
    return await SQLiteEngine.open(data_dir / DB_FILE_NAME)


class Store:
    def __init__(self, db: Engine, box: SecretBox, flush_interval_s: float) -> None:
        self.db = db
        # This process among the replicas sharing the database: names what it writes and what it holds.
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{token_hex(3)}"
        self.leases = Leases(db, self.replica)
        self._box = box
        self._flush_interval_s = flush_interval_s
        self._usage: list[UsageRecord] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, data_dir: Path, key_file: Path | None = None, *, database_url: str = "",
                   secret_key: str | None = None, flush_interval_s: float = 1.0) -> "Store":
        """Open (creating and migrating if needed) the database, and the key that seals its tokens: `secret_key`
        (base64), else `key_file`, else <data-dir>/secret.key. Raises SecretKeyError or DatabaseError."""
        db = await _open_engine(data_dir, database_url)
        try:
            box = await _open_box(db, data_dir, key_file, secret_key)
        except BaseException:
            await db.close()
            raise
        store = cls(db, box, flush_interval_s)
        store._flusher = asyncio.create_task(store._flush_forever(), name="codexlb-usage-flush")
        return store

    @classmethod
    async def open_for(cls, settings: Settings) -> "Store":
        return await cls.open(settings.data_dir, settings.secret_key_file, database_url=settings.database_url,
                              secret_key=settings.secret_key)

    async def load_accounts(self) -> list[Account]:
        rows = await self.db.fetch(account_rows.SELECT_ALL)
        return [account_rows.from_row(row, self._box) for row in rows]

    async def load_account(self, account_id: str, *, quick: bool = False) -> Account | None:
        """One account as stored now (another replica may have changed it since this one loaded it)."""
        rows = await self.db.fetch(account_rows.SELECT_ONE, (account_id,), quick=quick)
        return account_rows.from_row(rows[0], self._box) if rows else None

    def _told(self, kind: str, ref: str = "") -> Statement:
        """The change feed's word to the other replicas, written in the same transaction as the change."""
        return self.db.change(self.replica, kind, ref)

    async def save_account(self, account: Account, *, quick: bool = False) -> None:
        """Commit now: for changes that must be durable before the caller goes on (a rotated refresh token).
        `quick`: DatabaseUnreachable at once while the database is away; the write then lands once it is back."""
        await self.db.transaction([(account_rows.UPSERT, account_rows.to_row(account, self._box)),
                                   self._told("account", account.id)], quick=quick)

    def save_account_soon(self, account: Account) -> None:
        """Queue the write (status, usage windows); queued writes land in order."""
        self.db.submit_all([(account_rows.UPSERT, account_rows.to_row(account, self._box)),
                            self._told("account", account.id)])

    async def delete_account(self, account_id: str) -> bool:
        counts = await self.db.transaction([(account_rows.DELETE, (account_id,)), self._told("account", account_id)])
        return counts[0] > 0

    async def create_api_key(self, record: KeyRecord) -> None:
        await self.db.transaction([(key_rows.INSERT, key_rows.to_row(record)), self._told("keys")])

    async def list_api_keys(self) -> list[KeyRecord]:
        return [key_rows.from_row(row) for row in await self.db.fetch(key_rows.SELECT_ALL)]

    async def load_active_api_keys(self) -> list[KeyRecord]:
        return [key_rows.from_row(row) for row in await self.db.fetch(key_rows.SELECT_ACTIVE)]

    async def revoke_api_key(self, key_id: str, at: float) -> bool:
        return (await self.db.transaction([(key_rows.REVOKE, (at, key_id)), self._told("keys")]))[0] > 0

    def touch_api_key_soon(self, key_id: str, at: float) -> None:
        """Queue a key's last use; the caller keeps this to about once a minute per key."""
        self.db.submit(key_rows.TOUCH, (at, key_id, at))

    def record_usage(self, record: UsageRecord) -> None:
        self._usage.append(record)

    def _queue_usage(self) -> None:
        if self._usage:
            batch, self._usage = self._usage, []
            self.db.submit_many(_INSERT_USAGE, batch)

    async def flush_usage(self) -> None:
        """Write the records gathered so far and wait until they have landed."""
        self._queue_usage()
        await self.db.barrier()

    async def usage_rows(self, account_id: str | None = None) -> list[tuple]:
        query = "SELECT * FROM usage" + (" WHERE account_id = ?" if account_id else "") + " ORDER BY id"
        return await self.db.fetch(query, (account_id,) if account_id else ())

    async def requests(self, filters: dict[str, Any], limit: int, before_id: int | None) -> list[dict[str, Any]]:
        """The request log, newest first: rows matching every filter (column -> value), older than `before_id`."""
        where = [f"{column} = ?" for column in filters if column in _FILTERABLE]
        params: list[Any] = [filters[column] for column in filters if column in _FILTERABLE]
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        query = (f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM usage" + (" WHERE " + " AND ".join(where) if where else "")
                 + " ORDER BY id DESC LIMIT ?")
        rows = await self.db.fetch(query, (*params, limit))
        return [dict(zip(_REQUEST_COLUMNS, row)) for row in rows]

    async def token_series(self, by: str, since: float, bucket_s: int) -> list[dict[str, Any]]:
        """Tokens per `bucket_s` seconds since `since`, per account (`by="account_id"`) or API key."""
        if by not in ("account_id", "api_key_id"):
            raise ValueError(by)
        query = (f"SELECT {_BUCKET[self.db.dialect]} AS t, {by}, SUM(input_tokens), SUM(cached_tokens), "
                 f"SUM(output_tokens), COUNT(*) FROM usage WHERE ts >= ? GROUP BY t, {by} ORDER BY t")
        rows = await self.db.fetch(query, (bucket_s, bucket_s, since))
        return [{"t": t, "who": who, "input_tokens": int(i), "cached_tokens": int(c), "output_tokens": int(o),
                 "requests": n} for t, who, i, c, o, n in rows]

    async def admin_password(self) -> str | None:
        """The admin password's hash (`codexlb.admin_auth`), if one is set."""
        rows = await self.db.fetch(_META, (_ADMIN_PASSWORD,))
        return bytes(rows[0][0]).decode() if rows else None

    async def set_admin_password(self, password_hash: str) -> None:
        """A new password ends every session, on every replica."""
        await self.db.transaction([
            ("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
             (_ADMIN_PASSWORD, password_hash.encode())), ("DELETE FROM admin_sessions", ()), self._told("admin")])

    async def add_admin_session(self, digest: bytes, csrf: str, expires_at: float) -> None:
        await self.db.transaction([
            ("INSERT INTO admin_sessions (digest, csrf, expires_at) VALUES (?, ?, ?)", (digest, csrf, expires_at)),
            ("DELETE FROM admin_sessions WHERE expires_at < ?", (time.time(),)), self._told("sessions")])

    async def remove_admin_session(self, digest: bytes) -> None:
        await self.db.transaction([("DELETE FROM admin_sessions WHERE digest = ?", (digest,)), self._told("sessions")])

    async def admin_session(self, digest: bytes) -> tuple[str, float] | None:
        """(CSRF token, expiry) of one session, if it exists and has not expired."""
        rows = await self.db.fetch("SELECT csrf, expires_at FROM admin_sessions WHERE digest = ? AND expires_at >= ?",
                                   (digest, time.time()))
        return (rows[0][0], rows[0][1]) if rows else None

    async def admin_sessions(self) -> list[tuple[bytes, str, float]]:
        """(cookie digest, CSRF token, expiry) of the sessions not yet expired."""
        rows = await self.db.fetch("SELECT digest, csrf, expires_at FROM admin_sessions WHERE expires_at >= ?",
                                   (time.time(),))
        return [(bytes(d), c, e) for d, c, e in rows]

    async def follow_changes(self, on_changes: OnChanges, on_resync: OnResync) -> None:
        """Forever: what the other replicas sharing this database change (`Engine.follow`)."""
        await self.db.follow(self.replica, on_changes, on_resync)

    async def prune_usage(self, before_ts: float | None, max_rows: int | None, batch: int = 10_000) -> int:
        """Drop usage records older than `before_ts` and past the newest `max_rows`; returns how many.
        In batches, each a statement of its own, so other writes go between them."""
        deleted = 0
        while True:
            floor = 0
            if max_rows is not None:
                rows = await self.db.fetch("SELECT id FROM usage ORDER BY id DESC LIMIT 1 OFFSET ?", (max_rows,))
                floor = rows[0][0] if rows else 0
            n = await self.db.execute(
                "DELETE FROM usage WHERE id IN (SELECT id FROM usage WHERE id <= ? OR ts < ? ORDER BY id LIMIT ?)",
                (floor, before_ts if before_ts is not None else float("-inf"), batch))
            deleted += n
            if n < batch:
                return deleted

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            self._queue_usage()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        self._queue_usage()
        await self.db.close()


async def _open_box(db: Engine, data_dir: Path, key_file: Path | None, secret_key: str | None) -> SecretBox:
    """The key, checked against the value sealed when the database was made: a wrong key is refused before
    any token is read. A new key is only made beside a new database: a lost key must not start a second one."""
    rows = await db.fetch(_META, (_KEY_CHECK,))
    key_path = key_file or data_dir / KEY_FILE_NAME
    if secret_key:
        key = _key_from_text(secret_key, "CODEXLB_SECRET_KEY")
        source = "CODEXLB_SECRET_KEY"
    else:
        key = await asyncio.get_running_loop().run_in_executor(None, load_or_create_key, key_path, not rows)
        source = f"the key file {key_path}"
    box = SecretBox(key)
    if not rows:
        # Replicas starting together on a new database: the first check stored wins, the others compare to it.
        await db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                         (_KEY_CHECK, box.seal(_KEY_CHECK, _KEY_CHECK)))
        rows = await db.fetch(_META, (_KEY_CHECK,))
    try:
        box.open(bytes(rows[0][0]), _KEY_CHECK)
    except SecretKeyError:
        hint = ("every replica needs the same key (CODEXLB_SECRET_KEY or secret_key_file)"
                if db.dialect == "postgres" else
                "start with the key file it was created with (CODEXLB_SECRET_KEY_FILE), or move the database "
                "aside to start empty")
        raise SecretKeyError(f"the secret key does not match {db.where}: {source} is not the one it was sealed "
                             f"with; {hint}") from None
    return box

"""Client API keys as rows: digests, never the keys themselves. Functions run on the database thread."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(slots=True)
class KeyRecord:
    id: str
    name: str
    prefix: str            # e.g. "sk-clb-AbC1": enough to tell keys apart, useless to an attacker
    hash: bytes            # SHA-256 of the whole key
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None
    max_concurrency: int | None = None  # requests (an open WebSocket counts as one) at a time; None: no limit

    @property
    def status(self) -> str:
        return "active" if self.revoked_at is None else "revoked"


_COLUMNS = ("id", "name", "prefix", "hash", "created_at", "last_used_at", "revoked_at", "max_concurrency")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM api_keys"


def insert(conn: sqlite3.Connection, record: KeyRecord) -> None:
    conn.execute(
        f"INSERT INTO api_keys ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
        tuple(getattr(record, c) for c in _COLUMNS),
    )


def load(conn: sqlite3.Connection, *, active_only: bool) -> list[KeyRecord]:
    where = " WHERE revoked_at IS NULL" if active_only else ""
    rows = conn.execute(f"{_SELECT}{where} ORDER BY created_at, id").fetchall()
    return [KeyRecord(*row) for row in rows]


def revoke(conn: sqlite3.Connection, key_id: str, at: float) -> bool:
    return conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                        (at, key_id)).rowcount > 0


def touch(conn: sqlite3.Connection, key_id: str, at: float) -> None:
    # max(): queued writes land in order, but never let an older time replace a newer one.
    conn.execute("UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?", (at, key_id))

"""Client API keys as rows: digests, never the keys themselves, and the statements that read and write them."""

from __future__ import annotations

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


COLUMNS = ("id", "name", "prefix", "hash", "created_at", "last_used_at", "revoked_at", "max_concurrency")
INSERT = f"INSERT INTO api_keys ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
SELECT_ALL = f"SELECT {', '.join(COLUMNS)} FROM api_keys ORDER BY created_at, id"
SELECT_ACTIVE = f"SELECT {', '.join(COLUMNS)} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
REVOKE = "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
# Queued writes land in order, but never let an older time replace a newer one.
TOUCH = ("UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)")


def to_row(record: KeyRecord) -> tuple:
    return tuple(getattr(record, c) for c in COLUMNS)


def from_row(row: tuple) -> KeyRecord:
    record = KeyRecord(*row)
    record.hash = bytes(record.hash)
    return record

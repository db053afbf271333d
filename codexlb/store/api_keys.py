"""Client API keys as rows: digests, never the keys themselves, and the statements that read and write them."""

from __future__ import annotations

from dataclasses import dataclass

import orjson


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
    # Limits (`codexlb.key_limits`); None: none. Tokens are input + output as upstream reports them.
    rpm: int | None = None
    tokens_5h: int | None = None
    tokens_day: int | None = None
    tokens_week: int | None = None
    models: tuple[str, ...] | None = None  # model names or globs the key may use
    expires_at: float | None = None
    note: str | None = None

    @property
    def status(self) -> str:
        return "active" if self.revoked_at is None else "revoked"


COLUMNS = ("id", "name", "prefix", "hash", "created_at", "last_used_at", "revoked_at", "max_concurrency", "rpm",
           "tokens_5h", "tokens_day", "tokens_week", "models", "expires_at", "note")
# What `keys update` may change.
SETTABLE = ("max_concurrency", "rpm", "tokens_5h", "tokens_day", "tokens_week", "models", "expires_at", "note")
INSERT = f"INSERT INTO api_keys ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
SELECT_ALL = f"SELECT {', '.join(COLUMNS)} FROM api_keys ORDER BY created_at, id"
SELECT_ACTIVE = f"SELECT {', '.join(COLUMNS)} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
UPDATE = f"UPDATE api_keys SET {', '.join(c + ' = ?' for c in SETTABLE)} WHERE id = ? AND revoked_at IS NULL"
REVOKE = "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
# Queued writes land in order, but never let an older time replace a newer one.
TOUCH = ("UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)")


def _column(record: KeyRecord, column: str) -> object:
    value = getattr(record, column)
    return orjson.dumps(value).decode() if column == "models" and value is not None else value


def to_row(record: KeyRecord) -> tuple:
    return tuple(_column(record, c) for c in COLUMNS)


def update_row(record: KeyRecord) -> tuple:
    """UPDATE's parameters: the settable columns, then the id."""
    return (*(_column(record, c) for c in SETTABLE), record.id)


def from_row(row: tuple) -> KeyRecord:
    record = KeyRecord(*row)
    record.hash = bytes(record.hash)
    if record.models is not None:
        record.models = tuple(orjson.loads(record.models))
    return record

"""What each API key spent in each of its limits' windows (`key_spend`), counted by every replica sharing the
database: a replica adds what it spent since it last told, and learns the fleet's total in the same write.
Functions over an Engine, so the caller (`codexlb.key_limits`) keeps its own bounds."""

from __future__ import annotations

from typing import Sequence

from codexlb.store.engine import Engine

_ADD = ("INSERT INTO key_spend (key_id, kind, window_start, used) VALUES (?, ?, ?, ?) ON CONFLICT "
        "(key_id, kind, window_start) DO UPDATE SET used = key_spend.used + excluded.used RETURNING used")


async def add(db: Engine, key_id: str, kind: str, window_start: float, amount: int) -> int:
    """Add `amount` to the key's spend in this window; returns the fleet's total there, `amount` included."""
    rows = await db.write_returning(_ADD, (key_id, kind, window_start, amount), ())
    return int(rows[0][0])


async def spent(db: Engine, windows: Sequence[tuple[str, float]]) -> dict[tuple[str, str], int]:
    """(key id, kind) -> the fleet's total, for every key, in the given (kind, window start) windows."""
    if not windows:
        return {}
    where = " OR ".join("(kind = ? AND window_start = ?)" for _ in windows)
    params = [value for window in windows for value in window]
    rows = await db.fetch(f"SELECT key_id, kind, used FROM key_spend WHERE {where}", params)
    return {(key_id, kind): int(used) for key_id, kind, used in rows}


async def prune(db: Engine, before: float) -> int:
    """Drop windows that started before `before` (the longest limit's window is a week)."""
    return await db.execute("DELETE FROM key_spend WHERE window_start < ?", (before,))

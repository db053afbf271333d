"""The conversation tables a fleet shares: `sticky` (conversation key -> account, with when it was last seen)
and `owners` (which replica holds a conversation's upstream socket, fenced by an epoch that every claim
raises and announces on the change feed). Functions over an Engine, so the callers keep their own bounds and
batching."""

from __future__ import annotations

from typing import Iterable, Sequence

from codexlb.store.engine import Engine

UPSERT_STICKY = ("INSERT INTO sticky (key, account_id, seen) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                 "account_id = excluded.account_id, seen = excluded.seen")
# A claim takes the conversation whoever held it: the epoch goes up, so the one that held it sees it lost.
_CLAIM = ("INSERT INTO owners (conversation, replica, epoch, seen) VALUES (?, ?, 1, ?) ON CONFLICT (conversation) "
          "DO UPDATE SET replica = excluded.replica, epoch = owners.epoch + 1, seen = excluded.seen RETURNING epoch")
# The change feed's kind for a claim; its ref is the conversation. A key too long for a PostgreSQL NOTIFY (under
# 8000 bytes) is not announced: the replica that lost it finds out in its sweep instead.
OWNER = "owner"
_ANNOUNCED_MAX = 4000
_IN_CHUNK = 500  # keys per IN (...) list: well under both engines' parameter limits


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start:start + _IN_CHUNK]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


async def sticky_rows(db: Engine, keys: Sequence[str]) -> list[tuple[str, str, float]]:
    """(key, account id, seen) for those of `keys` the map holds."""
    return [tuple(row) for row in await db.fetch(  # type: ignore[misc]
        f"SELECT key, account_id, seen FROM sticky WHERE key IN ({_marks(len(keys))})", tuple(keys))]


async def recent_sticky(db: Engine, since: float, limit: int) -> list[tuple[str, str, float]]:
    """(key, account id, seen) of the `limit` entries seen last, none before `since`."""
    return [tuple(row) for row in await db.fetch(  # type: ignore[misc]
        "SELECT key, account_id, seen FROM sticky WHERE seen > ? ORDER BY seen DESC LIMIT ?", (since, limit))]


def save_sticky_soon(db: Engine, rows: Sequence[tuple[str, str, float]]) -> None:
    """Queue (key, account id, seen) rows, in one transaction."""
    db.submit_many(UPSERT_STICKY, rows)


async def claim(db: Engine, conversation: str, replica: str, now: float) -> int:
    """Make `replica` the conversation's owner, and tell the other replicas in the same write (so the one that
    held it closes its socket at once); returns the epoch it now holds."""
    announce = [db.change(replica, OWNER, conversation)] if len(conversation) <= _ANNOUNCED_MAX else []
    rows = await db.write_returning(_CLAIM, (conversation, replica, now), announce)
    return int(rows[0][0])


async def owners(db: Engine, conversations: Sequence[str]) -> dict[str, tuple[str, int]]:
    """conversation -> (replica, epoch) for those that have an owner."""
    found: dict[str, tuple[str, int]] = {}
    for chunk in _chunks(conversations):
        for conversation, replica, epoch in await db.fetch(
                f"SELECT conversation, replica, epoch FROM owners WHERE conversation IN ({_marks(len(chunk))})",
                tuple(chunk)):
            found[conversation] = (replica, int(epoch))
    return found


async def prune(db: Engine, before_ts: float, batch: int = 10_000) -> int:
    """Drop sticky and owner rows not seen since `before_ts`; returns how many. In batches, each a statement of
    its own, so other writes go between them."""
    deleted = 0
    for table, key in (("sticky", "key"), ("owners", "conversation")):
        while True:
            n = await db.execute(f"DELETE FROM {table} WHERE {key} IN "
                                 f"(SELECT {key} FROM {table} WHERE seen < ? LIMIT ?)", (before_ts, batch))
            deleted += n
            if n < batch:
                break
    return deleted

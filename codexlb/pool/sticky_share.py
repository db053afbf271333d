"""The sticky map shared by the replicas on one database, so that a conversation's next request keeps its
account on whichever replica it lands.

Memory (`StickyTable`) stays the first and usual answer. A key this replica has never seen costs one read,
bounded by `READ_WAIT_S`; a database that does not answer in time is left alone for `AWAY_S` (the request
is placed as if there were no shared map). New and moved keys, and a key in use about once a minute, are
queued writes in one statement per turn of the event loop; the key of each response (`resp:`) waits up to
`WRITE_EVERY_S` for others, since one write per response would cost every proxied request a database round
trip of CPU (a follow-up sent within that time to another replica that misses it is placed as a new one).
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from codexlb import log
from codexlb.pool.sticky import StickyTable
from codexlb.recent_map import RecentMap
from codexlb.singleflight import SingleFlight
from codexlb.store import conversations
from codexlb.store.engine import DatabaseError, Engine

_log = log.get("codexlb.pool.sticky_share")
READ_WAIT_S = 0.2
AWAY_S = 5.0
WRITE_EVERY_S = 0.1


class StickyShare:
    def __init__(self, db: Engine, table: StickyTable, max_asked: int = 100_000) -> None:
        self._db = db
        self._table = table
        self._asked: RecentMap[str, bool] = RecentMap(max_asked)  # keys already looked up, found or not
        self._reads: SingleFlight[None] = SingleFlight()
        self._away_until = 0.0
        self._pending: dict[str, tuple[str, str, float]] = {}
        self._later: asyncio.TimerHandle | None = None
        self._soon = False
        self.reads = 0  # lookups that went to the database: for tests and the bench

    async def recall(self, keys: Sequence[str], now: float) -> None:
        """Fill memory with what the shared map knows of keys this replica has never seen (one bounded read)."""
        unknown = [key for key in keys if key not in self._table and key not in self._asked]
        if not unknown or now < self._away_until:
            return
        await self._reads.do(unknown[0], lambda: self._read(unknown, now))

    async def take_over(self, now: float, limit: int) -> int:
        """Fill memory with the map's most recent entries (an upgrade's new process, before it serves): a
        conversation's next request then needs no lookup, which a database slow to answer a process that just
        started would fail within READ_WAIT_S. Unbounded here; the caller bounds it. How many were taken."""
        rows = await conversations.recent_sticky(self._db, now - self._table.ttl_s, limit)
        for key, account_id, seen in rows:
            if key not in self._table:
                self._table.put(key, account_id, seen, shared=True)
        return len(rows)

    async def _read(self, keys: list[str], now: float) -> None:
        self.reads += 1
        try:
            async with asyncio.timeout(READ_WAIT_S):
                rows = await conversations.sticky_rows(self._db, keys)
        except (TimeoutError, DatabaseError) as exc:
            self._away_until = now + AWAY_S
            _log.warning("shared sticky map not read; placing by memory alone", error=str(exc)[:200] or "timeout",
                         retry_in_s=AWAY_S)
            return
        for key in keys:
            self._asked[key] = True
        for key, account_id, seen in rows:
            if seen + self._table.ttl_s > now and key not in self._table:
                self._table.put(key, account_id, seen, shared=True)

    def remember(self, key: str, account_id: str, now: float) -> None:
        """Queue the key's account for the shared map: at the end of this loop turn, or within `WRITE_EVERY_S`
        for a response's key."""
        self._pending[key] = (key, account_id, now)
        loop = asyncio.get_running_loop()
        if self._later is None:
            self._later = loop.call_later(WRITE_EVERY_S, self.flush)
        if not self._soon and not key.startswith("resp:"):
            self._soon = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Queue what is pending now (at shutdown, before the store closes)."""
        self._soon = False
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._pending:
            rows, self._pending = list(self._pending.values()), {}
            conversations.save_sticky_soon(self._db, rows)

    async def prune(self, now: float) -> int:
        """Drop shared rows (and conversation owners) idle past the sticky TTL; returns how many. For the job
        that runs on one replica."""
        return await conversations.prune(self._db, now - self._table.ttl_s)

"""Leases: a named right held by one replica until a time (background jobs, an account's token refresh).

A lease is a row (name, owner, until), claimed by one conditional upsert: a replica gets it when nobody
holds it, when the holder's time ran out, or when it is the holder already (a renewal). No lock is held
between statements, so nothing waits on a replica that died: its leases run out. `until` is wall-clock
time, so the replicas' clocks are trusted to agree within a second (`CLOCK_SKEW_S`); holders act as if
their lease ends that much earlier.
"""

from __future__ import annotations

import time

from codexlb.store.engine import Engine

CLOCK_SKEW_S = 1.0
_CLAIM = ("INSERT INTO leases (name, owner, until) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
          "SET owner = excluded.owner, until = excluded.until WHERE leases.owner = excluded.owner OR leases.until <= ?")
_RELEASE = "DELETE FROM leases WHERE name = ? AND owner = ?"
_HOLDER = "SELECT owner, until FROM leases WHERE name = ?"


class Leases:
    def __init__(self, db: Engine, owner: str) -> None:
        self._db = db
        self.owner = owner

    async def claim(self, name: str, ttl_s: float, *, quick: bool = False) -> bool:
        """Take or renew `name` for `ttl_s` seconds from now; False when another replica holds it. `quick`: see
        `store/engine` (a claim refused so may still land: release it, which lands after it)."""
        now = time.time()
        return await self._db.execute(_CLAIM, (name, self.owner, now + ttl_s, now), quick=quick) == 1

    async def release(self, name: str, *, quick: bool = False) -> None:
        """Give `name` up now (a no-op when another replica holds it by then)."""
        await self._db.execute(_RELEASE, (name, self.owner), quick=quick)

    async def holder(self, name: str) -> str | None:
        """Who holds `name` now, if anyone."""
        rows = await self._db.fetch(_HOLDER, (name,))
        return rows[0][0] if rows and rows[0][1] > time.time() else None

"""Which replica owns a bridged conversation: the one that holds its upstream socket, fenced by an epoch.

A replica that makes a session for a conversation claims it (the epoch goes up, and the claim is announced on
the change feed); a replica whose session's (replica, epoch) is no longer the conversation's owner has lost it
and closes that socket, so no socket is left behind when a conversation moves. It learns that without waiting
on the database in a request: from the change feed (`Sessions.on_owner_changed`, within about a second), and
failing that when the session is next used (checked in the background) or in the sweep (idle ones, one query).
Every database call is bounded; when the database is away the bridge works as on one replica (it just cannot
tell another replica that it took a conversation over).
"""

from __future__ import annotations

import asyncio
import time
from typing import Sequence

from codexlb import log
from codexlb.store import conversations
from codexlb.store.engine import DatabaseError, Engine

_log = log.get("codexlb.bridge.ownership")
WAIT_S = 1.0  # for a claim or a check; a claim runs while the upstream socket opens


class Ownership:
    def __init__(self, db: Engine, replica: str) -> None:
        self._db = db
        self.replica = replica

    async def claim(self, conversation: str) -> int | None:
        """The epoch this replica now holds the conversation at; None when the database did not answer."""
        try:
            async with asyncio.timeout(WAIT_S):
                return await conversations.claim(self._db, conversation, self.replica, time.time())
        except (TimeoutError, DatabaseError) as exc:
            _log.warning("conversation ownership not claimed", error=str(exc)[:200] or "timeout")
            return None

    async def lost(self, held: Sequence[tuple[str, int]]) -> set[str] | None:
        """Of the (conversation, epoch) this replica holds, those another claim took since; None when the
        database did not answer. A conversation with no owner row (pruned) is nobody else's."""
        try:
            async with asyncio.timeout(WAIT_S):
                rows = await conversations.owners(self._db, [conversation for conversation, _ in held])
        except (TimeoutError, DatabaseError) as exc:
            _log.info("conversation owners not checked", error=str(exc)[:200] or "timeout")
            return None
        return {conversation for conversation, epoch in held
                if conversation in rows and rows[conversation] != (self.replica, epoch)}

"""What other replicas sharing the database changed, applied here within about a second: accounts (status,
tokens, usage windows, added or removed), API keys (created, revoked), the admin password and dashboard
sessions; and handed to whoever listens for a kind (the HTTP bridge hears which conversations another replica
claimed).

The store's feed hands over changes in commit order (`Engine.follow`); account changes that come in a burst
are read back in one go per account, so a busy fleet costs each replica one read per changed account, not
one per write. After a lost connection everything is read again, since what was said meanwhile is lost.
"""

from __future__ import annotations

from typing import Callable

from codexlb import log
from codexlb.admin_auth import AdminAuth, Session
from codexlb.keys import KeyRing
from codexlb.pool.roster import Roster
from codexlb.store import Store
from codexlb.store.engine import Change

_log = log.get("codexlb.change_feed")
Listener = Callable[[str], None]  # called with the change's ref; must not wait


class ChangeFeed:
    def __init__(self, store: Store, roster: Roster, keys: KeyRing, admin: AdminAuth) -> None:
        self._store, self._roster, self._keys, self._admin = store, roster, keys, admin
        self._listeners: dict[str, list[Listener]] = {}

    def listen(self, kind: str, listener: Listener) -> Callable[[], None]:
        """Hand every change of `kind` another replica makes to `listener`; returns what stops that. Changes
        missed while the feed was disconnected are not replayed: a listener keeps its own resync."""
        self._listeners.setdefault(kind, []).append(listener)
        return lambda: self._listeners[kind].remove(listener)

    async def run(self) -> None:
        await self._store.follow_changes(self._apply, self.resync)

    async def _apply(self, changes: list[Change]) -> None:
        kinds = {kind for kind, _ in changes}
        for kind, ref in changes:
            for listener in self._listeners.get(kind, ()):
                listener(ref)
        for account_id in dict.fromkeys(ref for kind, ref in changes if kind == "account"):
            read_at = self._roster.version
            self._roster.apply_stored(account_id, await self._store.load_account(account_id), read_at)
        if "keys" in kinds:
            await self._keys.reload()
        if "admin" in kinds:
            await self._reload_password()
        if kinds & {"admin", "sessions"}:
            await self.load_sessions()
        _log.debug("changes from other replicas applied", changes=len(changes))

    async def resync(self) -> None:
        """Everything read again: after changes may have been missed, and on a reload (SIGHUP)."""
        read_at = self._roster.version
        self._roster.apply_all_stored(await self._store.load_accounts(), read_at)
        await self._keys.reload()
        await self._reload_password()
        await self.load_sessions()

    async def load_sessions(self) -> None:
        """Dashboard sessions as stored: a login on any replica holds on this one; a logout ends it here too."""
        self._admin.set_sessions({digest: Session(csrf, expires_at)
                                  for digest, csrf, expires_at in await self._store.admin_sessions()})

    async def _reload_password(self) -> None:
        stored = await self._store.admin_password()
        if stored is not None and stored != self._admin.password_hash:
            self._admin.set_password(stored)

"""The accounts the pool has: held in memory, every change written through the store."""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Callable

from codexlb import log
from codexlb.account import Account, Status, Tokens, Window
from codexlb.auth.authjson import Login
from codexlb.pool.quota import Verdict, exhausted_window
from codexlb.store import DatabaseError, DatabaseUnreachable, Store

_log = log.get("codexlb.pool")
_ALIAS_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RosterError(Exception):
    """An operator's request that cannot be done (unknown account, bad alias); one line."""


def _fresher(new: Tokens, old: Tokens) -> bool:
    return (new.access_expires_at, new.last_refresh) > (old.access_expires_at, old.last_refresh)


class Roster:
    def __init__(self, store: Store, accounts: list[Account]) -> None:
        self._store = store
        self._accounts: dict[str, Account] = {a.id: a for a in accounts}
        self.on_removed: list[Callable[[Account], None]] = []
        # The usable accounts, kept until a status changes or the next timed status is due:
        # choosing an account must not walk a thousand of them per request.
        self._usable: list[Account] | None = None
        self._next_due = math.inf
        self._dirty: set[str] = set()
        # Counts this replica's own account changes, and the last one per account: a reload read before one of
        # them is older than memory and must not undo it (`apply_stored`).
        self.version = 0
        self._changed: dict[str, int] = {}

    @classmethod
    async def load(cls, store: Store) -> "Roster":
        return cls(store, await store.load_accounts())

    @property
    def store(self) -> Store:
        return self._store

    def all(self) -> list[Account]:
        return list(self._accounts.values())

    def by_id(self, account_id: str) -> Account | None:
        return self._accounts.get(account_id)

    def usable(self, now: float) -> list[Account]:
        """Accounts in rotation now (timed statuses past their reset are reactivated first)."""
        if self._usable is None or now >= self._next_due:
            self.reactivate_due(now)
            self._usable = [a for a in self._accounts.values() if a.usable(now)]
            self._next_due = min((a.status_until for a in self._accounts.values()
                                  if a.status in (Status.RATE_LIMITED, Status.QUOTA_EXCEEDED)
                                  and a.status_until is not None), default=math.inf)
        return self._usable

    def find(self, key: str) -> Account | None:
        """By account id, alias, or 1-based position in `all()`."""
        if key in self._accounts:
            return self._accounts[key]
        for account in self._accounts.values():
            if account.alias == key:
                return account
        if key.isdigit() and 1 <= int(key) <= len(self._accounts):
            return self.all()[int(key) - 1]
        return None

    def get(self, key: str) -> Account:
        account = self.find(key)
        if account is None:
            raise RosterError(f"no account {key!r} (see `codexlb accounts list`)")
        return account

    def _alias_for(self, login: Login) -> str:
        base = (login.email or login.account_id).split("@")[0]
        base = re.sub(r"[^A-Za-z0-9._-]", "-", base)[:48].strip("-.") or "account"
        taken = {a.alias for a in self._accounts.values()}
        alias, n = base, 2
        while alias in taken:
            alias, n = f"{base}-{n}", n + 1
        return alias

    async def add_login(self, login: Login, alias: str | None = None) -> tuple[Account, str]:
        """Add an account or refresh its tokens; a staler token never replaces a fresher one.

        Returns the account and what happened: "added", "updated" or "kept".
        """
        if alias is not None and not _ALIAS_OK.match(alias):
            raise RosterError(f"alias {alias!r} must be 1-64 letters, digits, '.', '_' or '-'")
        existing = self._accounts.get(login.account_id)
        if alias is not None and any(a.alias == alias and a is not existing for a in self._accounts.values()):
            raise RosterError(f"alias {alias!r} is taken")
        if existing is None:
            account = Account(
                id=login.account_id, alias=alias or self._alias_for(login), email=login.email, plan=login.plan,
                tokens=login.tokens, created_at=time.time(),
            )
            self._changed_here(account.id)
            await self._store.save_account(account)
            self._accounts[account.id] = account
            self._usable = None
            _log.info("account added", account=account.alias)
            return account, "added"
        outcome = "kept"
        if _fresher(login.tokens, existing.tokens):
            existing.tokens = login.tokens
            outcome = "updated"
            if existing.status in (Status.REAUTH_REQUIRED, Status.DEACTIVATED):
                self._set(existing, Status.ACTIVE, None, "logged in again")
        existing.email = login.email or existing.email
        existing.plan = login.plan or existing.plan
        existing.alias = alias or existing.alias
        self._changed_here(existing.id)
        await self._store.save_account(existing)
        _log.info("account imported again", account=existing.alias, outcome=outcome)
        return existing, outcome

    async def remove(self, key: str) -> Account:
        account = self.get(key)
        self._changed_here(account.id)
        await self._store.delete_account(account.id)
        del self._accounts[account.id]
        self._usable = None
        for listener in self.on_removed:
            listener(account)
        _log.info("account removed", account=account.alias)
        return account

    async def pause(self, key: str) -> Account:
        account = self.get(key)
        self._set(account, Status.PAUSED, None, "paused by operator")
        await self._store.save_account(account)
        return account

    async def resume(self, key: str) -> Account:
        account = self.get(key)
        if account.status is not Status.PAUSED:
            raise RosterError(f"account {account.alias!r} is {account.status.value}, not paused")
        self._set(account, Status.ACTIVE, None, "resumed by operator")
        self.note_windows(account, {}, time.time())
        await self._store.save_account(account)
        return account

    async def set_tokens(self, account: Account, tokens: Tokens) -> None:
        """New tokens from a refresh: the old refresh token is spent, so they must reach the database. Stored
        before the caller goes on while the database answers; while it is away they serve from memory at once
        and their write, kept in order, lands when it is back."""
        account.tokens = tokens
        self._changed_here(account.id)
        try:
            await self._store.save_account(account, quick=True)
        except DatabaseUnreachable:
            _log.warning("database away: new tokens kept in memory, stored once it is back", account=account.alias)
        except DatabaseError as exc:
            self._store.save_account_soon(account)  # given up on, so not written: queued again
            _log.warning("new tokens not stored yet; queued again", account=account.alias, error=str(exc))

    def _changed_here(self, account_id: str) -> None:
        self.version += 1
        self._changed[account_id] = self.version

    def apply_stored(self, account_id: str, stored: Account | None, read_at: int) -> None:
        """What another replica wrote of an account (None: removed), read when `version` was `read_at`, taken
        over here: its status, usage windows and names; its tokens only when fresher than ours. Skipped when
        this replica changed the account since the read: its own write, told to the others, is newer."""
        if self._changed.get(account_id, 0) > read_at:
            return
        mine = self._accounts.get(account_id)
        if stored is None:
            if mine is not None:
                del self._accounts[account_id]
                self._usable = None
                for listener in self.on_removed:
                    listener(mine)
            return
        if mine is None:
            self._accounts[account_id] = stored
            self._usable = None
            return
        if _fresher(stored.tokens, mine.tokens):
            mine.tokens = stored.tokens
        mine.alias, mine.email, mine.plan = stored.alias, stored.email, stored.plan
        if account_id not in self._dirty:  # figures of our own not yet written are newer
            mine.primary, mine.secondary = stored.primary, stored.secondary
        if (mine.status, mine.status_until) != (stored.status, stored.status_until):
            self._set(mine, stored.status, stored.status_until, stored.status_reason or "changed by another replica")

    def apply_all_stored(self, accounts: list[Account], read_at: int) -> None:
        """Every account as stored (after this replica may have missed changes)."""
        stored = {a.id: a for a in accounts}
        for account_id in set(self._accounts) | set(stored):
            self.apply_stored(account_id, stored.get(account_id), read_at)

    def mark_reauth_required(self, account: Account, reason: str) -> None:
        self._set(account, Status.REAUTH_REQUIRED, None, reason)
        _log.warning("account needs a new login; out of rotation until `codexlb accounts login`",
                     account=account.alias, reason=reason)
        self._store.save_account_soon(account)

    def note_windows(self, account: Account, windows: dict[str, Window], now: float) -> None:
        """Fresh usage figures: record them and move the account in or out of quota_exceeded."""
        if "primary" in windows:
            account.primary = windows["primary"]
        if "secondary" in windows:
            account.secondary = windows["secondary"]
        full = exhausted_window(account, now)
        if full is not None and account.status is Status.ACTIVE:
            self._set(account, Status.QUOTA_EXCEEDED, full.reset_at, "usage window full")
            self._store.save_account_soon(account)
        elif full is None and account.status is Status.QUOTA_EXCEEDED and windows:
            self._set(account, Status.ACTIVE, None, "usage below the limit")
            self._store.save_account_soon(account)
        elif windows:
            # Every answer carries usage figures: store them with the next flush, not a write per request.
            self._dirty.add(account.id)

    def flush_dirty(self) -> int:
        """Queue the writes of accounts whose usage figures changed since the last flush."""
        dirty, self._dirty = self._dirty, set()
        for account_id in dirty:
            account = self._accounts.get(account_id)
            if account is not None:
                self._store.save_account_soon(account)
        return len(dirty)

    async def run_flusher(self, interval_s: float = 30.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.flush_dirty()

    def note_verdict(self, account: Account, verdict: Verdict) -> None:
        if account.status in (Status.PAUSED, Status.REAUTH_REQUIRED):
            return
        self._set(account, verdict.status, verdict.until, verdict.reason)
        self._store.save_account_soon(account)

    def reactivate_due(self, now: float) -> None:
        """Timed statuses whose reset has passed go back to active."""
        for account in self._accounts.values():
            if (account.status in (Status.RATE_LIMITED, Status.QUOTA_EXCEEDED)
                    and account.status_until is not None and account.status_until <= now):
                self._set(account, Status.ACTIVE, None, "reset time passed")
                self._store.save_account_soon(account)

    def _set(self, account: Account, status: Status, until: float | None, reason: str) -> None:
        self._changed_here(account.id)
        if account.status is not status:
            _log.info("account status", account=account.alias, status=status.value, was=account.status.value,
                      until=until, reason=reason)
        account.status, account.status_until, account.status_reason = status, until, reason
        self._usable = None

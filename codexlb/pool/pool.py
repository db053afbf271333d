"""Choosing the account for a request: stickiness first, then the strategy; or the pool's answer
when no account can take it.

| Accounts that could serve (not paused, not needing re-login, not deactivated) | Answer |
|---|---|
| none configured | 503 `no_accounts` ("no accounts configured") |
| none, all paused / need re-login / deactivated | 503 `no_accounts` saying which |
| some, but every one is out of quota | 429 `usage_limit_reached` with the earliest `resets_at` |
| some, every one out of quota or rate-limited | 429 `rate_limit_error` + `Retry-After` (earliest reset) |
"""

from __future__ import annotations

import math
import random
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Collection, Sequence

from codexlb.errors import APIError
from codexlb.pool.account import Account, Status
from codexlb.pool.roster import Roster
from codexlb.pool.selection import make_strategy
from codexlb.pool.sticky import StickyTable

_OUT_OF_ROTATION = {
    Status.PAUSED: "paused",
    Status.REAUTH_REQUIRED: "waiting for a new login (`codexlb accounts login`)",
    Status.DEACTIVATED: "deactivated upstream",
}


def unavailable(accounts: Sequence[Account], now: float) -> APIError:
    """The pool's answer when no account is usable: exact shapes, see the module table."""
    if not accounts:
        return APIError(503, "No accounts are configured; add one with `codexlb accounts import` or "
                        "`codexlb accounts login`.", code="no_accounts", type="server_error")
    waiting = [a for a in accounts if a.status not in _OUT_OF_ROTATION]
    if not waiting:
        reasons = sorted({_OUT_OF_ROTATION[a.status] for a in accounts})
        return APIError(503, f"No usable account: every account is {' or '.join(reasons)}.",
                        code="no_accounts", type="server_error")
    reset_at = min(a.status_until or now for a in waiting)
    seconds = max(1, math.ceil(reset_at - now))
    if all(a.status is Status.QUOTA_EXCEEDED for a in waiting):
        return APIError(429, f"Every account in the pool has reached its usage limit; the first resets in "
                        f"{seconds} s.", code="usage_limit_reached", type="usage_limit_reached",
                        extra={"resets_at": int(reset_at), "resets_in_seconds": seconds})
    return APIError(429, f"Every account in the pool is rate-limited; retry in {seconds} s.",
                    code="rate_limited", type="rate_limit_error", headers={"Retry-After": str(seconds)})


class Pool:
    def __init__(self, roster: Roster, *, strategy: str = "capacity", sticky_ttl_s: float = 3600.0,
                 sticky_max: int = 100_000, rng: random.Random | None = None) -> None:
        self.roster = roster
        self.strategy = make_strategy(strategy, rng)
        self.sticky = StickyTable(sticky_max, sticky_ttl_s)
        roster.on_removed.append(lambda account: self.sticky.forget_account(account.id))

    def choose(self, keys: Sequence[str] = (), exclude: Collection[str] = (), now: float | None = None) -> Account:
        """The account for a request with these conversation keys; raises the pool's APIError when none fits."""
        now = time.time() if now is None else now
        for key in keys:
            account_id = self.sticky.get(key, now)
            account = self.roster.by_id(account_id) if account_id is not None else None
            if account is not None and account.id not in exclude and account.usable(now):
                self._stick(keys, account, now)
                return account
        usable = self.roster.usable(now)
        if exclude:
            usable = [a for a in usable if a.id not in exclude]
        chosen = self.strategy.select(usable, now)
        if chosen is None:
            raise unavailable(self.roster.all(), now)
        self._stick(keys, chosen, now)
        return chosen

    def remember_response(self, response_id: str, account: Account, now: float | None = None) -> None:
        """A response this account produced: a follow-up anchored on it must come back here."""
        self.sticky.put(f"resp:{response_id}", account.id, time.time() if now is None else now)

    def _stick(self, keys: Sequence[str], account: Account, now: float) -> None:
        for key in keys:
            self.sticky.put(key, account.id, now)

    def hold(self, account: Account) -> "Lease":
        """Count a request toward the account's load until the lease is released."""
        return Lease(account)

    @asynccontextmanager
    async def lease(self, account: Account) -> AsyncIterator[Account]:
        """`hold` as a context manager: released however the block ends, cancellation included."""
        lease = self.hold(account)
        try:
            yield account
        finally:
            lease.release()


class Lease:
    """An account's in-flight count, taken once and given back exactly once."""

    __slots__ = ("account", "_held")

    def __init__(self, account: Account) -> None:
        self.account = account
        self._held = True
        account.inflight += 1
        account.last_used_at = time.time()

    def release(self) -> None:
        if self._held:
            self._held = False
            self.account.inflight -= 1

"""Choosing the account for a request: stickiness first, then the strategy; or the pool's answer
when no account can take it.

No usable account is a 400, not a 5xx: retrying cannot heal it (an operator must act), and the Codex CLI
retries every 5xx for ~26 s before it shows the message, while it stops at once on a 400 and prints it.

| Accounts that could serve (not paused, not needing re-login, not deactivated) | Answer |
|---|---|
| none configured | 400 `no_accounts` ("no accounts configured") |
| none, all paused / need re-login / deactivated | 400 `no_accounts` saying which |
| some, but every one is out of quota | 429 `usage_limit_reached` with the earliest `resets_at` |
| some, every one out of quota or rate-limited | 429 `rate_limit_error` + `Retry-After` (earliest reset) |
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Collection, Sequence

from codexlb.account import Account, Status
from codexlb.admission.gate import Slot
from codexlb.admission.gates import Gates
from codexlb.config import Settings
from codexlb.errors import APIError
from codexlb.pool.roster import Roster
from codexlb.pool.selection import make_strategy
from codexlb.pool.sticky import StickyTable
from codexlb.pool.sticky_share import StickyShare
from codexlb.store.engine import Engine

_OUT_OF_ROTATION = {
    Status.PAUSED: "paused (`codexlb accounts resume`)",
    Status.REAUTH_REQUIRED: "waiting for a new login (`codexlb accounts login`)",
    Status.DEACTIVATED: "deactivated upstream (add another: `codexlb accounts login`)",
}


def unavailable(accounts: Sequence[Account], now: float) -> APIError:
    """The pool's answer when no account is usable: exact shapes, see the module table."""
    if not accounts:
        return APIError(400, "No accounts are configured; add one with `codexlb accounts import` or "
                        "`codexlb accounts login`.", code="no_accounts", type="invalid_request_error")
    waiting = [a for a in accounts if a.status not in _OUT_OF_ROTATION]
    if not waiting:
        reasons = sorted({_OUT_OF_ROTATION[a.status] for a in accounts})
        return APIError(400, f"No usable account: every account is {' or '.join(reasons)}.",
                        code="no_accounts", type="invalid_request_error")
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
                 sticky_max: int = 100_000, rng: random.Random | None = None, gates: Gates | None = None,
                 shared: Engine | None = None) -> None:
        self.roster = roster
        self.strategy = make_strategy(strategy, rng)
        self.sticky = StickyTable(sticky_max, sticky_ttl_s)
        # The sticky map the replicas share (`shared`: their database); None keeps it in memory alone.
        self.share = StickyShare(shared, self.sticky, sticky_max) if shared is not None and sticky_ttl_s > 0 else None
        self.gates = gates or Gates(Settings())
        roster.on_removed.append(self._forget)

    def _forget(self, account: Account) -> None:
        self.sticky.forget_account(account.id)
        self.gates.forget_account(account.id)

    def choose(self, keys: Sequence[str] = (), exclude: Collection[str] = (), now: float | None = None) -> Account:
        """The account for a request with these conversation keys; raises the pool's APIError when none fits.

        An account with no free stream slot is passed over while another has one (`admit` has already kept a
        placed conversation on its account: this chooses for the rest, and says what the pool would answer)."""
        now = time.time() if now is None else now
        usable = self.roster.usable(now)
        if exclude:
            usable = [a for a in usable if a.id not in exclude]
        if not usable:
            raise unavailable(self.roster.all(), now)
        roomy = [a for a in usable if self.gates.account(a).has_room()]
        for key in keys:
            account = self._sticky(key, exclude, now)
            if account is not None and (not roomy or self.gates.account(account).has_room()):
                self._stick(keys, account, now)
                return account
        chosen = self.strategy.select(roomy or usable, now)
        if chosen is None:
            raise unavailable(self.roster.all(), now)
        self._stick(keys, chosen, now)
        return chosen

    async def admit(self, keys: Sequence[str] = (), exclude: Collection[str] = (),
                    wait_s: float | None = None) -> tuple[Account, Slot]:
        """An account and one of its stream slots. A conversation the pool has placed (any of its keys is
        sticky to a usable account) waits for that account's slot rather than move: its upstream state, its
        prompt cache and the reasoning it sealed (which no other account can open) live there. Any other request
        goes to an account with a free slot, and only when every usable account is full waits in one line
        (`any_account`, FIFO) for whichever frees a slot first. Raises the pool's APIError or GateFull."""
        now = time.time()
        if self.share is not None and keys:
            await self.share.recall(keys, now)
        pinned = next((a for a in (self._sticky(key, exclude, now) for key in keys) if a is not None), None)
        if pinned is not None:
            self._stick(keys, pinned, now)
            gate = self.gates.account(pinned)
            return self._used(pinned, gate.try_acquire() or await gate.acquire(wait_s))
        line = self.gates.any_account
        if not (line.in_use or line.waiting):  # nobody is in line before us
            account = self.choose(keys, exclude, now)
            slot = self.gates.account(account).try_acquire()
            if slot is not None:
                return self._used(account, slot)
        return await self._first_free(keys, exclude, line.wait_s if wait_s is None else wait_s)

    async def _first_free(self, keys: Sequence[str], exclude: Collection[str], wait_s: float) -> tuple[Account, Slot]:
        """In the line's one slot (so in arrival order), take the first account slot that comes free."""
        line, freed = self.gates.any_account, self.gates.account_freed
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        async with line.slot(wait_s):
            while True:
                freed.clear()  # before looking, so a slot freed after the look still wakes us
                account = self.choose(keys, exclude)
                slot = self.gates.account(account).try_acquire()
                if slot is not None:
                    return self._used(account, slot)
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await freed.wait()
                except TimeoutError:
                    raise line.reject(f"no account freed a stream slot within {wait_s:g} s") from None

    @staticmethod
    def _used(account: Account, slot: Slot) -> tuple[Account, Slot]:
        account.last_used_at = time.time()
        return account, slot

    def _sticky(self, key: str, exclude: Collection[str], now: float) -> Account | None:
        account_id = self.sticky.get(key, now)
        account = self.roster.by_id(account_id) if account_id is not None else None
        if account is not None and account.id not in exclude and account.usable(now):
            return account
        return None

    def remember_response(self, response_id: str, account: Account, now: float | None = None) -> None:
        """A response this account produced: a follow-up anchored on it must come back here."""
        self._put(f"resp:{response_id}", account, time.time() if now is None else now)

    def _stick(self, keys: Sequence[str], account: Account, now: float) -> None:
        for key in keys:
            self._put(key, account, now)

    def _put(self, key: str, account: Account, now: float) -> None:
        if self.sticky.put(key, account.id, now) and self.share is not None:
            self.share.remember(key, account.id, now)

"""One token refresh per account across the whole fleet.

Before it calls the token endpoint, a replica claims the account's refresh lease (`store/leases`: a row, not
a lock held across the call). The one that gets it reads the account as stored once more (a refresh may have
finished between its first look and its claim), refreshes, stores the new tokens and gives the lease back.
The others poll the stored account every `POLL_S` until its tokens are newer than the ones they had, and
adopt them without a refresh; so a refresh token is spent once, and a replica that lost the race never sees
it refused. A holder that dies leaves a lease that runs out after `hold_s` (the longest a refresh can take),
and the next waiter claims it.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from secrets import token_hex
from typing import AsyncIterator

from codexlb import log
from codexlb.account import Account, Tokens
from codexlb.pool.roster import Roster
from codexlb.store import DatabaseError
from codexlb.store.leases import CLOCK_SKEW_S, Leases

POLL_S = 0.1
_log = log.get("codexlb.refresh")


class ClaimError(Exception):
    """This replica may not refresh the account now, and nobody else did within the bound."""


def _newer(stored: Tokens, had: Tokens) -> bool:
    changed = (stored.access_token, stored.refresh_token) != (had.access_token, had.refresh_token)
    return changed and (stored.access_expires_at, stored.last_refresh) >= (had.access_expires_at, had.last_refresh)


class RefreshClaims:
    def __init__(self, roster: Roster, *, hold_s: float, poll_s: float = POLL_S) -> None:
        self._roster = roster
        # An owner of its own: two refreshers in one process exclude each other as two replicas do.
        self._leases = Leases(roster.store.db, f"{roster.store.replica}/refresh-{token_hex(2)}")
        self._hold_s = hold_s
        self._poll_s = poll_s

    @asynccontextmanager
    async def claim(self, account: Account) -> AsyncIterator[Tokens | None]:
        """Yields None while this replica holds the account's refresh lease (refresh in the block), or the
        tokens another replica stored meanwhile, already adopted (refresh nothing). Raises ClaimError."""
        name = f"refresh:{account.id}"
        try:
            adopted, claimed = await self._settle(account, name)
        except DatabaseError as exc:
            raise ClaimError(f"cannot claim the refresh (database: {exc})") from None
        try:
            yield adopted
        finally:
            if claimed:
                await self._release(name)

    async def _settle(self, account: Account, name: str) -> tuple[Tokens | None, bool]:
        """(tokens adopted or None, whether we hold the lease): one of the two, within the bound."""
        had = account.tokens
        loop = asyncio.get_running_loop()
        # By then a holder that died has let its lease run out, as any replica's clock tells.
        deadline = loop.time() + self._hold_s + CLOCK_SKEW_S + self._poll_s
        while True:
            adopted = await self._adopt(account, had)
            if adopted is not None:
                return adopted, False
            if await self._leases.claim(name, self._hold_s):
                # A refresh may have ended between our look and our claim: look again before spending ours.
                adopted = await self._adopt(account, had)
                if adopted is not None:
                    await self._release(name)
                return adopted, adopted is None
            if loop.time() >= deadline:
                raise ClaimError(f"another replica holds the refresh of {account.alias} past {self._hold_s:g} s")
            await asyncio.sleep(self._poll_s)

    async def _adopt(self, account: Account, had: Tokens) -> Tokens | None:
        """The stored tokens, when newer than `had`: another replica refreshed (or a new login came)."""
        stored = await self._roster.store.load_account(account.id)
        if stored is None or not _newer(stored.tokens, had):
            return None
        account.tokens = stored.tokens
        _log.info("token refreshed by another replica; adopted", account=account.alias)
        return stored.tokens

    async def _release(self, name: str) -> None:
        try:
            await self._leases.release(name)
        except DatabaseError as exc:
            _log.warning("refresh lease not released; it runs out on its own", error=str(exc))

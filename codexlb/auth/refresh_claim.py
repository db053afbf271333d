"""One token refresh per account across the whole fleet.

Before it calls the token endpoint, a replica claims the account's refresh lease (`store/leases`: a row, not
a lock held across the call). The one that gets it reads the account as stored once more (a refresh may have
finished between its first look and its claim), refreshes, stores the new tokens and gives the lease back.
The others poll the stored account every `POLL_S` until its tokens are newer than the ones they had, and
adopt them without a refresh; so a refresh token is spent once, and a replica that lost the race never sees
it refused. A holder that dies leaves a lease that runs out after `hold_s` (the longest a refresh can take),
and the next waiter claims it.

While the database is unreachable no lease can be taken, and failing every request whose account's token
expired meanwhile is worse than one replica refreshing alone: the claim then says `alone` at once (every
database call here is `quick`), and the refresh goes on without the lease (`refresh` keeps its own single
flight per account, and never sends a refresh token again that was refused while alone). Not when another
replica was seen holding the account's lease and may hold it still: it is likely refreshing, so this replica
does not (ClaimError) until that lease could have run out; its tokens arrive with the database.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from secrets import token_hex
from typing import AsyncIterator

from codexlb import log
from codexlb.account import Account, Tokens
from codexlb.pool.roster import Roster
from codexlb.store import DatabaseError, DatabaseUnreachable
from codexlb.store.leases import CLOCK_SKEW_S, Leases

POLL_S = 0.1
_log = log.get("codexlb.refresh")


class ClaimError(Exception):
    """This replica may not refresh the account now, and nobody else did within the bound."""


def _newer(stored: Tokens, had: Tokens) -> bool:
    changed = (stored.access_token, stored.refresh_token) != (had.access_token, had.refresh_token)
    return changed and (stored.access_expires_at, stored.last_refresh) >= (had.access_expires_at, had.last_refresh)


@dataclass(frozen=True, slots=True)
class Claim:
    """What the claimant may do: adopt the tokens another replica stored meanwhile (`adopted`), else refresh,
    with the fleet's lease or, the database being unreachable, `alone`."""

    adopted: Tokens | None = None
    alone: bool = False


class RefreshClaims:
    def __init__(self, roster: Roster, *, hold_s: float, poll_s: float = POLL_S) -> None:
        self._roster = roster
        # An owner of its own: two refreshers in one process exclude each other as two replicas do.
        self._leases = Leases(roster.store.db, f"{roster.store.replica}/refresh-{token_hex(2)}")
        self._hold_s = hold_s
        self._poll_s = poll_s
        # Account id -> until when (loop time) another replica may still hold its refresh lease, as last seen.
        self._held_elsewhere: dict[str, float] = {}

    @asynccontextmanager
    async def claim(self, account: Account) -> AsyncIterator[Claim]:
        """Yields the Claim: refresh in the block unless it holds adopted tokens. Raises ClaimError."""
        name = f"refresh:{account.id}"
        try:
            adopted, claimed = await self._settle(account, name)
            turn = Claim(adopted)
        except DatabaseUnreachable as exc:
            # A claim the database did not answer may still land when it is back: the release lands after it.
            await self._release(name)
            turn, claimed = self._alone(account, exc), False
        except DatabaseError as exc:
            raise ClaimError(f"cannot claim the refresh (database: {exc})") from None
        try:
            yield turn
        finally:
            if claimed:
                await self._release(name)

    def _alone(self, account: Account, exc: DatabaseUnreachable) -> Claim:
        if asyncio.get_running_loop().time() < self._held_elsewhere.get(account.id, 0.0):
            raise ClaimError(f"another replica was refreshing {account.alias} when the database went away")
        _log.warning("database away: refreshing without the fleet's lease", account=account.alias, error=str(exc))
        return Claim(alone=True)

    async def _settle(self, account: Account, name: str) -> tuple[Tokens | None, bool]:
        """(tokens adopted or None, whether we hold the lease): one of the two, within the bound."""
        had = account.tokens
        loop = asyncio.get_running_loop()
        # By then a holder that died has let its lease run out, as any replica's clock tells.
        deadline = loop.time() + self._hold_s + CLOCK_SKEW_S + self._poll_s
        while True:
            adopted = await self._adopt(account, had)
            if adopted is not None:
                self._held_elsewhere.pop(account.id, None)
                return adopted, False
            if await self._leases.claim(name, self._hold_s, quick=True):
                self._held_elsewhere.pop(account.id, None)
                # A refresh may have ended between our look and our claim: look again before spending ours.
                adopted = await self._adopt(account, had)
                if adopted is not None:
                    await self._release(name)
                return adopted, adopted is None
            self._held_elsewhere[account.id] = loop.time() + self._hold_s + CLOCK_SKEW_S
            if loop.time() >= deadline:
                raise ClaimError(f"another replica holds the refresh of {account.alias} past {self._hold_s:g} s")
            await asyncio.sleep(self._poll_s)

    async def _adopt(self, account: Account, had: Tokens) -> Tokens | None:
        """The stored tokens, when newer than `had`: another replica refreshed (or a new login came)."""
        stored = await self._roster.store.load_account(account.id, quick=True)
        if stored is None or not _newer(stored.tokens, had):
            return None
        account.tokens = stored.tokens
        _log.info("token refreshed by another replica; adopted", account=account.alias)
        return stored.tokens

    async def _release(self, name: str) -> None:
        try:
            await self._leases.release(name, quick=True)
        except DatabaseUnreachable:
            pass  # kept: lands, in order, once the database is back
        except DatabaseError as exc:
            _log.warning("refresh lease not released; it runs out on its own", error=str(exc))

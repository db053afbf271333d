"""Reading each account's usage windows from upstream (`/wham/usage`) on an interval, so the pool
knows remaining capacity even for accounts that have not served a request lately."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from yarl import URL

from codexlb import log
from codexlb.account import Account, Status
from codexlb.auth.refresh import Refresher, RefreshError
from codexlb.pool.quota import windows_from_usage
from codexlb.pool.roster import Roster
from codexlb.upstream.session import account_headers

_log = log.get("codexlb.usage")
_SKIP = (Status.PAUSED, Status.REAUTH_REQUIRED, Status.DEACTIVATED)


class UsagePoller:
    def __init__(self, roster: Roster, refresher: Refresher, http: aiohttp.ClientSession, upstream_base_url: str,
                 *, timeout_s: float = 20.0) -> None:
        self._roster = roster
        self._refresher = refresher
        self._http = http
        self._url = upstream_base_url.rstrip("/") + "/wham/usage"
        self._host = URL(self._url).host
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def poll(self, account: Account, *, retried: bool = False) -> bool:
        """Read one account's windows; True when they were updated."""
        token = account.tokens.access_token
        try:
            async with self._http.get(self._url, headers=account_headers(account, token),
                                      timeout=self._timeout) as resp:
                if resp.status == 401 and not retried:
                    await self._refresher.refresh(account, token, "usage poll got 401")
                    return await self.poll(account, retried=True)
                if resp.status != 200:
                    _log.warning("usage poll failed", account=account.alias, host=self._host, status=resp.status)
                    return False
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, RefreshError) as exc:
            _log.warning("usage poll failed", account=account.alias, host=self._host, error=type(exc).__name__,
                         reason=str(exc)[:200])
            return False
        windows = windows_from_usage(body, time.time())
        self._roster.note_windows(account, windows, time.time())
        return bool(windows)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(a) for a in self._roster.all() if a.status not in _SKIP))

    async def run(self, interval_s: float) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(interval_s)

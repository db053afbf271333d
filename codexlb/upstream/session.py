"""The one upstream HTTP client of the process: pooled, kept alive, bounded."""

from __future__ import annotations

import aiohttp

from codexlb import __version__
from codexlb.pool.account import Account

USER_AGENT = f"codexlb/{__version__}"


def make_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300),
        # Per-call timeouts are set where the call is made; this only stops a connect from hanging.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=15),
        headers={"User-Agent": USER_AGENT},
        auto_decompress=True,
    )


def account_headers(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.tokens.access_token}", "chatgpt-account-id": account.id}

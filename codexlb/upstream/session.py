"""The one upstream HTTP client of the process: pooled, kept alive, bounded."""

from __future__ import annotations

import warnings

import aiohttp

from codexlb import __version__
from codexlb.account import Account
from codexlb.config import Settings
from codexlb.upstream.proxy import Via, choose
from codexlb.upstream.tls import client_context

USER_AGENT = f"codexlb/{__version__}"


def upstream_via(settings: Settings) -> Via:
    """How this process reaches upstream and the OAuth server (ValueError: the environment is ambiguous)."""
    return choose(settings.upstream_proxy, (settings.upstream_base_url, settings.auth_base_url))


def make_session(via: Via = Via(), connect_timeout_s: float = 15.0) -> aiohttp.ClientSession:
    """The session, through `via`'s proxy if it names one."""
    with warnings.catch_warnings():
        # aiohttp 3.14 deprecates a session-wide proxy_auth for a Proxy-Authorization header on every call;
        # one session-wide setting is what a proxy for all of upstream needs, and it works on 3.12 to 3.14.
        warnings.simplefilter("ignore", DeprecationWarning)
        proxy_auth = aiohttp.BasicAuth(via.user, via.password) if via.user else None
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300, ssl=client_context()),
            # Longer bounds are set where a call is made (or it has none: a stream runs as long as it runs);
            # this one stops a connect from hanging.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=True,
            proxy=via.proxy,
            proxy_auth=proxy_auth,
        )


def account_headers(account: Account, access_token: str | None = None) -> dict[str, str]:
    """The account's credentials upstream: `access_token` when given (a caller that keeps the token it sent, to
    tell a 401 for it from one for a newer token), else the current one."""
    token = account.tokens.access_token if access_token is None else access_token
    return {"Authorization": f"Bearer {token}", "chatgpt-account-id": account.id}

"""A whole account life cycle at debug level, ours and the libraries' logs, and not one token in them."""

from __future__ import annotations

import io
import time

from codexlb import log
from codexlb.auth.refresh import Refresher, RefreshError
from codexlb.pool.pool import Pool
from codexlb.upstream.session import make_session
from codexlb.upstream.usage_poller import UsagePoller
from tests.accounts.conftest import login_of


def every_token(sim) -> set[str]:
    tokens = set()
    for account in sim.backend.accounts:
        tokens |= set(account.valid_access) | account.used_refresh
        tokens |= {account.access_token, account.refresh_token, account.id_token}
    return tokens


async def test_account_life_cycle_logs_no_token(roster, sim):
    stream = io.StringIO()
    log.configure("debug", "json", stream)
    http = make_session()
    try:
        for sim_account in sim.backend.accounts:
            await roster.add_login(login_of(sim_account))
        refresher = Refresher(roster, http, sim.url)
        first, second, third = roster.all()
        await refresher.refresh_due(now=first.tokens.access_expires_at)
        sim.backend.refresh(sim.backend.accounts[2].refresh_token)
        try:
            await refresher.refresh(third, third.tokens.access_token, "expiring")
        except RefreshError:
            pass
        async with http.post(f"{sim.url}/__sim/accounts/2/usage", json={"primary_used_percent": 100}):
            pass
        await UsagePoller(roster, refresher, http, sim.upstream_base_url).poll_all()
        assert Pool(roster).choose(["session:x"], now=time.time()) is first
        await roster.pause(first.alias)
    finally:
        await http.close()
        log.configure("info", "json", io.StringIO())
    text = stream.getvalue()
    assert "token refreshed" in text and "account needs a new login" in text and "account status" in text
    leaked = [token[:12] + "…" for token in every_token(sim) if token in text]
    assert leaked == []

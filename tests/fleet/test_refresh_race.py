"""Token refresh is single-flight across the fleet: 3 replicas, 8 requests each, one expired token."""

from __future__ import annotations

import asyncio
import time

from codexlb.account import Status
from codexlb.auth.refresh import Refresher
from codexlb.pool.roster import Roster
from codexlb.services import REFRESHER, STORE
from codexlb.store.leases import Leases
from tests.accounts.conftest import login_of
from tests.fleet.conftest import start_fleet
from tests.proxy.test_codex_route import post
from tests.simclient import body, user


async def test_one_refresh_for_the_fleet_and_every_request_served(fleet_database, aiohttp_server, settings, sim_one,
                                                                  http):
    fleet = await start_fleet(aiohttp_server, settings, sim_one, fleet_database)
    sim_account = sim_one.backend.accounts[0]
    async with http.post(f"{sim_one.url}/__sim/accounts/1/expire") as resp:
        assert resp.status == 200

    answers = await asyncio.gather(*(post(http, replica, body(user(f"r{n} q{i}")))
                                     for n, replica in enumerate(fleet) for i in range(8)))

    assert [resp.status for resp, _ in answers] == [200] * 24
    assert all(events[-1]["type"] == "response.completed" for _, events in answers)
    assert len(sim_account.used_refresh) == 1, "the sim served more than one refresh"
    results = [replica.app[REFRESHER].results for replica in fleet]
    print(f"\nrefreshes per replica: {[dict(r) for r in results]}")
    assert sum(r["ok"] for r in results) == 1
    assert sum(r["refused"] + r["failed"] for r in results) == 0
    for replica in fleet:
        [account] = replica.roster.all()
        assert account.status is Status.ACTIVE
        assert account.tokens.access_token == sim_account.access_token  # the winner's, adopted
    stored = await fleet[0].app[STORE].load_account(sim_account.account_id)
    assert stored is not None and stored.status is Status.ACTIVE
    assert stored.tokens.refresh_token == sim_account.refresh_token


async def test_a_refresh_lease_left_by_a_dead_replica_runs_out_and_is_claimed(store, sim_one, http):
    """A replica that died mid-refresh holds nothing for long: the next refresh waits for its lease to run
    out (not for ever), then refreshes; the dead one's refresh token was never spent, so it still works."""
    roster = await Roster.load(store)
    account, _ = await roster.add_login(login_of(sim_one.backend.accounts[0]))
    assert await Leases(store.db, "dead-replica").claim(f"refresh:{account.id}", 0.5)
    refresher = Refresher(roster, http, sim_one.url)
    started = time.monotonic()
    tokens = await refresher.refresh(account, account.tokens.access_token, "expiring")
    waited = time.monotonic() - started
    print(f"\nwaited {waited:.2f} s for a dead replica's 0.5 s refresh lease")
    assert 0.3 <= waited < 5
    assert tokens.refresh_token == sim_one.backend.accounts[0].refresh_token
    assert refresher.results == {"ok": 1}
    assert await store.leases.holder(f"refresh:{account.id}") is None  # given back

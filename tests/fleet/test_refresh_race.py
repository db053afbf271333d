"""Token refresh is single-flight across the fleet: 3 replicas, 8 requests each, one expired token."""

from __future__ import annotations

import asyncio

from codexlb.account import Status
from codexlb.services import REFRESHER, STORE
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

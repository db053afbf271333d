"""PostgreSQL going away under load: requests on accounts already known go on from memory, what must be
written first waits a bounded time and says so, and the queued writes land once it is back."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import asyncpg

from codexlb.account import Status
from codexlb.services import STORE
from codexlb.store import Store
from tests.proxy.conftest import start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import body, user

CLIENTS = 4


async def test_requests_go_on_while_postgres_restarts(aiohttp_server, settings, sim, http, pg_server, pg_database):
    proxy = await start_proxy(aiohttp_server, dataclasses.replace(settings, database_url=pg_database), sim)
    stopped, started = asyncio.Event(), asyncio.Event()
    served = {"before": 0, "away": 0, "after": 0}
    failed: list[int] = []

    async def client() -> None:
        while True:
            phase = "after" if started.is_set() else "away" if stopped.is_set() else "before"
            async with http.post(proxy.codex_base_url + "/responses", json=body(user("hi"), stream=True)) as resp:
                await resp.read()
                if resp.status != 200:
                    failed.append(resp.status)
            served[phase] += 1
            if served["after"] >= 2 * CLIENTS:
                return

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    while served["before"] < 2 * CLIENTS:
        await asyncio.sleep(0.01)
    await pg_server.astop()
    stopped.set()
    try:
        while served["away"] < 4 * CLIENTS:
            await asyncio.sleep(0.01)
        # An admin change must be written before it is answered: a bounded wait, then a retriable 503.
        async with http.post(proxy.url + "/api/keys", json={"name": "during"}) as resp:
            assert resp.status == 503 and (await resp.json())["error"]["code"] == "database_unavailable"
            assert resp.headers["Retry-After"] == "5"
    finally:
        await pg_server.astart()  # the session's other tests need it, whatever happened here
    started.set()
    await asyncio.wait_for(asyncio.gather(*clients), 60)
    assert failed == []
    assert served["away"] >= 4 * CLIENTS

    # Every request was written down, those served while the database was away included (after a flush).
    await proxy.app[STORE].flush_usage()
    conn = await asyncpg.connect(pg_database)
    try:
        logged = await conn.fetchval("SELECT count(*) FROM usage WHERE status = 200")
        keys = await conn.fetchval("SELECT count(*) FROM api_keys")
    finally:
        await conn.close()
    assert logged == sum(served.values())
    assert keys == 0  # the 503'd key was not made behind the operator's back


async def sim_refreshes(http, sim) -> list[int]:
    async with http.get(f"{sim.url}/__sim/accounts") as resp:
        return [account["refreshes"] for account in (await resp.json())["accounts"]]


async def test_a_token_that_expires_while_postgres_is_away_is_refreshed_and_stored_once_it_is_back(
        aiohttp_server, settings, sim, http, pg_server, pg_database):
    """The refresh has spent the old refresh token at the auth server: the request that needed it is served
    with the new token, at once (no claim or write waits out the database's bound), and the new tokens reach
    the database when it is back."""
    pg_settings = dataclasses.replace(settings, database_url=pg_database)
    proxy = await start_proxy(aiohttp_server, pg_settings, sim, accounts=1)
    resp, _ = await post(http, proxy, body(user("before")))
    assert resp.status == 200
    await proxy.app[STORE].db.barrier()
    # The test server commits asynchronously (synchronous_commit off): a crash right after a commit can lose it.
    await pg_server.astop()
    try:
        async with http.post(f"{sim.url}/__sim/accounts/1/expire") as resp:
            assert resp.status == 200
        started = time.monotonic()
        answers = await asyncio.gather(*(post(http, proxy, body(user(f"after expiry {n}"))) for n in range(CLIENTS)))
        took = time.monotonic() - started
        print(f"\n{CLIENTS} requests that needed a refresh while PostgreSQL was away: "
              f"{[resp.status for resp, _ in answers]} in {took * 1000:.0f} ms")
        assert [resp.status for resp, _ in answers] == [200] * CLIENTS
        assert all(events[-1]["type"] == "response.completed" for _, events in answers)
        assert await sim_refreshes(http, sim) == [1, 0, 0]
        assert took < 1.0
        resp, _ = await post(http, proxy, body(user("once more")))
        assert resp.status == 200
        assert await sim_refreshes(http, sim) == [1, 0, 0]
        [account] = proxy.roster.all()
        assert account.status is Status.ACTIVE
    finally:
        await pg_server.astart()
    await proxy.app[STORE].db.barrier()
    fresh = await Store.open_for(pg_settings)
    try:
        stored = await fresh.load_account(account.id)
    finally:
        await fresh.close()
    assert stored is not None and stored.status is Status.ACTIVE
    assert stored.tokens.refresh_token == sim.backend.accounts[0].refresh_token
    assert stored.tokens.access_token == account.tokens.access_token

"""PostgreSQL going away under load: requests on accounts already known go on from memory, what must be
written first waits a bounded time and says so, and the queued writes land once it is back."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg

from codexlb.services import STORE
from tests.proxy.conftest import start_proxy
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

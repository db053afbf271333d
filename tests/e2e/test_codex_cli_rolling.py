"""A fleet upgraded without downtime: three `codexlb serve` replicas on one PostgreSQL database behind a real HAProxy
(hashing on the CLI's session header, health-checking `/health/ready`), rolled one replica at a time, while 50
streaming clients run through the front door. Two ways to roll a replica:

- in place, `codexlb upgrade` on its data dir (a hand-over to a new process on the same port), one every 5 s, round
  after round, while one long-lived Codex CLI (`codex app-server`) holds a 30-turn session with a tool call in every
  turn, over HTTP and over WebSocket: no refused connection, no failed request or turn, no CLI retry or
  whole-history resend, at most one whole-input upstream send per conversation per hand-over, printed as a table;
- replaced, as a container would be: SIGTERM, then a new process on the same port. Its readiness fails at once
  while the port goes on accepting for `drain_pause_s`, so HAProxy's health check takes it out before a
  connection to it could be refused."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re

import pytest

from codexlb.sim.backend import SimConfig
from codexlb.sim.running import running_sim
from tests.e2e.test_codex_cli_fleet import create_key, served_by
from tests.e2e.test_codex_cli_sim import CodexHome
from tests.e2e.test_codex_cli_upgrade import RECORDS, check, session_through_upgrades
from tests.fleet.conftest import SECRET_KEY, import_accounts
from tests.fleet.replicas import Replica
from tests.haproxy import CHECK_INTERVAL_MS, running_haproxy
from tests.test_upgrade import streaming_clients

pytestmark = pytest.mark.one_pass

REPLICAS = 3
CLIENTS = 50
# Above HAProxy's time to take a replica out: two failed checks (`fall 2`) `inter` apart, and the check under way.
DRAIN_PAUSE_S = 3 * CHECK_INTERVAL_MS / 1000 + 0.5


def name(replicas: list[Replica], replica: Replica) -> str:
    """The replica's name at the front door (`x-served-by`, `served()`)."""
    return f"s{replicas.index(replica)}"


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_a_session_through_rolling_upgrades(codex_bin, pg_database, settings, tmp_path, transport):
    async with running_sim(SimConfig(accounts=3, records=RECORDS)) as sim:
        await session_through_rolling_upgrades(codex_bin, pg_database, settings, sim, tmp_path, transport)


async def session_through_rolling_upgrades(codex_bin, pg_database, settings, sim, tmp_path, transport):
    await import_accounts(dataclasses.replace(settings, database_url=pg_database, secret_key=SECRET_KEY), sim)
    key = await create_key(tmp_path, pg_database)
    replicas = [Replica(tmp_path / f"r{n}", pg_database, sim) for n in range(REPLICAS)]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        async with running_haproxy([("127.0.0.1", r.port) for r in replicas], mode="hash") as front:
            (tmp_path / "cli").mkdir()
            codex = CodexHome(codex_bin, tmp_path / "cli", sim, websockets=transport == "ws",
                              base_url=f"{front.url}/backend-api/codex", api_key=key)
            figures = await session_through_upgrades(codex, transport, front.url,
                                                     itertools.cycle([r.data for r in replicas]),
                                                     headers={"Authorization": f"Bearer {key}"})
            retries = front.retries()
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))
    print("\n".join(["replica warnings:", *(line.rstrip() for r in replicas for line in r.log
                                             if re.search(r'"level":"(warning|error)"', line))]))
    check(figures, sim)
    assert len(figures.upgrades) >= REPLICAS  # at least one whole round
    assert retries == 0  # HAProxy never met a refused connection


async def test_replicas_replaced_one_at_a_time_refuse_nothing(pg_database, settings, sim, tmp_path, http):
    """Each replica in turn stopped with SIGTERM and a new one started on its port, under streaming load."""
    await import_accounts(dataclasses.replace(settings, database_url=pg_database, secret_key=SECRET_KEY), sim)
    replicas = [Replica(tmp_path / f"r{n}", pg_database, sim, env={"CODEXLB_DRAIN_PAUSE_S": str(DRAIN_PAUSE_S)})
                for n in range(REPLICAS)]
    stop, outcomes, failures = asyncio.Event(), {"ok": 0, "failed": 0}, []
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        async with running_haproxy([("127.0.0.1", r.port) for r in replicas], mode="hash") as front:
            load = asyncio.create_task(streaming_clients(front.url, stop, outcomes, failures, clients=CLIENTS))
            try:
                for replica in replicas:
                    before = outcomes["ok"]
                    while outcomes["ok"] < before + CLIENTS:  # load on every replica, this one too
                        await asyncio.sleep(0.01)
                    await replica.stop()
                    await replica.start()
                    await served_by(http, front, name(replicas, replica), {})
            finally:
                stop.set()
                await asyncio.wait_for(load, 120)
            served, retries = front.served(), front.retries()
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))
    print(f"\n{REPLICAS} replicas replaced under {CLIENTS} streaming clients: {outcomes['ok']} served, "
          f"{outcomes['failed']} failed, {retries} connections refused and retried by HAProxy")
    assert failures == []
    assert retries == 0
    assert {backend for backend, *_rest in served} >= {f"s{n}" for n in range(REPLICAS)}


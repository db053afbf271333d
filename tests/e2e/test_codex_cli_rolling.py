"""A rolling upgrade of the fleet: three `codexlb serve` replicas on one PostgreSQL database behind a real HAProxy
(hashing on the CLI's session header), each upgraded in place in turn (`codexlb upgrade`: a hand-over to a new
process on the same port), one every 5 s, round after round, while one long-lived Codex CLI (`codex app-server`)
holds a 30-turn session with a tool call in every turn, over HTTP and over WebSocket, and 50 streaming clients run
through the front door. No refused connection, no failed request or turn, no CLI retry or whole-history resend,
at most one whole-input upstream send per conversation per hand-over. Printed as a table."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import re
import signal

import pytest

from codexlb import server_record
from codexlb.sim.backend import SimConfig
from codexlb.sim.running import running_sim
from tests.e2e.test_codex_cli_fleet import REPLICAS, Replica, create_key
from tests.e2e.test_codex_cli_sim import CodexHome
from tests.e2e.test_codex_cli_upgrade import RECORDS, check, session_through_upgrades
from tests.fleet.conftest import SECRET_KEY, import_accounts
from tests.haproxy import running_haproxy

pytestmark = pytest.mark.one_pass


async def stop_replica(replica: Replica) -> None:
    """SIGTERM to whichever process serves the replica now; then until all of them closed its log pipe."""
    holder = server_record.holder(replica.data)
    if holder is not None and holder.pid:
        os.kill(holder.pid, signal.SIGTERM)
    replica.proc = None  # the process it started has handed over: the record's holder is the one to stop
    await replica.stop()


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
    finally:
        await asyncio.gather(*(stop_replica(r) for r in replicas))
    print("\n".join(["replica warnings:", *(line.rstrip() for r in replicas for line in r.log
                                             if re.search(r'"level":"(warning|error)"', line))]))
    check(figures, sim)
    assert len(figures.upgrades) >= REPLICAS  # at least one whole round

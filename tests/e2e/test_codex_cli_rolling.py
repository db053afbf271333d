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
import signal

import pytest

from codexlb import server_record
from codexlb.sim.backend import SimConfig
from codexlb.sim.running import running_sim
from tests.e2e.app_server import AppServer
from tests.e2e.test_codex_cli_fleet import REPLICAS, Replica, create_key
from tests.e2e.test_codex_cli_sim import TOOL_REPLY, CodexHome, _show
from tests.e2e.test_codex_cli_upgrade import (
    CLIENTS,
    DRAIN_BOUND_S,
    EVERY_S,
    RECORDS,
    TOOL_PROMPT,
    TURNS,
    exit_delay,
)
from tests.fleet.conftest import SECRET_KEY, import_accounts
from tests.haproxy import running_haproxy
from tests.test_upgrade import codexlb, streaming_clients

pytestmark = pytest.mark.one_pass


async def rolling(replicas: list[Replica], stop: asyncio.Event, done: list[float], drained: list[float]) -> None:
    """Each replica in turn handed over to a new process (`codexlb upgrade` on its data dir), one every EVERY_S,
    until `stop`; the time each took in `done`, how long its old process lived on in `drained`."""
    loop = asyncio.get_running_loop()
    exits = []
    for replica in itertools.cycle(replicas):
        try:
            await asyncio.wait_for(stop.wait(), EVERY_S)
            break
        except TimeoutError:
            pass
        old = server_record.holder(replica.data)
        started = loop.time()
        rc, _out, err = await codexlb("upgrade", "--data-dir", str(replica.data))
        assert rc == 0, err
        done.append(loop.time() - started)
        exits.append(asyncio.create_task(exit_delay(old.pid, drained)))
    await asyncio.wait_for(asyncio.gather(*exits), DRAIN_BOUND_S)


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
    auth = {"Authorization": f"Bearer {key}"}
    replicas = [Replica(tmp_path / f"r{n}", pg_database, sim) for n in range(REPLICAS)]
    stop, outcomes, failures, upgrades, drained = asyncio.Event(), {"ok": 0, "failed": 0}, [], [], []
    load = upgrader = None
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        async with running_haproxy([("127.0.0.1", r.port) for r in replicas], mode="hash") as front:
            (tmp_path / "cli").mkdir()
            codex = CodexHome(codex_bin, tmp_path / "cli", sim, websockets=transport == "ws",
                              base_url=f"{front.url}/backend-api/codex", api_key=key)
            async with AppServer(codex) as cli:
                load = asyncio.create_task(streaming_clients(front.url, stop, outcomes, failures, clients=CLIENTS,
                                                             headers=auth))
                upgrader = asyncio.create_task(rolling(replicas, stop, upgrades, drained))
                for turn in range(TURNS):
                    answer = await cli.turn(TOOL_PROMPT)
                    assert TOOL_REPLY.fullmatch(answer), f"turn {turn + 1}: {answer!r}\n{cli.log()}"
                stop.set()
                await asyncio.wait_for(asyncio.gather(load, upgrader), 240)  # every old process exited meanwhile
                cli_connects, cli_whole, cli_retries = cli.connects(), cli.whole_sends(), cli.retries()
    finally:
        stop.set()
        for task in (load, upgrader):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(stop_replica(r) for r in replicas))

    records = sim.backend.records_view()
    mine = [r for r in records if r["transport"] == "ws" or r["n_input"] > 1]  # as in test_codex_cli_upgrade
    shown = _show(mine)
    answered = [r for r in mine if r["outcome"] == "completed" and r["generate"]]
    whole = [r for r in mine if r["generate"] and r["previous_response_id"] is None]
    plain = [r for r in mine if r["transport"] != "ws"]
    print(f"\n| transport | turns | hand-overs | load served | load failed | CLI sockets | CLI whole sends | "
          f"CLI retries | whole-input upstream sends | plain HTTP |\n"
          f"|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {transport} | {TURNS} | {len(upgrades)} | {outcomes['ok']} | {outcomes['failed']} | {cli_connects} | "
          f"{cli_whole} | {len(cli_retries)} | {len(whole) - len(plain)} | {len(plain)} |\n"
          f"upgrade took {min(upgrades):.2f}-{max(upgrades):.2f} s, the old process exited "
          f"{min(drained):.2f}-{max(drained):.2f} s after")
    assert failures == []
    assert len(upgrades) >= REPLICAS  # at least one whole round
    assert cli_retries == []
    assert len(answered) >= 2 * TURNS, shown
    assert all(r["continuity"] != "diverged" for r in answered), shown
    assert len({r["account_id"] for r in answered}) == 1, shown
    assert len(whole) - len(plain) <= 1 + len(upgrades), shown
    assert max(drained) <= DRAIN_BOUND_S
    if transport == "ws":
        assert (cli_connects, cli_whole) == (1, 1), shown

"""A fleet upgraded without downtime: three real `codexlb serve` replicas on one PostgreSQL database behind a real
HAProxy (hashing on the Codex CLI's session header, health-checking `/health/ready`), rolled one replica at a
time, round after round, while the real Codex CLI runs a 30-turn session with a tool call in every turn (over
HTTP and over WebSocket) and streaming clients run through the front door. Two ways to roll a replica:

- in place, `codexlb upgrade` on its data dir (the port never stops accepting; the next replica only once the
  new process serves);
- replaced, as a container would be: SIGTERM, then a new process on the same port. Its readiness fails at once
  while the port goes on accepting for `drain_pause_s`, so HAProxy's health check takes it out before a
  connection to it could be refused.

What it holds the fleet to: no refused connection (HAProxy never had to retry one), no failed request or turn,
and at most one whole-input upstream send for the conversation per hand-over of the replica serving it.
Printed as a table."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.e2e.test_codex_cli_fleet import RESPONSES, replica_changes, served_by
from tests.e2e.test_codex_cli_sim import TOOL_PROMPT, TOOL_REPLY, CodexHome, _check_turn, _show
from tests.fleet.conftest import SECRET_KEY, import_accounts
from tests.fleet.replicas import Replica
from tests.haproxy import CHECK_INTERVAL_MS, running_haproxy
from tests.test_upgrade import codexlb, streaming_clients

pytestmark = pytest.mark.one_pass

TURNS = 30
REPLICAS = 3
CLIENTS = 50
EVERY_S = 5.0
# Above HAProxy's time to take a replica out: two failed checks (`fall 2`) `inter` apart, and the check under way.
DRAIN_PAUSE_S = 3 * CHECK_INTERVAL_MS / 1000 + 0.5


def name(replicas: list[Replica], replica: Replica) -> str:
    """The replica's name at the front door (`x-served-by`, `served()`)."""
    return f"s{replicas.index(replica)}"


async def rolling(replicas: list[Replica], stop: asyncio.Event, upgraded: list[str]) -> None:
    """`codexlb upgrade` on one replica every EVERY_S, in turn, until `stop`; the replicas upgraded, in order.
    The command returns once the new process serves, so the next one only starts then."""
    for n in range(10**6):
        try:
            await asyncio.wait_for(stop.wait(), EVERY_S)
            return
        except TimeoutError:
            pass
        replica = replicas[n % len(replicas)]
        rc, _out, err = await codexlb("upgrade", "--data-dir", str(replica.data))
        assert rc == 0, err
        upgraded.append(name(replicas, replica))


async def a_session(codex: CodexHome, turns: int) -> str:
    """`turns` turns with a tool call each, one `codex exec` a turn resuming the last session; its id."""
    sessions = set()
    for turn in range(turns):
        resume = ("resume", "--last") if turn else ()
        run = await codex.run("exec", "--skip-git-repo-check", *resume, TOOL_PROMPT)
        sessions.add(_check_turn(run, TOOL_REPLY))  # rc 0, no retry, no fallback, no error
    [session] = sessions  # every turn went on with the first one's session
    return session


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_a_session_through_rolling_upgrades(codex_bin, pg_database, settings, sim, tmp_path, transport):
    await import_accounts(dataclasses.replace(settings, database_url=pg_database, secret_key=SECRET_KEY), sim)
    replicas = [Replica(tmp_path / f"r{n}", pg_database, sim) for n in range(REPLICAS)]
    stop, outcomes, failures, upgraded = asyncio.Event(), {"ok": 0, "failed": 0}, [], []
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        async with running_haproxy([("127.0.0.1", r.port) for r in replicas], mode="hash") as front:
            load = asyncio.create_task(streaming_clients(front.url, stop, outcomes, failures, clients=CLIENTS))
            roller = asyncio.create_task(rolling(replicas, stop, upgraded))
            (tmp_path / "cli").mkdir()
            # No API key made: the load sends none.
            codex = CodexHome(codex_bin, tmp_path / "cli", sim, websockets=transport == "ws",
                              base_url=f"{front.url}/backend-api/codex", api_key="sk-unused")
            try:
                session = await a_session(codex, TURNS)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(load, roller), 240)
            served, retries = front.served(session), front.retries()
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))

    records = sim.backend.records_view()
    # The conversation's requests that went up over a WebSocket (the load has no session to bridge); under load a
    # few go the plain HTTP way instead (their account had no free stream slot), whole as the CLI sent them.
    mine = [r for r in records if r["transport"] == "ws"]
    shown = _show(mine)
    answered = [r for r in mine if r["outcome"] == "completed" and r["generate"]]
    whole = [r for r in mine if r["generate"] and r["previous_response_id"] is None]
    hops, changes = replica_changes(served, "POST" if transport == "http" else "GET")
    # Hand-overs of the replicas that served the conversation: only those can cost it a whole-input send.
    its_handovers = sum(upgraded_name in set(hops) for upgraded_name in upgraded)
    print(f"\n| transport | turns | hand-overs (its replica) | load served | load failed | refused | whole-input sends "
          f"| replica changes |\n|---|---|---|---|---|---|---|---|\n"
          f"| {transport} | {TURNS} | {len(upgraded)} ({its_handovers}) | {outcomes['ok']} | {outcomes['failed']} "
          f"| {retries} | {len(whole)} | {changes} |")
    assert failures == []
    assert retries == 0, front.log()[-3000:]
    assert len(upgraded) >= REPLICAS  # every replica was upgraded at least once
    assert any(path.startswith(RESPONSES) for _b, _s, _m, path in served)
    assert len(answered) >= TURNS, shown  # every turn was checked above; most went over the socket
    assert all(r["continuity"] != "diverged" for r in answered), shown
    assert changes == 0, hops  # hashing on the session: upgraded in place, its replica never changed
    if transport == "http":
        assert len(whole) <= 1 + its_handovers, shown
    else:
        assert len(whole) <= its_handovers, shown


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


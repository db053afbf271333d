"""Two replicas on one PostgreSQL database take turns at one bridged conversation, as behind a front door
that does not hash on the session header: every turn is served on the conversation's one account, a
replica that takes over sends the input whole once, and the one that lost the conversation closes its
upstream socket."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import pytest

from codexlb.bridge import sessions
from codexlb.bridge.http import SESSIONS
from tests.bridge.test_http_bridge import Conversation, completed, records
from tests.fleet.conftest import start_fleet
from tests.fleet.test_change_feed import within
from tests.proxy.conftest import start_proxy

KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
async def replicas(pg_database, aiohttp_server, settings, sim, tmp_path):
    """Replica "a" (which imports the accounts) and "b" (which reads them from the database). Round robin,
    with b one step ahead: left to itself, b would put the conversation on another account than a."""
    common = dict(database_url=pg_database, secret_key=KEY, strategy="round_robin", failover_budget_s=10)
    a = await start_proxy(aiohttp_server, settings, sim, data_dir=tmp_path / "a", **common)
    b = await start_proxy(aiohttp_server, settings, sim, accounts=0, data_dir=tmp_path / "b", **common)
    b.pool.choose(())
    return a, b


async def owned(proxy) -> None:
    """Until the replica's session holds its claim (it is made beside the socket, never waited for)."""
    async with asyncio.timeout(5):
        while not all(s.epoch for s in proxy.app[SESSIONS]._by_key.values()):
            await asyncio.sleep(0.01)


async def test_turns_alternating_between_replicas(replicas, http):
    a, b = replicas
    talk = Conversation(http, a, {"session_id": "conv-fleet-1"})
    for n in range(6):
        here, there = (a, b) if n % 2 == 0 else (b, a)
        talk.proxy = here
        resp, events = await talk.say(f"turn {n}")
        assert completed(resp, events), (n, resp.status, events)
        await owned(here)
        # The change feed tells the other replica it lost the conversation: it closes its socket.
        await one_socket_open(a, b)
        assert len(there.app[SESSIONS]) == 0 and len(here.app[SESSIONS]) == 1
    seen = records(a)
    assert len(seen) == 6 and all(r["outcome"] == "completed" for r in seen)
    assert len({r["account_id"] for r in seen}) == 1
    # Each turn changed replica: the one that took over sent the input whole, once.
    assert [r["previous_response_id"] for r in seen] == [None] * 6
    assert [r["n_input"] for r in seen] == [1 + 2 * n for n in range(6)]
    assert all(r["continuity"] != "diverged" for r in seen)


async def test_a_replica_finds_out_it_lost_the_conversation_when_next_used(replicas, http):
    """No sweep between turns: a replica whose session is stale still serves the turn on it (the input it
    carries is whole, so upstream misses nothing), sees it lost the conversation, and closes that socket."""
    a, b = replicas
    talk = Conversation(http, a, {"session_id": "conv-fleet-2"})
    for n in range(6):
        talk.proxy = a if n % 2 == 0 else b
        resp, events = await talk.say(f"turn {n}")
        assert completed(resp, events), (n, resp.status, events)
        await owned(talk.proxy)
    await one_socket_open(a, b)  # the stale session goes once its check is back
    seen = records(a)
    assert len(seen) == 6 and all(r["outcome"] == "completed" for r in seen)
    assert len({r["account_id"] for r in seen}) == 1
    whole = sum(r["previous_response_id"] is None for r in seen)
    assert whole <= 6 and all(r["continuity"] != "diverged" for r in seen)
    print(f"6 turns alternating, no sweep: {whole} whole-input sends, {6 - whole} anchored")


async def one_socket_open(*proxies) -> None:
    """Until the sim has one socket open, and the replicas one session between them (a socket a replica
    closed is gone from the sim a moment later)."""
    async with asyncio.timeout(5):
        while proxies[0].sim.backend.open_sockets != 1 or sum(len(p.app[SESSIONS]) for p in proxies) != 1:
            await asyncio.sleep(0.01)


async def test_the_replica_that_lost_a_conversation_closes_its_socket_within_a_second(
        aiohttp_server, settings, sim, database_url, http, monkeypatch):
    """The claim is announced on the change feed: the replica that lost the conversation closes its socket at
    once, with no sweep (pushed out of the test's reach) and no next use of its session. Either engine, two
    replicas on one database (one SQLite file, or PostgreSQL)."""
    monkeypatch.setattr(sessions, "OWNER_SWEEP_S", 3600.0)
    a, b = await start_fleet(aiohttp_server, settings, sim, database_url, replicas=2, failover_budget_s=10)
    talk = Conversation(http, a, {"session_id": "conv-fleet-feed"})
    resp, events = await talk.say("turn 0")
    assert completed(resp, events), (resp.status, events)
    await owned(a)
    talk.proxy = b
    started = time.monotonic()
    resp, events = await talk.say("turn 1")
    assert completed(resp, events), (resp.status, events)
    answered = time.monotonic() - started
    await within(lambda: len(a.app[SESSIONS]) == 0 and sim.backend.open_sockets == 1, bound_s=1.0)
    assert len(b.app[SESSIONS]) == 1
    print(f"\nconversation taken over on B: A closed its upstream socket {(time.monotonic() - started) * 1000:.0f} ms "
          f"after B's turn began (B answered in {answered * 1000:.0f} ms)")

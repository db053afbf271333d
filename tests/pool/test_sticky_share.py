"""The sticky map shared through the database: a key new to a replica costs one bounded read, and a
database that is busy or away never holds a request beyond that bound."""

from __future__ import annotations

import asyncio
import time

from codexlb.pool.pool import Pool
from codexlb.pool.roster import Roster
from codexlb.pool.sticky_share import AWAY_S, READ_WAIT_S
from codexlb.store import conversations
from codexlb.sim.accounts import make_accounts
from tests.accounts.conftest import login_of


async def _pools(store):
    """Two pools on one database (two replicas), with the same three accounts, round robin: left alone,
    the second would put a new conversation on its next account, not the first's."""
    roster = await Roster.load(store)
    for sim_account in make_accounts(3, token_ttl_s=86400, primary_limit_tokens=10**6, secondary_limit_tokens=10**7):
        await roster.add_login(login_of(sim_account))
    one = Pool(roster, strategy="round_robin", shared=store.db)
    two = Pool(await Roster.load(store), strategy="round_robin", shared=store.db)
    two.choose(())  # its round robin is one step ahead
    return one, two


async def test_a_conversation_keeps_its_account_on_another_replica(store):
    one, two = await _pools(store)
    first, slot = await one.admit(["session:c1", "cache:c1"])
    slot.release()
    await store.db.barrier()  # the queued write has landed
    second, slot = await two.admit(["session:c1", "cache:c1"])
    slot.release()
    assert second.id == first.id
    assert two.share.reads == 1
    # Known now: later requests are answered from memory.
    for _ in range(3):
        again, slot = await two.admit(["session:c1", "cache:c1"])
        slot.release()
        assert again.id == first.id
    assert two.share.reads == 1


async def test_writes_only_new_moved_and_once_a_minute(store):
    one, _ = await _pools(store)
    now = time.time()
    account = one.choose(["session:w"], now=now)
    await asyncio.sleep(0)  # the loop turn that flushes the queued row
    await store.db.barrier()
    assert [(k, a) for k, a, _ in await conversations.sticky_rows(store.db, ["session:w"])] == [("session:w", account.id)]
    one.choose(["session:w"], now=now + 30)  # in use, but told the map 30 s ago: no write
    await asyncio.sleep(0)  # the loop turn that would flush a queued row
    await store.db.barrier()
    assert (await conversations.sticky_rows(store.db, ["session:w"]))[0][2] == now
    one.choose(["session:w"], now=now + 61)
    await asyncio.sleep(0)
    await store.db.barrier()
    assert (await conversations.sticky_rows(store.db, ["session:w"]))[0][2] == now + 61


async def test_a_busy_database_costs_a_new_conversation_at_most_the_bound(store):
    _, two = await _pools(store)
    if store.db.dialect == "postgres":
        busy = asyncio.ensure_future(store.db.execute("SELECT pg_sleep(2)"))  # reads wait for earlier writes
    else:
        busy = asyncio.ensure_future(store.db.call(lambda conn: time.sleep(2)))
    try:
        started = time.monotonic()
        account, slot = await two.admit(["session:slow"])
        slot.release()
        took = time.monotonic() - started
        assert account is not None and took < READ_WAIT_S + 0.3, took
        # Left alone for a while: the next new conversation does not wait at all.
        started = time.monotonic()
        _, slot = await two.admit(["session:slow-2"])
        slot.release()
        assert time.monotonic() - started < 0.05 and two.share.reads == 1
        print(f"new conversation with the database busy: {took * 1000:.0f} ms (bound {READ_WAIT_S * 1000:.0f} ms, "
              f"then none for {AWAY_S:g} s)")
    finally:
        await busy


async def test_prune_drops_rows_past_the_ttl(store):
    one, _ = await _pools(store)
    now = time.time()
    conversations.save_sticky_soon(store.db, [("session:old", "a", now - 7200), ("session:new", "a", now)])
    await store.db.execute("INSERT INTO owners (conversation, replica, epoch, seen) VALUES (?, ?, ?, ?)",
                           ("old", "r", 1, now - 7200))
    assert await one.share.prune(now) == 2
    assert [row[0] for row in await conversations.sticky_rows(store.db, ["session:old", "session:new"])] == [
        "session:new"]

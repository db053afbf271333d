"""The lease primitive on the test's engine: one holder at a time, renewals, expiry, release."""

from __future__ import annotations

import asyncio

from codexlb.store import Store
from codexlb.store.leases import Leases


async def test_one_holder_until_it_expires_or_releases(store):
    mine, theirs = store.leases, Leases(store.db, "replica-b")
    assert await mine.claim("jobs", 60)
    assert not await theirs.claim("jobs", 60)
    assert await mine.claim("jobs", 60)  # a renewal
    assert await mine.holder("jobs") == mine.owner
    await theirs.release("jobs")  # not the holder: nothing happens
    assert await mine.holder("jobs") == mine.owner
    await mine.release("jobs")
    assert await mine.holder("jobs") is None
    assert await theirs.claim("jobs", 0.2)
    assert not await mine.claim("jobs", 60)
    await asyncio.sleep(0.3)  # the holder's time runs out: no one need release it
    assert await mine.holder("jobs") is None
    assert await mine.claim("jobs", 60)
    assert not await theirs.claim("jobs", 60)


async def test_of_replicas_racing_for_a_lease_exactly_one_gets_it(store, tmp_path, database_url):
    """Separate stores (each its own connection or pool), all claiming at once, many times over."""
    others = [await Store.open(tmp_path / "store-data", database_url=database_url) for _ in range(3)]
    try:
        replicas = [store, *others]
        for round_ in range(20):
            won = await asyncio.gather(*(r.leases.claim(f"race-{round_}", 60) for r in replicas))
            assert sum(won) == 1, won
            [winner] = [r for r, w in zip(replicas, won) if w]
            assert await store.leases.holder(f"race-{round_}") == winner.replica
    finally:
        for other in others:
            await other.close()

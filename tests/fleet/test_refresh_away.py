"""A token refresh while PostgreSQL is away: the replica refreshes alone, but never spends a refresh token
twice, never takes an account out for a refusal it cannot judge, and leaves a refresh another replica was
seen making to that replica."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import asyncpg
import pytest

from codexlb.account import Status
from codexlb.auth.refresh import CLIENT_ID, Refresher, RefreshError
from codexlb.auth.refresh_claim import ClaimError, RefreshClaims
from codexlb.pool.roster import Roster
from codexlb.store import Store
from codexlb.store.leases import Leases
from tests.accounts.conftest import login_of


@pytest.fixture
def database_url(pg_database):
    """These tests stop PostgreSQL: on either suite pass, the `store` is on it."""
    return pg_database


async def stop(pg_server, store: Store) -> None:
    """Stop PostgreSQL, with what the store wrote so far kept (the test server commits asynchronously)."""
    await store.db.barrier()
    await pg_server.astop()


async def test_a_refresh_token_refused_while_away_is_never_sent_again(store, pg_server, sim_one, http):
    """Another replica spent the token while the database was away: the refusal leaves the account in
    rotation and the token unsent again; once the database is back and shows no newer tokens, the account
    needs a new login, still without a second send."""
    roster = await Roster.load(store)
    sim_account = sim_one.backend.accounts[0]
    account, _ = await roster.add_login(login_of(sim_account))
    grant = {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": account.tokens.refresh_token}
    async with http.post(f"{sim_one.url}/oauth/token", json=grant) as resp:
        assert resp.status == 200  # spent by "another replica"
    refresher = Refresher(roster, http, sim_one.url)
    seen = account.tokens.access_token
    await stop(pg_server, store)
    try:
        for _ in range(2):
            with pytest.raises(RefreshError) as refused:
                await refresher.refresh(account, seen, "upstream 401")
            assert not refused.value.permanent
            assert account.status is Status.ACTIVE
        assert sim_account.reused == 1
    finally:
        await pg_server.astart()
    with pytest.raises(RefreshError) as refused:
        await refresher.refresh(account, seen, "upstream 401")
    assert refused.value.permanent
    assert account.status is Status.REAUTH_REQUIRED
    assert sim_account.reused == 1 and sim_account.refreshes == 1
    assert refresher.results == {"failed": 2, "refused": 1}


async def test_a_refresh_another_replica_was_seen_making_is_left_to_it_when_the_database_goes_away(
        store, pg_server, sim_one):
    roster = await Roster.load(store)
    account, _ = await roster.add_login(login_of(sim_one.backend.accounts[0]))
    assert await Leases(store.db, "other-replica").claim(f"refresh:{account.id}", 60)
    claims = RefreshClaims(roster, hold_s=60)

    async def claim() -> None:
        async with claims.claim(account):
            pass

    waiting = asyncio.create_task(claim())
    async with asyncio.timeout(10):
        while account.id not in claims._held_elsewhere:  # it saw the other replica's lease
            await asyncio.sleep(0.01)
    await stop(pg_server, store)
    try:
        started = time.monotonic()
        with pytest.raises(ClaimError, match="another replica was refreshing"):
            await asyncio.wait_for(waiting, 10)
        print(f"\ngave up {time.monotonic() - started:.2f} s after the database went away")
    finally:
        waiting.cancel()
        await pg_server.astart()
    assert sim_one.backend.accounts[0].refreshes == 0


async def test_new_tokens_given_up_on_by_a_slow_database_are_still_stored(store, pg_database, sim):
    """A database that answers, but too slowly (here: an earlier queued write waits on a row lock), makes the
    refresh give up on its write after the engine's bound: the refresh still succeeds, and its tokens are
    written once the database gets to them, instead of being dropped."""
    roster = await Roster.load(store)
    account, _ = await roster.add_login(login_of(sim.backend.accounts[0]))
    other, _ = await roster.add_login(login_of(sim.backend.accounts[1]))
    locker = await asyncpg.connect(pg_database)
    try:
        held = locker.transaction()
        await held.start()
        await locker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", other.id)
        store.save_account_soon(other)  # the writer waits on the lock from here
        new = dataclasses.replace(account.tokens, access_token="at-new", refresh_token="rt-new",
                                  last_refresh=time.time())
        started = time.monotonic()
        await roster.set_tokens(account, new)
        print(f"\nset_tokens gave up after {time.monotonic() - started:.1f} s")
        assert account.tokens == new
        await held.rollback()
    finally:
        await locker.close()
    await store.db.barrier()
    stored = await store.load_account(account.id)
    assert stored is not None and stored.tokens.refresh_token == "rt-new"

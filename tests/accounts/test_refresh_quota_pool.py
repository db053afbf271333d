"""Token refresh, quota tracking and account choice against the real sim over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from codexlb.account import Status, Window
from codexlb.auth.refresh import Refresher, RefreshError
from codexlb.errors import APIError
from codexlb.pool.pool import Pool
from codexlb.pool.quota import verdict_for_error, windows_from_headers
from codexlb.upstream.session import account_headers, make_session
from codexlb.upstream.usage_poller import UsagePoller
from tests.accounts.conftest import login_of
from tests.simclient import body, user


@pytest.fixture
async def upstream():
    session = make_session()
    yield session
    await session.close()


async def filled(roster, sim, count=3):
    for sim_account in sim.backend.accounts[:count]:
        await roster.add_login(login_of(sim_account))
    return roster.all()


async def call_sim(upstream, sim, account) -> aiohttp.ClientResponse:
    async with upstream.post(f"{sim.codex_base_url}/responses", json=body(user("hi")),
                             headers=account_headers(account)) as resp:
        await resp.read()
        return resp


async def test_refresh_when_expiring_rotates_and_persists(roster, store, sim, upstream):
    [account, *_] = await filled(roster, sim, 1)
    refresher = Refresher(roster, upstream, sim.url, margin_s=600)
    old = account.tokens
    # The token expires in a day: not due now, due a day minus the margin from now.
    assert await refresher.refresh_due(now=time.time()) == 0
    assert await refresher.refresh_due(now=old.access_expires_at - 60) == 1
    assert account.tokens.refresh_token != old.refresh_token
    assert account.tokens.refresh_token == sim.backend.accounts[0].refresh_token
    assert (await call_sim(upstream, sim, account)).status == 200
    stored = {a.id: a for a in await store.load_accounts()}
    assert stored[account.id].tokens == account.tokens


async def test_refresh_after_401(roster, sim, upstream):
    [account, *_] = await filled(roster, sim, 1)
    refresher = Refresher(roster, upstream, sim.url)
    async with upstream.post(f"{sim.url}/__sim/accounts/1/expire") as resp:
        assert resp.status == 200
    first = await call_sim(upstream, sim, account)
    assert first.status == 401
    await refresher.refresh(account, account.tokens.access_token, "upstream 401")
    assert (await call_sim(upstream, sim, account)).status == 200
    assert account.status is Status.ACTIVE


async def test_concurrent_refreshes_are_one_flight(roster, sim, upstream):
    [account, *_] = await filled(roster, sim, 1)
    refresher = Refresher(roster, upstream, sim.url)
    seen = account.tokens.access_token
    results = await asyncio.gather(*(refresher.refresh(account, seen, "401") for _ in range(8)))
    # One rotation: a second one would have reused the old refresh token and been refused.
    assert len({r.refresh_token for r in results}) == 1
    assert account.status is Status.ACTIVE
    assert account.tokens.refresh_token == sim.backend.accounts[0].refresh_token


async def test_a_401_for_a_token_already_replaced_is_not_refreshed_again(roster, sim, upstream):
    [account, *_] = await filled(roster, sim, 1)
    refresher = Refresher(roster, upstream, sim.url)
    old = account.tokens.access_token
    first = await refresher.refresh(account, old, "upstream 401")
    # A request sent with the old token got its 401 after that refresh had finished.
    late = await refresher.refresh(account, old, "upstream 401")
    assert late is first is account.tokens
    assert sim.backend.accounts[0].refreshes == 1


async def test_a_cancelled_waiter_does_not_cancel_the_refresh(roster, sim, upstream):
    [account, *_] = await filled(roster, sim, 1)
    refresher = Refresher(roster, upstream, sim.url)
    impatient = asyncio.create_task(refresher.refresh(account, account.tokens.access_token, "401"))
    patient = asyncio.create_task(refresher.refresh(account, account.tokens.access_token, "401"))
    await asyncio.sleep(0)
    impatient.cancel()
    tokens = await asyncio.wait_for(patient, 10)
    assert tokens.refresh_token == sim.backend.accounts[0].refresh_token
    assert impatient.cancelled()


async def test_reused_refresh_token_marks_reauth_required(roster, sim, upstream, capsys):
    [account, *_] = await filled(roster, sim, 1)
    # Someone else (the Codex CLI on another machine) rotated the token behind our back.
    sim.backend.refresh(sim.backend.accounts[0].refresh_token)
    refresher = Refresher(roster, upstream, sim.url)
    with pytest.raises(RefreshError) as caught:
        await refresher.refresh(account, account.tokens.access_token, "expiring")
    assert caught.value.permanent
    assert account.status is Status.REAUTH_REQUIRED
    assert "refresh_token_reused" in account.status_reason
    pool = Pool(roster)
    with pytest.raises(APIError) as outcome:
        pool.choose()
    assert outcome.value.status == 400 and outcome.value.code == "no_accounts"
    assert "waiting for a new login" in outcome.value.message


async def test_a_refresh_that_loses_the_race_adopts_the_winners_tokens(roster, sim, upstream):
    """Two refreshers on one roster (standing in for two replicas) are asked at once: one spends the refresh
    token, the other adopts the tokens it got without spending any (the sim would refuse a reuse, and hold that
    refusal until the winner's token is used: `hold_stale`); the account stays active."""
    [account, *_] = await filled(roster, sim, 1)
    async with upstream.post(f"{sim.url}/__sim/accounts/1/expire", json={"hold_stale": True}) as resp:
        assert resp.status == 200
    seen = account.tokens.access_token
    refreshers = [Refresher(roster, upstream, sim.url), Refresher(roster, upstream, sim.url)]
    racing = [asyncio.create_task(r.refresh(account, seen, "upstream 401")) for r in refreshers]
    done, pending = await asyncio.wait(racing, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    winner = done.pop().result()
    assert (await call_sim(upstream, sim, account)).status == 200  # the winner's token, used: the refusal goes
    loser = await asyncio.wait_for(pending.pop(), 10)
    assert loser == winner == account.tokens
    assert account.status is Status.ACTIVE
    assert sim.backend.accounts[0].refreshes == 1 and sim.backend.accounts[0].held == 0
    assert sum((r.results for r in refreshers), Counter()) == Counter(ok=1, adopted=1)


async def test_transient_refresh_failure_keeps_the_account(roster, sim, upstream):
    [account, *_] = await filled(roster, sim, 1)
    refresher = Refresher(roster, upstream, "http://127.0.0.1:9")
    with pytest.raises(RefreshError) as caught:
        await refresher.refresh(account, account.tokens.access_token, "expiring")
    assert not caught.value.permanent and account.status is Status.ACTIVE


async def test_quota_headers_move_an_account_out_and_back(roster, sim, upstream):
    [account, other, _] = await filled(roster, sim)
    sim.backend.accounts[0].primary.used_tokens = sim.backend.accounts[0].primary.limit_tokens - 1
    resp = await call_sim(upstream, sim, account)
    now = time.time()
    windows = windows_from_headers(resp.headers, now)
    assert windows["primary"].window_minutes == 300 and windows["secondary"].window_minutes == 10080
    roster.note_windows(account, windows, now)
    assert account.status is Status.QUOTA_EXCEEDED
    reset_at = windows["primary"].reset_at
    assert account.status_until == reset_at
    pool = Pool(roster)
    assert all(pool.choose(now=now).id != account.id for _ in range(20))
    assert pool.choose(now=reset_at + 1) is not None
    assert account.status is Status.ACTIVE


async def test_429_rate_limit_and_back_after_reset(roster, sim, upstream):
    [account, *_] = await filled(roster, sim, 1)
    async with upstream.post(f"{sim.url}/__sim/faults",
                             json={"action": "status", "status": 429, "retry_after": 30}) as resp:
        assert resp.status == 201
    async with upstream.post(f"{sim.codex_base_url}/responses", json=body(user("hi")),
                             headers=account_headers(account)) as resp:
        error = (await resp.json())["error"]
        now = time.time()
        verdict = verdict_for_error(resp.status, error, resp.headers, now)
    roster.note_verdict(account, verdict)
    assert account.status is Status.RATE_LIMITED and account.status_until == pytest.approx(now + 30)
    pool = Pool(roster)
    with pytest.raises(APIError) as outcome:
        pool.choose(now=now)
    assert outcome.value.status == 429 and outcome.value.type == "rate_limit_error"
    assert outcome.value.headers["Retry-After"] == "30"
    assert pool.choose(now=now + 31).id == account.id


async def test_usage_poller_reads_windows(roster, sim, upstream):
    [account, other, _] = await filled(roster, sim)
    async with upstream.post(f"{sim.url}/__sim/accounts/1/usage", json={"primary_used_percent": 100}) as resp:
        assert resp.status == 200
    async with upstream.post(f"{sim.url}/__sim/accounts/2/usage", json={"secondary_used_percent": 30}) as resp:
        assert resp.status == 200
    poller = UsagePoller(roster, Refresher(roster, upstream, sim.url), upstream, sim.upstream_base_url)
    await poller.poll_all()
    assert account.status is Status.QUOTA_EXCEEDED and account.primary.used_percent == 100
    assert other.status is Status.ACTIVE and other.secondary.used_percent == 30


async def test_usage_poller_refreshes_on_401(roster, sim, upstream):
    [account, *_] = await filled(roster, sim, 1)
    async with upstream.post(f"{sim.url}/__sim/accounts/1/expire") as resp:
        assert resp.status == 200
    poller = UsagePoller(roster, Refresher(roster, upstream, sim.url), upstream, sim.upstream_base_url)
    assert await poller.poll(account)
    assert account.tokens.access_token == sim.backend.accounts[0].access_token


async def test_every_account_out_of_quota_is_usage_limit_reached(roster, sim):
    accounts = await filled(roster, sim)
    now = time.time()
    for i, account in enumerate(accounts):
        roster.note_windows(account, {"primary": Window(100.0, 300, now + 1000 + i * 100)}, now)
    with pytest.raises(APIError) as outcome:
        Pool(roster).choose(now=now)
    error = outcome.value
    assert (error.status, error.type, error.code) == (429, "usage_limit_reached", "usage_limit_reached")
    assert error.extra == {"resets_at": int(now + 1000), "resets_in_seconds": 1000}
    assert "Retry-After" not in error.headers


async def test_no_accounts_outcomes(roster, sim):
    with pytest.raises(APIError) as outcome:
        Pool(roster).choose()
    assert (outcome.value.status, outcome.value.code) == (400, "no_accounts")
    assert "No accounts are configured" in outcome.value.message
    accounts = await filled(roster, sim, 2)
    for account in accounts:
        await roster.pause(account.alias)
    with pytest.raises(APIError) as outcome:
        Pool(roster).choose()
    assert outcome.value.message == "No usable account: every account is paused (`codexlb accounts resume`)."
    assert outcome.value.body()["error"]["type"] == "invalid_request_error"


async def test_stickiness_by_previous_response_and_session(roster, sim):
    accounts = await filled(roster, sim)
    pool = Pool(roster, strategy="round_robin")
    first = pool.choose(["session:s1"])
    assert all(pool.choose(["session:s1"]).id == first.id for _ in range(10))
    other = next(a for a in accounts if a.id != first.id)
    pool.remember_response("resp_abc", other)
    assert pool.choose(["resp:resp_abc", "session:s2"]).id == other.id
    # The session key follows the anchored account from then on.
    assert pool.choose(["session:s2"]).id == other.id
    await roster.pause(other.alias)
    moved = pool.choose(["resp:resp_abc"])
    assert moved.id != other.id


async def test_removed_account_leaves_the_sticky_table(roster, sim):
    await filled(roster, sim, 2)
    pool = Pool(roster)
    chosen = pool.choose(["session:x"])
    await roster.remove(chosen.alias)
    assert pool.choose(["session:x"]).id != chosen.id


async def test_admitted_slot_counts_inflight_and_releases_on_cancel(roster, sim):
    [account, *_] = await filled(roster, sim, 1)
    pool = Pool(roster)
    entered = asyncio.Event()

    async def hold():
        admitted, slot = await pool.admit()
        async with slot:
            assert admitted is account
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    await entered.wait()
    assert account.inflight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert account.inflight == 0

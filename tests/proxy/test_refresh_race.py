"""Tokens that expire under a burst of requests: each account is refreshed once, whichever transport the
requests came by and however late their 401s arrive."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from codexlb.account import Status
from tests.proxy.conftest import Proxy, start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import body, user, ws_turn


@pytest.fixture
async def proxy(aiohttp_server, settings, sim):
    # Round robin: the burst lands on every account.
    return await start_proxy(aiohttp_server, settings, sim, strategy="round_robin", failover_budget_s=10)


async def plain(http: aiohttp.ClientSession, proxy: Proxy, n: int) -> bool:
    resp, events = await post(http, proxy, body(user(f"plain {n}")))
    return resp.status == 200 and events[-1]["type"] == "response.completed"


async def bridged(http: aiohttp.ClientSession, proxy: Proxy, n: int) -> bool:
    resp, events = await post(http, proxy, body(user(f"bridged {n}")), {"session_id": f"conv-refresh-{n}"})
    return resp.status == 200 and events[-1]["type"] == "response.completed"


async def websocket(http: aiohttp.ClientSession, proxy: Proxy, n: int) -> bool:
    async with http.ws_connect(f"{proxy.codex_base_url}/responses",
                               headers={"session_id": f"conv-ws-{n}",
                                        "openai-beta": "responses_websockets=2026-02-06"}) as ws:
        events = await ws_turn(ws, body(user(f"ws {n}")))
    return events[-1]["type"] == "response.completed"


async def test_a_401_after_the_refresh_is_retried_with_the_new_token_not_refreshed_again(proxy, http):
    """16 requests right after 3 accounts' tokens expired, some of them sent with an old token that gets its 401
    only after the refresh finished (the sim holds those 401s until the new token has been used): 3 refreshes,
    every request served."""
    for number in (1, 2, 3):
        async with http.post(f"{proxy.sim.url}/__sim/accounts/{number}/expire", json={"hold_stale": True}) as resp:
            assert resp.status == 200
    calls = ([plain(http, proxy, n) for n in range(6)] + [bridged(http, proxy, n) for n in range(6)]
             + [websocket(http, proxy, n) for n in range(4)])
    served = await asyncio.gather(*calls)
    assert served == [True] * 16
    assert [a.refreshes for a in proxy.sim.backend.accounts] == [1, 1, 1]
    assert all(a.status is Status.ACTIVE for a in proxy.roster.all())
    # The burst did meet the race: on every account, a request sent with the old token got its 401 late.
    assert all(a.held >= 1 for a in proxy.sim.backend.accounts)

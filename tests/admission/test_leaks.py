"""No slot outlives its request: clients hang up at every stage, many times over, and tasks are cancelled at
random points; afterwards every gate is empty and every account has no stream.

Capacities are small (8 in flight, 2 streams on each of 3 accounts) so requests really queue at the global
gate and at the account gates. The test server cancels the handler of a client that hangs up, as `serve`
does, so a hang-up reaches the code under test as a cancellation.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest

from codexlb.services import KEYS
from tests.admission.test_http_admission import (
    assert_all_gates_idle, assert_full_stream, codex_url, gates_of, hold, post, until, until_idle,
)
from tests.proxy.conftest import Proxy, start_proxy
from tests.simclient import add_fault, body, user

INFLIGHT, PER_ACCOUNT, ACCOUNTS = 8, 2, 3
STREAMS = PER_ACCOUNT * ACCOUNTS  # 6: two of the 8 in flight wait at an account gate


@pytest.fixture
async def client():
    """No client-side connection limit: every request reaches the proxy, so the lines form there."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def small_proxy(aiohttp_server, settings, sim, **overrides: Any) -> Proxy:
    return await start_proxy(aiohttp_server, settings, sim, **{
        "max_inflight": INFLIGHT, "account_max_streams": PER_ACCOUNT, "queue_wait_s": 10, "failover_budget_s": 10,
        "keepalive_s": 5, **overrides})


def account_waiting(proxy: Proxy) -> int:
    """Requests waiting for an account's stream slot: in the any-account line (its holder included) or,
    anchored, at their account's gate."""
    gates = gates_of(proxy)
    return (gates.any_account.in_use + gates.any_account.waiting
            + sum(g.waiting for g in gates.all() if g.name.startswith("account:")))


async def cancel_all(tasks: list[asyncio.Task], rng: random.Random) -> None:
    """Hang up every client, in a random order."""
    rng.shuffle(tasks)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results


async def test_hang_up_while_queued_at_the_gates(aiohttp_server, settings, sim, client):
    proxy = await small_proxy(aiohttp_server, settings, sim)
    gates, rng = gates_of(proxy), random.Random(1)
    await add_fault(client, sim, action="stall", after_events=1, times=None)
    held = await asyncio.gather(*(hold(client, codex_url(proxy), f"held {i}") for i in range(STREAMS)))
    assert gates.inflight.in_use == STREAMS and account_waiting(proxy) == 0
    rounds, line = 60, 16
    for _ in range(rounds):
        tasks = [asyncio.create_task(post(client, codex_url(proxy), body(user("queued"))))
                 for _ in range(INFLIGHT - STREAMS + line)]
        await until(lambda: gates.inflight.in_use == INFLIGHT and gates.inflight.waiting == line
                    and account_waiting(proxy) == INFLIGHT - STREAMS, "both lines full", show=gates.snapshot)
        await cancel_all(tasks, rng)
        await until(lambda: gates.inflight.in_use == STREAMS and gates.inflight.waiting == 0
                    and account_waiting(proxy) == 0, "the lines empty again", show=gates.snapshot)
        assert [a.inflight for a in proxy.roster.all()] == [PER_ACCOUNT] * ACCOUNTS
    assert len(sim.backend.records) == STREAMS  # nobody in line ever reached upstream
    for stream in held:
        stream.hang_up()
    snapshot = await assert_all_gates_idle(client, proxy)
    assert snapshot["inflight"]["rejected"] == 0
    assert snapshot["inflight"]["admitted"] >= STREAMS + rounds * (INFLIGHT - STREAMS)


async def test_hang_up_while_awaiting_the_first_byte(aiohttp_server, settings, sim, client):
    proxy = await small_proxy(aiohttp_server, settings, sim)
    gates, rng = gates_of(proxy), random.Random(2)
    # Upstream takes a minute to answer: every request that got a stream slot sits waiting for its first byte.
    await add_fault(client, sim, action="delay", first_byte_ms=60_000, times=None)
    rounds, line = 50, 4
    for _ in range(rounds):
        base = len(sim.backend.records)
        tasks = [asyncio.create_task(post(client, codex_url(proxy), body(user("slow"))))
                 for _ in range(INFLIGHT + line)]
        await until(lambda: len(sim.backend.records) - base >= STREAMS and gates.inflight.waiting == line
                    and account_waiting(proxy) == INFLIGHT - STREAMS, "six upstream, the rest in line",
                    show=gates.snapshot)
        await cancel_all(tasks, rng)
        await until_idle(proxy)
    snapshot = await assert_all_gates_idle(client, proxy)
    assert snapshot["inflight"]["rejected"] == 0
    assert snapshot["inflight"]["admitted"] >= rounds * INFLIGHT


async def test_hang_up_mid_stream(aiohttp_server, settings, sim, client):
    proxy = await small_proxy(aiohttp_server, settings, sim)
    # Every stream sends its first event at once, then either stalls or trickles the rest out slowly.
    await add_fault(client, sim, action="delay", between_events_ms=40, times=None)
    await add_fault(client, sim, action="stall", after_events=2, share=0.5, times=None)
    rounds, per_round = 25, 24
    peak = {"inflight": 0, "accounts": 0}

    async def once(i: int) -> None:
        stream = await hold(client, codex_url(proxy), f"mid {i}")
        peak["inflight"] = max(peak["inflight"], gates_of(proxy).inflight.waiting)
        peak["accounts"] = max(peak["accounts"], account_waiting(proxy))
        stream.hang_up()

    for r in range(rounds):
        await asyncio.gather(*(once(r * per_round + i) for i in range(per_round)))
    snapshot = await assert_all_gates_idle(client, proxy)
    assert snapshot["inflight"]["admitted"] == rounds * per_round and snapshot["inflight"]["rejected"] == 0
    assert len(sim.backend.records) == rounds * per_round
    assert peak["inflight"] > 0 and peak["accounts"] > 0, peak  # the lines really formed


STALL_CUT_S = 0.25
CHAOS_ROUTES = [
    ("/backend-api/codex/responses", lambda text: body(user(text))),
    ("/v1/responses", lambda text: {"model": "gpt-5.5", "input": text, "stream": False}),
    ("/v1/responses", lambda text: {"model": "gpt-5.5", "input": text, "stream": True}),
    ("/v1/chat/completions", lambda text: {"model": "gpt-5.5", "messages": [{"role": "user", "content": text}],
                                           "stream": True}),
]


async def test_random_cancellations(aiohttp_server, settings, sim, client):
    proxy = await small_proxy(aiohttp_server, settings, sim, queue_wait_s=0.5)
    gates, rng = gates_of(proxy), random.Random(20241125)
    for fault in (
        {"action": "delay", "first_byte_ms": 15, "share": 0.3},
        {"action": "delay", "between_events_ms": 2, "share": 0.3},
        {"action": "stall", "after_events": 2, "share": 0.05},
        {"action": "close", "after_events": 3, "share": 0.05},
        {"action": "status", "status": 500, "share": 0.05},
    ):
        await add_fault(client, sim, times=None, **fault)
    # Keys: one with a limit (its own gate, taken before the global one), one without.
    limited, _ = await proxy.app[KEYS].create("limited", {"max_concurrency": 3})
    unlimited, _ = await proxy.app[KEYS].create("unlimited")
    keys = (limited, unlimited)
    total, workers = 1600, 24
    outcomes: Counter[str] = Counter()
    peak = {"inflight": 0, "accounts": 0}
    plan = iter(range(total))
    loop = asyncio.get_running_loop()

    async def exchange(path: str, payload: dict[str, Any], key: str) -> int:
        async with client.post(f"{proxy.url}{path}", data=orjson.dumps(payload),
                               headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
                               ) as resp:
            await resp.read()
            return resp.status

    async def worker() -> None:
        for i in plan:
            path, make = rng.choice(CHAOS_ROUTES)
            task = asyncio.create_task(exchange(path, make(f"chaos {i}"), rng.choice(keys)))
            # A random point: at once, while it queues or connects, or mid-stream; the rest run to their end
            # (a stalled one is cut after a quarter second).
            when = rng.choice((0.0, rng.uniform(0, 0.005), rng.uniform(0.005, 0.05), STALL_CUT_S, STALL_CUT_S,
                               STALL_CUT_S))
            timer = loop.call_later(when, task.cancel) if when else None
            if timer is None:
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)  # a few loop turns in: the request is somewhere on its way
                task.cancel()
            peak["inflight"] = max(peak["inflight"], gates.inflight.waiting)
            peak["accounts"] = max(peak["accounts"], account_waiting(proxy))
            await asyncio.wait([task])
            if timer is not None:
                timer.cancel()
            outcomes["cancelled" if task.cancelled() else str(task.result())] += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    assert sum(outcomes.values()) == total
    assert set(outcomes) <= {"cancelled", "200", "429", "502"}, outcomes
    assert outcomes["cancelled"] > total // 10 and outcomes["200"] > total // 10, outcomes
    assert peak["inflight"] > 0 and peak["accounts"] > 0, peak
    snapshot = await assert_all_gates_idle(client, proxy)
    assert snapshot["inflight"]["admitted"] + snapshot["inflight"]["rejected"] <= total
    assert snapshot["key:limited"]["admitted"] > 0 and "key:unlimited" not in snapshot

    # Every slot came back: the whole capacity serves a clean burst.
    async with client.delete(f"{sim.url}/__sim/faults") as resp:
        assert resp.status == 200
    texts = [f"after {i}" for i in range(2 * INFLIGHT)]
    results = await asyncio.gather(*(post(client, codex_url(proxy), body(user(t)),
                                          headers={"Authorization": f"Bearer {unlimited}"}) for t in texts))
    for text, (status, _, events) in zip(texts, results):
        assert_full_stream(status, events, text)
    await assert_all_gates_idle(client, proxy)

"""WebSocket clients that vanish at every stage, many times over: afterwards every gate reads zero and
no upstream socket is left open (`settled`). Small capacities make the gates really queue."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from codexlb.services import GATES
from tests.admission.test_http_admission import until
from tests.bridge.test_websocket import PREWARM, Proxy, add_fault, settled, start_proxy
from tests.simclient import body, user

HEADERS = {"openai-beta": "responses_websockets=2026-02-06"}


@pytest.fixture
async def proxy(aiohttp_server, settings, sim):
    return await start_proxy(aiohttp_server, settings, sim, max_inflight=2, account_max_streams=1,
                             max_upstream_connects=1, queue_wait_s=5)


async def client(proxy: Proxy, script) -> None:
    """One client on its own connection; leaving the block drops TCP without a close frame, as the
    Codex CLI does when it exits."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{proxy.codex_base_url}/responses", headers=HEADERS)
        await script(ws)


async def send(ws: aiohttp.ClientWebSocketResponse, payload: dict) -> None:
    await ws.send_json({"type": "response.create", **payload})


async def events(ws: aiohttp.ClientWebSocketResponse, n: int) -> None:
    for _ in range(n):
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT


async def test_dropped_while_queued_at_the_inflight_gate(proxy, http):
    holders_ready = asyncio.Event()
    release = asyncio.Event()

    async def hold(ws):
        holders_ready.set()
        await release.wait()

    held = [asyncio.create_task(client(proxy, hold)) for _ in range(2)]
    inflight = proxy.app[GATES].inflight
    await until(lambda: inflight.in_use == 2, "both held")
    for _ in range(200):
        queued = asyncio.create_task(client(proxy, hold))
        await until(lambda: inflight.waiting == 1, "one in line")
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        await until(lambda: inflight.waiting == 0, "the line empty")
        assert inflight.in_use == 2
    release.set()
    await asyncio.gather(*held)
    await settled(proxy)


async def test_dropped_while_the_upstream_handshake_runs(proxy, http):
    await add_fault(http, proxy, kind="handshake", action="delay", first_byte_ms=30, times=None)
    connects = proxy.app[GATES].upstream_connects
    for _ in range(200):
        task = asyncio.create_task(client(proxy, lambda ws: asyncio.Event().wait()))
        await until(lambda: connects.in_use == 1, "a handshake under way")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await settled(proxy)


@pytest.mark.parametrize("stage", ["before_first_byte", "mid_stream"])
async def test_dropped_with_a_response_under_way(proxy, http, stage):
    if stage == "before_first_byte":
        await add_fault(http, proxy, action="delay", first_byte_ms=20, times=None)
    else:
        await add_fault(http, proxy, action="delay", between_events_ms=5, times=None)

    async def script(ws):
        await send(ws, body(user("hello")))
        if stage == "mid_stream":
            await events(ws, 2)

    for _ in range(200):
        await client(proxy, script)
    gates = await settled(proxy)
    assert gates["inflight"]["admitted"] == 200


async def test_clients_cancelled_at_random_points(proxy, http):
    await add_fault(http, proxy, action="delay", first_byte_ms=2, between_events_ms=1, share=0.5, times=None)
    rng = random.Random(7)

    async def conversation(ws):
        await send(ws, PREWARM)
        await events(ws, 3)
        await send(ws, body(user("again")))
        while (await ws.receive_json(timeout=5))["type"] != "response.completed":
            pass

    ended: list[str] = []

    async def one() -> None:
        task = asyncio.create_task(client(proxy, conversation))
        for _ in range(rng.randint(0, 80)):
            await asyncio.sleep(0)
        if rng.random() < 0.8:
            task.cancel()
        [result] = await asyncio.gather(task, return_exceptions=True)
        ended.append(type(result).__name__)

    for _ in range(100):
        await asyncio.gather(*(one() for _ in range(8)))
    await settled(proxy)
    assert all(a.inflight == 0 for a in proxy.roster.all())
    # The schedule really cut clients at many points, and let some finish.
    assert ended.count("NoneType") > 50 and ended.count("CancelledError") > 300
    assert len({r["outcome"] for r in proxy.sim.backend.records_view()}) >= 2

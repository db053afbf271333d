"""The real HAProxy front door of the fleet tests (tests/haproxy.py), against small aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
from aiohttp import WSMsgType, web

from tests.haproxy import SERVED_BY, SESSION_HEADER, running_haproxy


DRAINING = web.AppKey("draining", list)


def _replica(name: str) -> web.Application:
    async def ready(request):
        if request.app[DRAINING]:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready"})

    async def who(_request):
        return web.Response(text=name)

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{name}:{msg.data}")
        return sock

    app = web.Application()
    app[DRAINING] = []
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/who", who)
    app.router.add_get("/ws", ws)
    return app


@asynccontextmanager
async def _replicas(count: int):
    async with AsyncExitStack() as stack:
        runners = []
        for i in range(count):
            runner = web.AppRunner(_replica(f"s{i}"))
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
        yield runners, [runner.addresses[0][:2] for runner in runners]


async def _served(http, url: str, session: str | None = None) -> str:
    headers = {SESSION_HEADER: session} if session else {}
    async with http.get(f"{url}/who", headers=headers) as resp:
        assert resp.status == 200
        body = await resp.text()
        assert resp.headers[SERVED_BY] == body  # the header names the backend that really answered
        return body


async def _all_up(http, url: str, count: int) -> None:
    # Checks start at once but each server needs one to count as up: wait (bounded) until round-robin sees all.
    deadline = time.monotonic() + 10
    while len({await _served(http, url) for _ in range(count * 2)}) < count:
        assert time.monotonic() < deadline, "not every backend came up"


async def test_hash_keeps_a_session_on_one_backend(http):
    async with _replicas(3) as (_runners, addrs), running_haproxy(addrs, mode="hash") as front:
        await _all_up(http, front.url, 3)
        homes = set()
        for _ in range(12):
            session = str(uuid.uuid4())
            served = {await _served(http, front.url, session) for _ in range(8)}
            assert len(served) == 1, served
            homes |= served
        assert len(homes) > 1  # and sessions are spread over the backends


async def test_roundrobin_spreads_one_session(http):
    async with _replicas(3) as (_runners, addrs), running_haproxy(addrs, mode="roundrobin") as front:
        await _all_up(http, front.url, 3)
        session = str(uuid.uuid4())
        counts = Counter([await _served(http, front.url, session) for _ in range(30)])
        assert sorted(counts.values()) == [10, 10, 10], counts


async def test_failing_health_check_takes_a_backend_out_within_seconds(http):
    async with _replicas(2) as (runners, addrs), running_haproxy(addrs, mode="roundrobin") as front:
        await _all_up(http, front.url, 2)
        # s1 still answers requests, so only the readiness check can take it out.
        runners[1].app[DRAINING].append(True)
        draining = time.monotonic()
        while set([await _served(http, front.url) for _ in range(4)]) != {"s0"}:
            assert time.monotonic() - draining < 5, "draining backend still chosen after 5 s"
        print(f"draining backend out after {time.monotonic() - draining:.2f} s")


async def test_killed_backend_fails_no_request(http):
    async with _replicas(2) as (runners, addrs), running_haproxy(addrs, mode="roundrobin") as front:
        await _all_up(http, front.url, 2)
        await runners[1].cleanup()
        # Refused connections are redispatched to s0 before the check notices.
        assert {await _served(http, front.url) for _ in range(10)} == {"s0"}


async def test_reload_adds_a_backend(http):
    async with _replicas(2) as (_runners, addrs), running_haproxy(addrs[:1], mode="roundrobin") as front:
        await _all_up(http, front.url, 1)
        await front.reload(addrs)
        # A kept-alive client connection stays on the old worker, with the old config, until it closes.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            await _all_up(fresh, front.url, 2)


async def test_websocket_passes_through_on_the_sessions_backend(http):
    async with _replicas(3) as (_runners, addrs), running_haproxy(addrs, mode="hash") as front:
        await _all_up(http, front.url, 3)
        session = str(uuid.uuid4())
        home = await _served(http, front.url, session)
        async with http.ws_connect(f"{front.url}/ws", headers={SESSION_HEADER: session}) as ws:
            assert ws._response.headers[SERVED_BY] == home
            for i in range(3):
                await ws.send_str(f"m{i}")
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.data == f"{home}:m{i}"

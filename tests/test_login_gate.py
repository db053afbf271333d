"""Password checks (scrypt: about 50 ms of CPU and 16 MiB each) are bounded and run on threads of their own,
so a login storm cannot starve the proxy."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp

from tests.proxy.conftest import start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import body, user

PASSWORD = "correct horse battery"
STORM = 300
# A proxied request (a whole stream through the sim) takes a few ms here. Before the gate, the first one
# during the storm waited for upstream's name behind every queued check: 5-10 s on a 2-core machine.
SLOWEST_S = 2.0


async def test_a_login_storm_does_not_starve_the_proxy(aiohttp_server, settings, sim, http):
    # Upstream by name, as chatgpt.com is: a new connection resolves it on the loop's default executor.
    # Behind a trusted proxy each login names another client, so the per-client limit does not stop them.
    proxy = await start_proxy(aiohttp_server, settings, sim, trusted_proxies=("127.0.0.1",),
                              upstream_base_url=sim.upstream_base_url.replace("127.0.0.1", "localhost"))
    async with http.post(f"{proxy.url}/api/admin/password", json={"password": PASSWORD}) as resp:
        assert resp.status == 200

    async def probe() -> float:
        started = time.perf_counter()
        resp, events = await post(http, proxy, body(user("still there?")))
        assert resp.status == 200 and events[-1]["type"] == "response.completed"
        return time.perf_counter() - started

    # Its own session, without a connection limit: every login is in flight at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as storm_http:
        async def guess(n: int) -> tuple[int, str | None]:
            headers = {"X-Forwarded-For": f"10.{n // 250}.{n % 250}.1"}
            async with storm_http.post(f"{proxy.url}/api/login", json={"password": "nope"}, headers=headers) as r:
                return r.status, r.headers.get("Retry-After")

        guesses = [asyncio.ensure_future(guess(n)) for n in range(STORM)]
        await asyncio.wait(guesses, return_when=asyncio.FIRST_COMPLETED)  # the storm has reached the server
        during = [await probe()]
        while not all(g.done() for g in guesses) or len(during) < 10:
            during.append(await probe())
        answers = await asyncio.gather(*guesses)
    quiet = [await probe() for _ in range(10)]
    print(f"\nduring {STORM} logins: first {during[0] * 1000:.0f} ms, p50 {statistics.median(during) * 1000:.1f} ms, "
          f"max {max(during) * 1000:.0f} ms ({len(during)} requests); after: p50 "
          f"{statistics.median(quiet) * 1000:.1f} ms; logins {answers.count((401, None))} x 401")
    assert max(during) < SLOWEST_S
    # Past the gate a login is told at once when to come back: few of them were checked at all.
    assert all(status == 401 or (status == 429 and int(after) >= 1) for status, after in answers)
    assert answers.count((401, None)) < STORM // 4

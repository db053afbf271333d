"""What codexlb costs: proxied against direct-to-sim, time to first event and streamed requests/s.

Run: .venv/bin/python tests/bench/bench_proxy.py [--requests 300] [--seconds 5] [--reply-words 40]

The sim and codexlb each run as their own process (`codexlb sim`, `codexlb serve`); this process
is the client. All three share the machine's cores, so read the ratios, not the absolute figures.
The "bare relay" row is the ceiling for any aiohttp proxy on this machine: a process that only
forwards bytes (no parsing, pool, failover, accounting or log) between the same client and sim.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

PAYLOAD = orjson.dumps({"model": "gpt-5.5", "stream": True, "store": False, "input": [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "bench"}]}]})


BARE_RELAY = """
import asyncio, sys
import aiohttp
from aiohttp import web
upstream, token, account = sys.argv[1:4]
headers = {"Authorization": "Bearer " + token, "chatgpt-account-id": account, "Content-Type": "application/json"}
async def relay(request):
    body = await request.read()
    async with request.app["http"].post(upstream, data=body, headers=headers) as up:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp
async def main():
    app = web.Application()
    app["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app.router.add_post("/backend-api/codex/responses", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def start(*args: str, env: dict[str, str] | None = None) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", *args, "--log-format", "json",
                                                stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        if not line:
            raise RuntimeError(f"codexlb {args[0]} exited before listening")
        event = json.loads(line)
        if event["event"] == "listening":
            asyncio.create_task(proc.stderr.read())  # keep draining so the child never blocks on a full pipe
            return proc, event["url"]


async def one(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    """Seconds to the first event (response.created) of one streamed request, read to its end."""
    started = time.perf_counter()
    async with http.post(url, data=PAYLOAD, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        first = None
        async for chunk in resp.content.iter_any():
            if first is None:
                first = time.perf_counter() - started
        assert first is not None
        return first


async def ttfb(url: str, headers: dict[str, str], requests: int) -> list[float]:
    async with aiohttp.ClientSession() as http:
        for _ in range(20):
            await one(http, url, headers)
        return [await one(http, url, headers) for _ in range(requests)]


async def throughput(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        deadline = time.monotonic() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await one(http, url, headers)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests for time to first event")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--reply-words", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="codexlb-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEXLB_")}
    sim, sim_url = await start("sim", "--port", "0", "--accounts", "4", "--reply-words", str(args.reply_words),
                               "--primary-limit-tokens", str(10**12), "--secondary-limit-tokens", str(10**12),
                               "--write-auth", str(work / "auth"), env=env)
    data = ["--data-dir", str(work / "data")]
    importer = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", "accounts", "import",
                                                    *map(str, sorted((work / "auth").glob("*/auth.json"))),
                                                    *data, "--port", "9", env=env,
                                                    stdout=asyncio.subprocess.DEVNULL)
    assert await importer.wait() == 0
    proxy, proxy_url = await start("serve", "--port", "0", *data, "--upstream-base-url", f"{sim_url}/backend-api",
                                   "--auth-base-url", sim_url,
                                   "--usage-poll-interval-s", "0", env=env)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{sim_url}/__sim/accounts") as resp:
                account = (await resp.json())["accounts"][0]
        direct_headers = {"Authorization": f"Bearer {account['access_token']}",
                          "chatgpt-account-id": account["account_id"], "Content-Type": "application/json"}
        proxy_headers = {"Content-Type": "application/json"}
        direct = f"{sim_url}/backend-api/codex/responses"
        proxied = f"{proxy_url}/backend-api/codex/responses"

        d, p = await ttfb(direct, direct_headers, args.requests), await ttfb(proxied, proxy_headers, args.requests)
        print(f"time to first event, concurrency 1, {args.requests} requests, {args.reply_words}-word replies")
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            dv, pv = pct(d, q) * 1000, pct(p, q) * 1000
            print(f"  {name}: direct {dv:6.2f} ms  proxied {pv:6.2f} ms  added {pv - dv:5.2f} ms  ratio {pv / dv:4.2f}")
        bare = await asyncio.create_subprocess_exec(sys.executable, "-c", BARE_RELAY, direct,
                                                    account["access_token"], account["account_id"],
                                                    stdout=asyncio.subprocess.PIPE)
        assert bare.stdout is not None
        bare_url = f"http://127.0.0.1:{int(await asyncio.wait_for(bare.stdout.readline(), 30))}"
        print(f"streamed requests/s ({args.seconds:g} s each)")
        try:
            for concurrency in (1, 32):
                dr = await throughput(direct, direct_headers, concurrency, args.seconds)
                pr = await throughput(proxied, proxy_headers, concurrency, args.seconds)
                br = await throughput(f"{bare_url}/backend-api/codex/responses", proxy_headers, concurrency,
                                      args.seconds)
                print(f"  concurrency {concurrency:2d}: direct {dr:7.0f}/s  proxied {pr:7.0f}/s  "
                      f"proxied/direct {pr / dr:4.2f}  (bare relay/direct {br / dr:4.2f})")
        finally:
            bare.terminate()
            await bare.wait()
        print(f"  (mean direct first event {statistics.mean(d) * 1000:.2f} ms; cpu count {os.cpu_count()})")
    finally:
        for proc in (proxy, sim):
            proc.terminate()
            await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())

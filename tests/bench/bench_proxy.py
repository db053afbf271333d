"""What codexlb costs: proxied against direct-to-sim, time to first event and streamed requests/s.

Run: .venv/bin/python tests/bench/bench_proxy.py [--requests 300] [--seconds 5] [--rounds 5] [--reply-words 40]
     [--database-url postgresql://...]   (an empty database: codexlb on PostgreSQL instead of its SQLite file)

The sim and codexlb each run as their own process (`codexlb sim`, `codexlb serve`); this process
is the client. All three share the machine's cores, so read the ratios, not the absolute figures.
"bridged" is the Codex CLI's way through codexlb: with a session id, each conversation is carried
over an upstream WebSocket (the HTTP bridge). The "bare relay" is the ceiling for any aiohttp proxy
on this machine: a process that only forwards bytes (no parsing, pool, failover, accounting or log)
between the same client and sim.
Throughput is measured in rounds that take direct, proxied and bare relay in turn, and each ratio
is the median of its rounds' ratios: a shared machine's load drifts more between runs than within
a round. "cpu/request" is each process's own CPU time (user + system, Linux only); "CPU-bound" is
the ratio those costs allow when every core is busy: (client + sim) / (client + sim + relay).
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


async def start(*args: str, env: dict[str, str] | None = None,
                drain: bool = True) -> tuple[asyncio.subprocess.Process, str]:
    """Start `codexlb ARGS` and wait until it listens; `drain=False` leaves reading its log to the caller."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", *args, "--log-format", "json",
                                                stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        if not line:
            raise RuntimeError(f"codexlb {args[0]} exited before listening")
        event = json.loads(line)
        if event["event"] == "listening":
            if drain:
                asyncio.create_task(proc.stderr.read())  # keep draining so the child never blocks on a full pipe
            return proc, event["url"]


async def start_sim_and_serve(prefix: str, reply_words: int, *serve_args: str, drain: bool = True,
                              database_url: str = "") -> tuple[
        asyncio.subprocess.Process, str, asyncio.subprocess.Process, str]:
    """A sim with four accounts that never run out, and `codexlb serve` with them imported, each its own
    process on a free loopback port, in a new temporary directory; CODEXLB_* variables are not passed on."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEXLB_")}
    if database_url:
        env["CODEXLB_DATABASE_URL"] = database_url
    sim, sim_url = await start("sim", "--port", "0", "--accounts", "4", "--reply-words", str(reply_words),
                               "--primary-limit-tokens", str(10**15), "--secondary-limit-tokens", str(10**15),
                               "--write-auth", str(work / "auth"), env=env)
    data = ["--data-dir", str(work / "data")]
    importer = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", "accounts", "import",
                                                    *map(str, sorted((work / "auth").glob("*/auth.json"))),
                                                    *data, "--port", "9", env=env,
                                                    stdout=asyncio.subprocess.DEVNULL)
    assert await importer.wait() == 0
    proxy, proxy_url = await start("serve", "--port", "0", *data, "--upstream-base-url", f"{sim_url}/backend-api",
                                   "--auth-base-url", sim_url, "--usage-poll-interval-s", "0", *serve_args,
                                   env=env, drain=drain)
    return sim, sim_url, proxy, proxy_url


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


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 where /proc is not there)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    """Requests/s of `concurrency` workers; a `session_id` header becomes one conversation per worker."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        deadline = time.monotonic() + seconds
        done = 0

        async def worker(n: int) -> None:
            nonlocal done
            mine = {**headers, "session_id": f"{headers['session_id']}-{n}"} if "session_id" in headers else headers
            while time.monotonic() < deadline:
                await one(http, url, mine)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        return done / (time.monotonic() - started)


async def settled(pids: list[int]) -> None:
    """Until these processes use no CPU for 50 ms (at most 2 s): what a round leaves behind (log lines, the
    request log's batch) would otherwise be counted to the next round's target."""
    last = [cpu_s(pid) for pid in pids]
    for _ in range(40):
        await asyncio.sleep(0.05)
        now = [cpu_s(pid) for pid in pids]
        if now == last:
            return
        last = now


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests for time to first event")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput time per target and concurrency")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the throughput time is split into")
    parser.add_argument("--reply-words", type=int, default=40)
    parser.add_argument("--database-url", default="", help="an empty PostgreSQL database for codexlb's state")
    args = parser.parse_args()
    sim, sim_url, proxy, proxy_url = await start_sim_and_serve("codexlb-bench-", args.reply_words,
                                                               database_url=args.database_url)
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
        print(f"streamed requests/s ({args.seconds:g} s per target in {args.rounds} rounds; median, [min-max])")
        # "bridged": the Codex CLI's way, a session id per conversation, carried over an upstream WebSocket.
        targets = {"direct": (direct, direct_headers, None), "proxied": (proxied, proxy_headers, proxy.pid),
                   "bridged": (proxied, {**proxy_headers, "session_id": "bench"}, proxy.pid),
                   "bare": (f"{bare_url}/backend-api/codex/responses", proxy_headers, bare.pid)}
        try:
            for concurrency in (1, 32):
                rates: dict[str, list[float]] = {name: [] for name in targets}
                # CPU µs per request of each process in a target's rounds: the relay's, the sim's, this client's.
                cpu: dict[tuple[str, str], list[float]] = {}
                for _ in range(args.rounds):
                    for name, (url, headers, relay_pid) in targets.items():
                        pids = {"relay": relay_pid, "sim": sim.pid, "client": os.getpid()}
                        await settled([pid for pid in (relay_pid, sim.pid) if pid is not None])
                        before = {role: cpu_s(pid) for role, pid in pids.items() if pid is not None}
                        rate = await throughput(url, headers, concurrency, args.seconds / args.rounds)
                        rates[name].append(rate)
                        for role, was in before.items():
                            used = cpu_s(pids[role]) - was  # type: ignore[arg-type]
                            cpu.setdefault((name, role), []).append(used / (rate * args.seconds / args.rounds) * 1e6)

                def ratio(name: str) -> str:
                    r = sorted(a / d for a, d in zip(rates[name], rates["direct"]))
                    return f"{statistics.median(r):4.2f} [{r[0]:.2f}-{r[-1]:.2f}]"

                def us(name: str, role: str) -> float:
                    return statistics.median(cpu[(name, role)])

                print(f"  concurrency {concurrency:2d}: direct {statistics.median(rates['direct']):6.0f}/s  "
                      f"proxied {statistics.median(rates['proxied']):6.0f}/s  proxied/direct {ratio('proxied')}  "
                      f"bridged/direct {ratio('bridged')}  (bare relay/direct {ratio('bare')})")
                # With every core busy, requests/s follow the CPU all processes spend on one request.
                others = us("direct", "client") + us("direct", "sim")
                print(f"                  cpu/request: codexlb {us('proxied', 'relay'):4.0f} µs (bridged "
                      f"{us('bridged', 'relay'):4.0f} µs)  bare relay "
                      f"{us('bare', 'relay'):4.0f} µs  sim {us('direct', 'sim'):4.0f} µs  client "
                      f"{us('direct', 'client'):4.0f} µs  -> CPU-bound proxied/direct "
                      f"{others / (others + us('proxied', 'relay')):4.2f} (bare relay "
                      f"{others / (others + us('bare', 'relay')):4.2f})")
        finally:
            bare.terminate()
            await bare.wait()
        print(f"  (mean direct first event {statistics.mean(d) * 1000:.2f} ms; cpu count {os.cpu_count()})")
    finally:
        await stop(proxy, sim)


async def stop(*procs: asyncio.subprocess.Process) -> None:
    for proc in procs:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())

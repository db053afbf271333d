"""Many long, paced streams at once: what codexlb adds per event, costs per event, and holds per stream,
each path beside the bare relay of its own transport (the limit this stack can be).

Run: .venv/bin/python tests/bench/bench_long_streams.py [--streams 100] [--events 200] [--interval-ms 25]
     [--ramp-s 2] [--paths "bare SSE,plain HTTP"]   (1000 and 4000 streams work too; starts are spread
     over the ramp)

The sim paces every answer with a `delay` fault (`between_events_ms`, on every request): `--events`
events a stream, one per `--interval-ms`, a 200-event turn being about a real turn's reply (one delta
per word). `--streams` streams run at once over each path in turn: direct to the sim over HTTP, the bare
SSE relay, plain HTTP through codexlb, the bare HTTP-to-WebSocket relay, the HTTP bridge (a `session_id`
per stream), direct over WebSocket, the bare WebSocket relay and the WebSocket route (the bare relays
are tests/bench/bench_paths.py's). Every path gets a new sim and codexlb: heap that one path grew and
freed would otherwise be reused by the next and not show in its RSS. Printed per path:
  - added latency per event (p50, p99, max): an event's lateness against its stream's first event
    (arrival - first arrival - index x interval), minus the same percentile measured direct over the
    same transport; and the p99 of the events that came once every stream was open (the ramp's
    handshakes over), which is what a pool of agents long at work sees; "first event" is the same for the time from sending the request to its first
    event (connect, admission, upstream connect), which is where a constant per-event delay shows;
  - CPU per event of the relaying process (user + system over the run, per event relayed);
  - RSS per open stream (peak VmRSS during the run less VmRSS before it, per stream) and, for the paths
    with a session per stream, per idle session (before the streams: as many sessions opened by one
    quick turn each, 32 at a time, VmRSS after less before, per session);
  - for codexlb's paths, CPU and RSS as a multiple of the bare relay's of the same transport;
  - failures: streams that did not end with response.completed (status, error or cut).
File descriptors: every stream holds sockets in this client, codexlb and the sim, so this process
raises its RLIMIT_NOFILE soft limit to the hard limit before starting the sim and codexlb, which
inherit it.
Admission caps are sized so that only the proxy is measured: --max-inflight 2 x streams (with room to
spare), --account-max-streams = streams (any one of the 4 accounts could carry them all), --max-queue
= streams and --queue-wait-s 60 (nothing is turned away while the ramp lands),
--max-upstream-connects = streams (upstream WebSocket connects are not held in line), and
--bridge-max-sessions = 2 x streams (the idle sessions and the streams'; past its default, 512, the
bridge's streams would go the plain HTTP way).
One client process drives every stream, and the sim and the relay share the same cores: past what the
machine can carry (1000 streams of an event every 25 ms are 40,000 events a second through three
processes) the direct figures show how far the client and sim themselves fall behind; read the
differences, or pace the events further apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paths import FRAME, HTTP_WS_RELAY, TERMINAL, WS_BETA, WS_RELAY, spawn_relay  # noqa: E402
from bench_proxy import BARE_RELAY, PAYLOAD, cpu_s, pct, settled, start_sim_and_serve, stop  # noqa: E402

PATHS = ("direct HTTP", "bare SSE", "plain HTTP", "bare HTTP-WS", "HTTP bridge", "direct WS", "bare WS-WS", "WS route")
# Each codexlb path and the bare relay of its transport (tests/bench/bench_paths.py), the limit to aim at.
BARE = {"plain HTTP": "bare SSE", "HTTP bridge": "bare HTTP-WS", "WS route": "bare WS-WS"}
# The sim's turn is its one delta per reply word and 8 events around them (created ... completed).
FRAMING_EVENTS = 8


@dataclass
class Route:
    name: str
    ws: bool
    url: str
    headers: dict[str, str]
    session: bool = False  # a session_id per stream: the HTTP bridge


@dataclass
class Run:
    first: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # when each `lateness` event arrived
    opened: float = 0.0  # when the last stream's first event arrived: the ramp is over
    events: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    name: str = ""
    peak_rss: int = 0  # KB
    rss_kb: float = 0.0  # per open stream
    cpu_us: float = 0.0  # per event

    def steady(self) -> list[float]:
        """The lateness of the events that came once every stream was open (the ramp's handshakes over)."""
        return [late for at, late in zip(self.arrivals, self.lateness) if at > self.opened] or [0.0]

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _kind(frame: str) -> str:
    """A WebSocket event's type, read without parsing the rest: the client must not be what falls behind."""
    start = frame.find('"type":') + 7
    start = frame.index('"', start) + 1
    return frame[start:frame.index('"', start)]


async def events_of(http: aiohttp.ClientSession, path: Route, n: int):
    """Yield (arrival time, event types) of one stream's reads: the events each read completed."""
    if path.ws:
        async with http.ws_connect(path.url, headers=path.headers, max_msg_size=0) as ws:
            await ws.send_str(FRAME)
            async for message in ws:
                kind = _kind(message.data)
                yield time.perf_counter(), [kind]
                if kind in TERMINAL:
                    return
        return
    headers = {**path.headers, "session_id": f"long-{n}"} if path.session else path.headers
    async with http.post(path.url, data=PAYLOAD, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
        pending = b""
        async for chunk in resp.content.iter_any():
            arrived = time.perf_counter()
            *frames, pending = (pending + chunk).split(b"\n\n")
            kinds = []
            for frame in frames:
                if not frame.startswith(b"event: "):
                    continue  # a comment
                kind = frame[7:frame.index(b"\n")].decode()
                if kind == "response.failed":
                    # Which failure it was is the lead to its cause (codexlb's log has the rest).
                    event = orjson.loads(frame[frame.index(b"data: ") + 6:])
                    raise RuntimeError(f"response.failed {event['response'].get('error', {}).get('code')}")
                if kind != "codex.keepalive":
                    kinds.append(kind)
            if kinds:
                yield arrived, kinds


async def stream(http: aiohttp.ClientSession, path: Route, n: int, interval: float, limit: float,
                 run: Run) -> None:
    sent = time.perf_counter()
    first, index, last = 0.0, 0, ""
    try:
        async with asyncio.timeout(limit):
            async for arrived, kinds in events_of(http, path, n):
                for last in kinds:
                    if index == 0:
                        first = arrived
                        run.first.append(arrived - sent)
                        run.opened = max(run.opened, arrived)
                    else:
                        run.lateness.append(arrived - first - index * interval)
                        run.arrivals.append(arrived)
                    index += 1
    except Exception as exc:  # a failure is a figure here, not a reason to stop the benchmark
        run.fail(str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__)
        return
    finally:
        run.events += index
    if last != "response.completed":
        run.fail(f"ended with {last or 'nothing'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--events", type=int, default=200, help="events a stream, at least 10")
    parser.add_argument("--interval-ms", type=float, default=25.0)
    parser.add_argument("--ramp-s", type=float, default=2.0, help="the streams' starts are spread over this")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated, in this order: {', '.join(PATHS)} (a proxied path is compared "
                             "with the direct one of its transport when that ran before it)")
    args = parser.parse_args()
    n = args.streams
    fds = raise_fd_limit()
    chosen = [name.strip() for name in args.paths.split(",")]
    interval = args.interval_ms / 1000
    limit = args.ramp_s + args.events * interval + 120
    print(f"{n} streams of {args.events} events {args.interval_ms:g} ms apart, starts spread over "
          f"{args.ramp_s:g} s; RLIMIT_NOFILE {fds}; cpu count {os.cpu_count()}")
    runs: dict[str, Run] = {}
    for name in chosen:
        # A new sim and codexlb for every path: heap one path grew and freed would be reused by the next
        # and not show in its RSS.
        sim, sim_url, proxy, proxy_url = await start_sim_and_serve(
            "codexlb-bench-long-", max(0, args.events - FRAMING_EVENTS),
            "--max-inflight", str(2 * n + 16), "--account-max-streams", str(n), "--max-queue", str(n),
            "--queue-wait-s", "60", "--max-upstream-connects", str(n), "--bridge-max-sessions", str(2 * n))
        relay: asyncio.subprocess.Process | None = None
        try:
            path, relay = await route(name, sim_url, proxy_url)
            pid = relay.pid if relay else proxy.pid  # the relaying process (none for a direct path)
            idle = await idle_sessions(path, n, pid) if path.session else ""
            await pace(sim_url, args.interval_ms)
            await settled([pid, sim.pid])
            run = runs[name] = Run()
            rss_before, cpu_before = rss_kb(pid), cpu_s(pid)
            run.peak_rss = rss_before

            async def sample() -> None:
                while True:
                    run.peak_rss = max(run.peak_rss, rss_kb(pid))
                    await asyncio.sleep(0.1)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=None)) as http:

                async def staggered(i: int) -> None:
                    await asyncio.sleep(args.ramp_s * i / n)
                    await stream(http, path, i, interval, limit, run)

                await asyncio.gather(*(staggered(i) for i in range(n)))
            sampler.cancel()
            line = f"  {name:12s} {time.monotonic() - started:5.1f} s  failures {sum(run.failures.values())}/{n}"
            if run.failures:
                line += f" {run.failures}"
            if name.startswith("direct"):
                print(line + f"  lateness p50 {pct(run.lateness, .5) * 1e3:.1f} ms p99 "
                      f"{pct(run.lateness, .99) * 1e3:.1f} ms (all open: {pct(run.steady(), .99) * 1e3:.1f})  first event p50 {pct(run.first, .5) * 1e3:.1f} ms")
                continue
            # Without the direct run of its transport the figures are absolute, not added.
            base = runs.get("direct WS" if path.ws else "direct HTTP") or Run(first=[0.0], lateness=[0.0])

            def added(values: list[float], against: list[float], q: float) -> str:
                return f"{(pct(values, q) - pct(against, q)) * 1e3:+.1f}"

            run.cpu_us = (cpu_s(pid) - cpu_before) / max(1, run.events) * 1e6
            run.rss_kb = (run.peak_rss - rss_before) / n
            line += (f"  added/event p50 {added(run.lateness, base.lateness, .5)} p99 "
                     f"{added(run.lateness, base.lateness, .99)} max {added(run.lateness, base.lateness, 1)} ms"
                     f" (all open: p99 {added(run.steady(), base.steady(), .99)} ms)"
                     f"  first event p50 {added(run.first, base.first, .5)} p99 {added(run.first, base.first, .99)}"
                     f" ms  cpu {run.cpu_us:.1f} µs/event  RSS {run.rss_kb:.0f} KB/open stream")
            line += idle
            if (bare := runs.get(BARE.get(name, ""))) is not None:
                line += f"  (x{run.cpu_us / bare.cpu_us:.2f} cpu, x{run.rss_kb / max(bare.rss_kb, 0.1):.2f} RSS of {bare.name})"
            run.name = name
            print(line)
        finally:
            await stop(*[p for p in (relay, proxy, sim) if p is not None])


async def idle_sessions(path: Route, n: int, pid: int) -> str:
    """RSS per idle session: `n` sessions (not the streams' own) opened by one quick turn each, 32 at a time,
    so that little heap is left by the turns themselves; measured before the paced streams."""
    await settled([pid])
    before = rss_kb(pid)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:
        async def turn(i: int) -> None:
            async with http.post(path.url, data=PAYLOAD, headers={**path.headers, "session_id": f"idle-{i}"}) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()

        for start in range(0, n, 32):
            await asyncio.gather(*(turn(i) for i in range(start, min(n, start + 32))))
    await settled([pid])
    return f", {(rss_kb(pid) - before) / n:.0f} KB/idle session"


async def pace(sim_url: str, interval_ms: float) -> None:
    """Every answer of the sim from now on: an event every `interval_ms`."""
    async with aiohttp.ClientSession() as http, http.post(f"{sim_url}/__sim/faults", json={
            "action": "delay", "times": None, "between_events_ms": interval_ms}) as resp:
        assert resp.status == 201, await resp.text()


async def route(name: str, sim_url: str, proxy_url: str) -> tuple[Route, asyncio.subprocess.Process | None]:
    """How a stream of path `name` is asked for (with the bare relay it goes through)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim_url}/__sim/accounts") as resp:
            account = (await resp.json())["accounts"][0]
    auth = {"Authorization": f"Bearer {account['access_token']}", "chatgpt-account-id": account["account_id"]}
    json_type = {"Content-Type": "application/json"}
    direct = f"{sim_url}/backend-api/codex/responses"
    bare = {"bare SSE": (BARE_RELAY, direct), "bare HTTP-WS": (HTTP_WS_RELAY, direct.replace("http", "ws", 1)),
            "bare WS-WS": (WS_RELAY, direct.replace("http", "ws", 1))}
    relay = None
    if name in bare:
        script, upstream = bare[name]
        relay, base = await spawn_relay(script, upstream, account["access_token"], account["account_id"])
        proxy_url = base
    proxied = f"{proxy_url}/backend-api/codex/responses"
    return {"direct HTTP": Route("direct HTTP", False, direct, {**auth, **json_type}),
            "bare SSE": Route("bare SSE", False, proxied, json_type),
            "plain HTTP": Route("plain HTTP", False, proxied, json_type),
            "bare HTTP-WS": Route("bare HTTP-WS", False, proxied, json_type, session=True),
            "HTTP bridge": Route("HTTP bridge", False, proxied, json_type, session=True),
            "direct WS": Route("direct WS", True, direct.replace("http", "ws", 1), {**auth, **WS_BETA}),
            "bare WS-WS": Route("bare WS-WS", True, proxied.replace("http", "ws", 1), WS_BETA),
            "WS route": Route("WS route", True, proxied.replace("http", "ws", 1), WS_BETA)}[name], relay


if __name__ == "__main__":
    asyncio.run(main())

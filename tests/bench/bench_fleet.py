"""What running as a fleet costs and buys: requests/s and CPU per request for 1, 2 and 4 workers
(`serve --workers N`, on PostgreSQL), and the time to first event on PostgreSQL against SQLite.

Run: .venv/bin/python tests/bench/bench_fleet.py [--seconds 6] [--requests 300] [--concurrency 32]

A sim, the codexlb under test and this client share the machine's cores: on a 2-core machine more than two
workers cannot add throughput, and the client and the sim take their share. "cpu/request" is the CPU of
every codexlb process (the parent and its workers) over the requests they served. PostgreSQL runs on this
machine (tests/pgserver.py, fsync off): a remote one adds its network round trip to each write, none of
which is on the request path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_proxy import cpu_s, pct, settled, start_sim_and_serve, throughput, ttfb  # noqa: E402
from tests.pgserver import PgServer, find_bindir  # noqa: E402


def family(pid: int) -> list[int]:
    """The process and its children (the workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


async def measure(args: argparse.Namespace, *serve_args: str,
                  database_url: str = "") -> tuple[float, float, list[float]]:
    """(requests/s, codexlb CPU µs per request, first-event times) of one `serve` with `serve_args`."""
    sim, _, proxy, proxy_url = await start_sim_and_serve("codexlb-fleet-", args.reply_words, *serve_args,
                                                         database_url=database_url)
    try:
        url = f"{proxy_url}/backend-api/codex/responses"
        headers = {"Content-Type": "application/json"}
        first = await ttfb(url, headers, args.requests)
        pids = family(proxy.pid)
        await settled([*pids, sim.pid])
        before = sum(cpu_s(pid) for pid in pids)
        rate = await throughput(url, headers, args.concurrency, args.seconds)
        used = sum(cpu_s(pid) for pid in pids) - before
        return rate, used / (rate * args.seconds) * 1e6, first
    finally:
        for proc in (proxy, sim):
            proc.terminate()
            await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput time per configuration")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests for time to first event")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--reply-words", type=int, default=40)
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        sys.exit("PostgreSQL's server binaries are not installed (Debian: postgresql)")
    server = PgServer(bindir)
    server.init()
    try:
        def fresh() -> str:
            return server.url(server.create_database())

        print(f"cpu count {os.cpu_count()}; {args.concurrency} concurrent streams, "
              f"{args.seconds:g} s each; {args.reply_words}-word replies")
        results = {}
        for workers in (1, 2, 4):
            results[workers] = await measure(args, "--workers", str(workers), database_url=fresh())
            rate, cpu, _ = results[workers]
            print(f"  workers {workers} (PostgreSQL): {rate:7.0f} requests/s  x{rate / results[1][0]:4.2f}  "
                  f"cpu/request {cpu:5.0f} µs")
        _, _, on_sqlite = await measure(args)
        on_pg = results[1][2]
        print(f"time to first event, concurrency 1, {args.requests} requests (one worker)")
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            s, p = pct(on_sqlite, q) * 1000, pct(on_pg, q) * 1000
            print(f"  {name}: SQLite {s:6.2f} ms  PostgreSQL {p:6.2f} ms  added {p - s:+5.2f} ms")
        print(f"  mean: SQLite {statistics.mean(on_sqlite) * 1000:.2f} ms  "
              f"PostgreSQL {statistics.mean(on_pg) * 1000:.2f} ms")
    finally:
        server.destroy()


if __name__ == "__main__":
    asyncio.run(main())

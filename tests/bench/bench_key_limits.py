"""What per-key limits cost on the hot path: codexlb's CPU per request for a key with every limit set (requests
per minute, tokens per 5 hours, day and week, allowed models by glob, an expiry) against a key with none, in
the same run.

Run: .venv/bin/python tests/bench/bench_key_limits.py [--seconds 20] [--rounds 10] [--database-url postgresql://...]

The limits are set high enough never to refuse, so both keys serve the same requests; the limited key's meters
are counted per request and told to the database in the background (one upsert per limit when a tenth of it
is spent, and each second). Rounds alternate between the two keys, and the figure is the median of the
rounds' ratios: a shared machine's load drifts more between runs than within a round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_proxy import cpu_s, settled, start_sim_and_serve, stop, throughput  # noqa: E402

LIMITS = ("--rpm", str(10**9), "--tokens-5h", str(10**12), "--tokens-day", str(10**12), "--tokens-week",
          str(10**12), "--models", "gpt-5*,o4-*", "--expires", "2999-01-01T00:00:00Z")


async def make_key(port: str, data: str, name: str, *limits: str) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "codexlb", "keys", "create", "--name", name,
                                                *limits, "--json", "--port", port, "--data-dir", data,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return orjson.loads(out)["key"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="time per key and concurrency")
    parser.add_argument("--rounds", type=int, default=10, help="rounds the time is split into")
    parser.add_argument("--database-url", default="", help="an empty PostgreSQL database for codexlb's state")
    args = parser.parse_args()
    sim, _sim_url, proxy, proxy_url = await start_sim_and_serve("codexlb-bench-limits-", 40,
                                                                database_url=args.database_url)
    try:
        port = proxy_url.rsplit(":", 1)[1]
        data = next(Path(p) for p in Path(f"/proc/{proxy.pid}/cmdline").read_text().split("\0")
                    if p.endswith("/data"))
        keys = {"no limits": await make_key(port, str(data), "plain"),
                "every limit": await make_key(port, str(data), "limited", *LIMITS)}
        url = f"{proxy_url}/backend-api/codex/responses"
        print(f"codexlb cpu per request ({args.seconds:g} s per key in {args.rounds} rounds; median [min-max])")
        for concurrency in (1, 32):
            cpu: dict[str, list[float]] = {name: [] for name in keys}
            for _ in range(args.rounds):
                for name, key in keys.items():
                    await settled([proxy.pid, sim.pid])
                    before = cpu_s(proxy.pid)
                    seconds = args.seconds / args.rounds
                    rate = await throughput(url, {"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {key}"}, concurrency, seconds)
                    cpu[name].append((cpu_s(proxy.pid) - before) / (rate * seconds) * 1e6)
            ratios = sorted(a / b for a, b in zip(cpu["every limit"], cpu["no limits"]))
            print(f"  concurrency {concurrency:2d}: no limits {statistics.median(cpu['no limits']):4.0f} µs  "
                  f"every limit {statistics.median(cpu['every limit']):4.0f} µs  ratio "
                  f"{statistics.median(ratios):.3f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]")
        print(f"  (cpu count {os.cpu_count()})")
    finally:
        await stop(proxy, sim)


if __name__ == "__main__":
    asyncio.run(main())

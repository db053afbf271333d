"""How long one account selection takes among many accounts, per strategy; and a sticky-table get/put.

Run: /tmp/venv/bin/python tests/bench/bench_selection.py [--accounts 1000] [--iterations 2000] [--seed 1]

Each figure is the median of `--iterations` timed calls (time.perf_counter_ns), in microseconds. The pool is
seeded-random: mixed usage, reset times, unknown and already-reset windows, some requests in flight.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from bisect import bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from codexlb.account import Account, Tokens, Window  # noqa: E402
from codexlb.pool.selection import STRATEGIES, CapacityStrategy, make_strategy  # noqa: E402
from codexlb.pool.sticky import StickyTable, conversation_keys  # noqa: E402

NOW = 1_700_000_000.0


def make_pool(n: int, rng: random.Random, used: tuple[float, float] = (0.0, 100.0)) -> list[Account]:
    def window(minutes: int) -> Window | None:
        kind = rng.random()
        if kind < 0.1 and used[0] == 0.0:
            return None
        if kind < 0.2 and used[0] == 0.0:
            return Window(rng.uniform(0, 100), minutes, NOW - rng.uniform(1, 600))
        return Window(rng.uniform(*used), minutes, NOW + rng.uniform(0, minutes * 60))

    tokens = Tokens("at", "rt", "it", NOW + 3600, NOW)
    return [Account(id=f"acct-{i:05d}", alias=f"a{i}", email=None, plan="plus", tokens=tokens,
                    primary=window(300), secondary=window(10080), inflight=rng.choice((0, 0, 0, 1, 2)),
                    last_used_at=NOW - rng.uniform(0, 3600)) for i in range(n)]


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000.0


def bench_strategy(name: str, pool: list[Account], iterations: int, seed: int) -> float:
    return bench_select(make_strategy(name, random.Random(seed)).select, pool, iterations)


def bench_select(select, pool: list[Account], iterations: int) -> float:
    for _ in range(min(50, iterations)):  # warm up
        select(pool, NOW)
    clock = time.perf_counter_ns
    samples = []
    for _ in range(iterations):
        t0 = clock()
        select(pool, NOW)
        samples.append(clock() - t0)
    return median_us(samples)


def bench_sticky(iterations: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    table = StickyTable(max_entries=10_000, ttl_s=3600)
    keys = [f"session:{rng.getrandbits(64):016x}" for _ in range(20_000)]
    for i, key in enumerate(keys[:10_000]):
        table.put(key, f"acct-{i % 1000:05d}", NOW)
    clock = time.perf_counter_ns
    out: dict[str, list[int]] = {"get (hit)": [], "get (miss)": [], "put (new, evicting)": [], "put (refresh)": [],
                                 "conversation_keys": []}
    headers = {"content-type": "application/json", "authorization": "Bearer x", "session_id": "abc",
               "x-codex-turn-state": "ts", "user-agent": "codex_cli_rs/0.50", "accept": "text/event-stream"}
    body = {"model": "gpt-5", "previous_response_id": "resp_123", "prompt_cache_key": "pc", "input": []}
    for i in range(iterations):
        hit = keys[10_000 + i - 1] if i else keys[9_999]
        t0 = clock(); table.get(hit, NOW); t1 = clock()
        table.get("session:absent", NOW); t2 = clock()
        table.put(keys[10_000 + i % 10_000], "acct-00001", NOW); t3 = clock()
        table.put(hit, "acct-00002", NOW); t4 = clock()
        conversation_keys(headers, body); t5 = clock()
        out["get (hit)"].append(t1 - t0)
        out["get (miss)"].append(t2 - t1)
        out["put (new, evicting)"].append(t3 - t2)
        out["put (refresh)"].append(t4 - t3)
        out["conversation_keys"].append(t5 - t4)
    return {k: median_us(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    pool = make_pool(args.accounts, random.Random(args.seed))
    print(f"python {sys.version.split()[0]}, {args.accounts} usable accounts, median of {args.iterations} selects")
    for name in STRATEGIES:
        print(f"  {name:<32} {bench_strategy(name, pool, args.iterations, args.seed):8.1f} us/select")
    # capacity's other paths: the exact single pass (its fallback, and what pools under 64 use), and a pool where
    # every account is 97-100% used, so rejection sampling mostly gives up and falls back.
    rng = random.Random(args.seed)

    def exact_select(accounts: list[Account], now: float) -> Account:
        cumulative = CapacityStrategy.cumulative_weights(accounts, now)
        return accounts[min(bisect_right(cumulative, rng.random() * cumulative[-1]), len(accounts) - 1)]

    print(f"  {'capacity, exact pass only':<32} {bench_select(exact_select, pool, args.iterations):8.1f} us/select")
    full = make_pool(args.accounts, random.Random(args.seed), used=(97.0, 100.0))
    print(f"  {'capacity, all 97-100% used':<32} {bench_strategy('capacity', full, args.iterations, args.seed):8.1f}"
          " us/select")
    small = pool[:50]
    print(f"  {'capacity, 50 accounts':<32} {bench_strategy('capacity', small, args.iterations, args.seed):8.1f}"
          " us/select")
    print(f"sticky table (10,000 entries), median of {args.iterations}")
    for label, us in bench_sticky(args.iterations, args.seed).items():
        print(f"  {label:<20} {us:8.2f} us")
    print(f"Pool.choose, the whole decision (stickiness, usable set, strategy), {args.accounts} accounts")
    for label, us in bench_pool_choose(pool, args.iterations, args.seed).items():
        print(f"  {label:<32} {us:8.2f} us")


class _NoStore:
    """Pool.choose never writes while no status changes; the bench keeps it that way."""

    def save_account_soon(self, account: Account) -> None:
        pass


def bench_pool_choose(accounts: list[Account], iterations: int, seed: int) -> dict[str, float]:
    from codexlb.pool.pool import Pool
    from codexlb.pool.roster import Roster

    pool = Pool(Roster(_NoStore(), accounts), rng=random.Random(seed))  # type: ignore[arg-type]
    now = time.time()
    out = {}
    for label, keys in (("new conversation each time", None), ("sticky conversation", ["session:s"])):
        samples = []
        for i in range(iterations):
            started = time.perf_counter_ns()
            pool.choose(keys or [f"session:{i}"], now=now)
            samples.append(time.perf_counter_ns() - started)
        out[label] = statistics.median(samples) / 1000
    return out


if __name__ == "__main__":
    main()

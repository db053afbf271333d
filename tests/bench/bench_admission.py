"""What admission costs: a gate's fast path per request, and the event loop with a long line of waiters.

Run: /tmp/venv/bin/python tests/bench/bench_admission.py [--requests 200000] [--waiters 10000] [--batch 100]

(a) Mean time per request of `async with gate.slot():` on a gate with room, and of the proxy's own
    `async with gates.admitted(None):` (Gates(Settings())), next to an empty loop; best of 5 runs.
(b) Event-loop lag: how late a ticker's 1 ms sleeps wake up (p50/p99/max), idle, then while --waiters
    waiters queue on a full gate (--batch arrivals per turn of the loop), while they are all cancelled
    at once, and, with the line refilled, while releases admit them one by one (each holds its slot for
    one turn of the loop). Beside it, the garbage collector's longest pause in the phase: with this
    many tasks alive, a full collection is the usual cause of the worst lag.
(c) The gate's counts afterwards: exactly 0 in use and 0 waiting, or the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from codexlb.admission.gate import Gate  # noqa: E402
from codexlb.admission.gates import Gates  # noqa: E402
from codexlb.config import Settings  # noqa: E402

TICK_S = 0.001


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def best_per_request(run: Callable[[int], Awaitable[None]], n: int) -> float:
    """Microseconds per iteration, best of 5 runs."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        await run(n)
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


async def overhead(requests: int) -> None:
    gate = Gate("bench", 1, wait_s=10, max_queue=0)
    gates = Gates(Settings())

    async def empty(n: int) -> None:
        for _ in range(n):
            pass

    async def slot(n: int) -> None:
        for _ in range(n):
            async with gate.slot():
                pass

    async def admitted(n: int) -> None:
        for _ in range(n):
            async with gates.admitted(None):
                pass

    base = await best_per_request(empty, requests)
    print(f"(a) admission overhead per request, uncontended ({requests} requests, best of 5)")
    print(f"  empty loop                        {base:7.3f} µs")
    for name, run in (("async with gate.slot()", slot), ("async with gates.admitted(None)", admitted)):
        took = await best_per_request(run, requests)
        print(f"  {name:33s} {took:7.3f} µs  (+{took - base:.3f} µs)")
    assert gate.in_use == 0 and gates.inflight.in_use == 0


class GcPauses:
    """The garbage collector's pauses, which show up as loop lag with many tasks alive."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)


class Ticker:
    """Sleeps TICK_S over and over and records how late each wake-up is."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            self.lags.append(loop.time() - due)


async def request(gate: Gate) -> None:
    async with gate.slot():
        await asyncio.sleep(0)


async def lag_under_load(waiters: int, batch: int) -> None:
    gate = Gate("bench", 1, wait_s=3600, max_queue=waiters)
    holder = gate.try_acquire()
    assert holder is not None
    ticker, gc_pauses = Ticker(), GcPauses()
    ticking = asyncio.create_task(ticker.run())
    rows = []

    async def phase(name: str, body: Callable[[], Awaitable[None]]) -> None:
        ticker.lags, gc_pauses.pauses = [], []
        started = time.perf_counter()
        await body()
        took = time.perf_counter() - started
        await asyncio.sleep(2 * TICK_S)  # the wake-up that was due during the last step is counted
        rows.append((name, took, ticker.lags, gc_pauses.pauses))

    tasks: list[asyncio.Task[None]] = []

    async def enqueue() -> None:
        tasks.clear()
        for start in range(0, waiters, batch):
            tasks.extend(asyncio.create_task(request(gate)) for _ in range(min(batch, waiters - start)))
            await asyncio.sleep(0)
        while gate.waiting < waiters:
            await asyncio.sleep(0)

    async def cancel_all() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)

    async def admit_all() -> None:
        holder.release()
        await asyncio.wait(tasks)

    await phase("idle", lambda: asyncio.sleep(0.2))
    await phase(f"{waiters} waiters queue", enqueue)
    await phase(f"{waiters} waiters cancelled at once", cancel_all)
    assert (gate.in_use, gate.waiting) == (1, 0)
    await enqueue()
    await phase(f"{waiters} waiters admitted one by one", admit_all)
    ticking.cancel()

    print(f"(b) event-loop lag: lateness of {TICK_S * 1000:g} ms sleeps; the garbage collector's longest pause")
    for name, took, lags, pauses in rows:
        ms = [lag * 1000 for lag in lags]
        print(f"  {name:36s} {took * 1000:6.1f} ms {len(ms):4d} ticks  lag p50 {pct(ms, 0.5):6.3f}  "
              f"p99 {pct(ms, 0.99):6.3f}  max {max(ms):6.3f} ms  gc {max(pauses, default=0) * 1000:6.3f} ms")

    exact = (gate.in_use, gate.waiting) == (0, 0)
    print("(c) the gate afterwards")
    print(f"  in_use {gate.in_use}  waiting {gate.waiting}  admitted {gate.admitted}  rejected {gate.rejected}  "
          f"line {len(gate._line)} futures  -> {'exact' if exact else 'WRONG'}")
    assert exact


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000, help="requests per overhead run")
    parser.add_argument("--waiters", type=int, default=10_000, help="waiters in line on the full gate")
    parser.add_argument("--batch", type=int, default=100, help="waiters arriving per turn of the loop")
    args = parser.parse_args()
    await overhead(args.requests)
    await lag_under_load(args.waiters, args.batch)


if __name__ == "__main__":
    asyncio.run(main())

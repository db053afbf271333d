"""The fleet's run-once jobs (usage polling, proactive refresh, request-log retention) run on the one replica
that holds the leader lease, and only while it holds it.

The holder renews the lease (`LEASE_S`) every `RENEW_S`; the others try to take it every `RETRY_S`, so when
the holder dies another replica runs the jobs within `LEASE_S + RETRY_S`. A holder that cannot renew in time
(database away, its claim refused) stops the jobs before its lease could have run out anywhere, clock skew
included. A lone replica simply always holds it. On shutdown the lease is given up for the next one at once.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from codexlb import log
from codexlb.store import DatabaseError
from codexlb.store.leases import CLOCK_SKEW_S, Leases

LEASE = "leader"
LEASE_S = 10.0
RENEW_S = 3.0
RETRY_S = 1.0
_STOP_CHECK_S = 0.5
_log = log.get("codexlb.leader")

Job = Callable[[], Awaitable[None]]


class Leader:
    def __init__(self, leases: Leases, jobs: dict[str, Job], *, lease_s: float = LEASE_S, renew_s: float = RENEW_S,
                 retry_s: float = RETRY_S) -> None:
        self._leases = leases
        self._jobs = jobs
        self._lease_s = lease_s
        self._renew_s = renew_s
        self._retry_s = retry_s
        self._running: list[asyncio.Task[None]] = []
        self.held = False  # whether this replica runs the jobs now

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        good_until = 0.0  # as this replica's loop counts time: when our lease may have run out for the others
        at_start = True
        try:
            while True:
                asked = loop.time()
                held = await self._claim(good_until - asked if self.held else self._lease_s)
                if held:
                    good_until = asked + self._lease_s - CLOCK_SKEW_S
                    if not self.held:
                        # At start, quietly: the first line a `serve` writes says where it listens.
                        self._start(taking_over=not at_start)
                elif self.held and (held is False or loop.time() >= good_until):
                    await self._stop("lost" if held is False else "not renewed in time")
                at_start = False
                await asyncio.sleep(self._renew_s if held else self._retry_s)
        finally:
            held = self.held
            await self._stop(None)
            if held:
                try:
                    async with asyncio.timeout(self._renew_s):
                        await self._leases.release(LEASE)
                except (DatabaseError, TimeoutError):
                    pass  # it runs out on its own

    async def _claim(self, within_s: float) -> bool | None:
        """Whether we hold the lease now; None when the database did not say in time."""
        # Not wait_for: on 3.11 it can swallow a cancellation that comes as the claim ends (shutdown hangs).
        try:
            async with asyncio.timeout(max(within_s, 0.0)):
                return await self._leases.claim(LEASE, self._lease_s)
        except (DatabaseError, TimeoutError) as exc:
            _log.warning("leader lease: no answer from the database", error=str(exc) or type(exc).__name__)
            return None

    def _start(self, *, taking_over: bool) -> None:
        (_log.info if taking_over else _log.debug)("leader lease taken: running the fleet's jobs here",
                                                   jobs=",".join(self._jobs))
        self._running = [asyncio.create_task(job(), name=f"codexlb-{name}") for name, job in self._jobs.items()]
        self.held = True

    async def _stop(self, why: str | None) -> None:
        """Cancel the jobs and wait until they have ended; `why` is logged (a lease lost), None is quiet."""
        if why is not None:
            _log.warning("leader lease lost: the fleet's jobs stop here", reason=why)
        self.held = False
        while self._running:
            for task in self._running:
                task.cancel()
            # Again until they end: a job can miss a cancellation (on 3.11, asyncio.wait_for deep in a database
            # call may swallow one that comes as the call ends), and must not outlive the lease.
            _, pending = await asyncio.wait(self._running, timeout=_STOP_CHECK_S)
            self._running = list(pending)

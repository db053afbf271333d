"""The fleet's run-once jobs run on exactly one live replica and move within seconds when it dies: three real
`codexlb serve` processes on one PostgreSQL database, the sim counting usage polls per account."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import time
from dataclasses import dataclass, field

from codexlb.leader import LEASE, LEASE_S, RETRY_S, Leader
from codexlb.store import Store
from tests.fleet.conftest import SECRET_KEY, import_accounts
from tests.serving import child_env

POLL_S = 0.5  # usage poll interval of the replicas
SLACK_S = 2.0  # a loaded machine: process scheduling, the poll itself


@dataclass
class Replica:
    proc: asyncio.subprocess.Process
    took: asyncio.Event = field(default_factory=asyncio.Event)
    took_at: float = 0.0
    reader: asyncio.Task | None = None

    async def read_log(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            try:
                event = json.loads(line).get("event", "")
            except ValueError:
                continue
            if event.startswith("leader lease taken") and not self.took.is_set():
                self.took_at = time.monotonic()
                self.took.set()

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()


async def start_replica(data, database_url: str, sim) -> Replica:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(data), "--log-format", "json",
        "--database-url", database_url, "--upstream-base-url", sim.upstream_base_url, "--auth-base-url", sim.url,
        "--usage-poll-interval-s", str(POLL_S), env=child_env(CODEXLB_SECRET_KEY=SECRET_KEY),
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    first = json.loads(await asyncio.wait_for(proc.stderr.readline(), 60))
    assert first["event"] == "listening", first
    replica = Replica(proc)
    replica.reader = asyncio.create_task(replica.read_log())
    return replica


async def polls_in(sim, seconds: float) -> dict[str, int]:
    """Usage polls per account the sim answered over the next `seconds` (a measuring window)."""
    before = dict(sim.backend.usage_polls)
    await asyncio.sleep(seconds)
    return {a.account_id: sim.backend.usage_polls[a.account_id] - before.get(a.account_id, 0)
            for a in sim.backend.accounts}


def one_poller(polls: dict[str, int], seconds: float) -> bool:
    """Every account polled, and no more often than one replica polls it (three would poll it thrice as often)."""
    return all(1 <= n <= seconds / POLL_S + 1 for n in polls.values())


async def next_leader(replicas: list[Replica], since: float, *,
                      before: tuple[Replica, ...] = ()) -> tuple[Replica, float]:
    """The replica (not one of the leaders `before`) that takes the lease, and how long after `since` it did."""
    waits = {asyncio.ensure_future(r.took.wait()): r for r in replicas if r not in before}
    done, pending = await asyncio.wait(waits, timeout=LEASE_S + RETRY_S + 20, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, "no replica took the leader lease"
    replica = waits[done.pop()]
    return replica, replica.took_at - since


async def test_jobs_run_on_exactly_one_replica_and_move_when_it_dies(pg_database, settings, sim, tmp_path):
    await import_accounts(dataclasses.replace(settings, database_url=pg_database, secret_key=SECRET_KEY), sim)
    replicas = list(await asyncio.gather(*(start_replica(tmp_path / f"r{n}", pg_database, sim) for n in range(3))))
    store = await Store.open(tmp_path / "observer", database_url=pg_database, secret_key=SECRET_KEY)
    try:
        polls = await polls_in(sim, 3.0)
        assert one_poller(polls, 3.0), polls
        # The lease was free at start: its first holder took it quietly (a `serve` says first where it listens).
        holder = await store.leases.holder(LEASE)
        assert holder is not None
        [first] = [r for r in replicas if str(r.proc.pid) == holder.split(":")[1]]
        assert not any(r.took.is_set() for r in replicas)  # nobody took it over

        killed_at = time.monotonic()
        await first.stop(signal.SIGKILL)
        second, after_kill = await next_leader(replicas, killed_at, before=(first,))
        polls = await polls_in(sim, 2.0)
        assert one_poller(polls, 2.0), polls

        stopped_at = time.monotonic()
        await second.stop()
        third, after_stop = await next_leader(replicas, stopped_at, before=(first, second))
        polls = await polls_in(sim, 2.0)
        assert one_poller(polls, 2.0), polls

        print(f"\nleader SIGKILLed: jobs ran again on another replica after {after_kill:.2f} s "
              f"(bound {LEASE_S + RETRY_S:g} s); leader stopped (SIGTERM): after {after_stop:.2f} s")
        assert after_kill <= LEASE_S + RETRY_S + SLACK_S
        assert after_stop <= RETRY_S + SLACK_S  # a leader that stops gives the lease up
    finally:
        await store.close()
        for replica in replicas:
            await replica.stop()


async def test_a_leader_that_loses_its_lease_stops_its_jobs_at_once(store):
    """Another replica holds the lease now (ours ran out while this one was stalled): our jobs stop at the next
    renewal, and start again only once the lease is ours again."""
    running = asyncio.Event()
    stopped = asyncio.Event()

    async def job() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    leader = Leader(store.leases, {"job": job}, lease_s=5.0, renew_s=0.05, retry_s=0.05)
    task = asyncio.create_task(leader.run())
    try:
        await asyncio.wait_for(running.wait(), 5)
        assert leader.held
        await store.db.execute("UPDATE leases SET owner = ?, until = ? WHERE name = ?",
                               ("other-replica", time.time() + 0.5, LEASE))
        await asyncio.wait_for(stopped.wait(), 5)
        assert not leader.held
        running.clear()
        await asyncio.wait_for(running.wait(), 5)  # the other's lease ran out: ours again
        assert await store.leases.holder(LEASE) == store.replica
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await store.leases.holder(LEASE) is None  # given up on the way out


async def test_a_job_that_misses_a_cancellation_still_stops_with_its_leader(store):
    """As a job may, when asyncio.wait_for in a database call swallows the cancellation (Python 3.11): the
    leader cancels it again, so a shutdown never hangs on it."""
    running = asyncio.Event()

    async def deaf_job() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # lost, as in wait_for
        await asyncio.Event().wait()

    leader = Leader(store.leases, {"deaf": deaf_job})
    task = asyncio.create_task(leader.run())
    await asyncio.wait_for(running.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done, "the leader did not stop"
    assert await store.leases.holder(LEASE) is None

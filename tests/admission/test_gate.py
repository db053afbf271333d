"""The admission gate on a real event loop: fast path, FIFO hand-over, bounded waits and lines, and the
instants where a cancellation and a release meet.

Tasks are synchronised with events and futures; `asyncio.sleep(0)` only lets the loop run what is
ready. A waiter task started with `create_task` calls `acquire` at the loop's next turn, in the order the
tasks were made.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from codexlb.admission.gate import RETRY_AFTER_CAP_S, Gate, GateFull, Slot

LONG = 3600.0  # a wait that never runs out within a test


def full_gate(capacity: int = 1, **kw) -> tuple[Gate, list[Slot]]:
    """A gate with every slot taken by the test."""
    kw = {"wait_s": LONG, "max_queue": 100_000, **kw}
    gate = Gate("t", capacity, **kw)
    held = [gate.try_acquire() for _ in range(capacity)]
    assert all(held)
    return gate, held


async def queue(gate: Gate, n: int, wait_s: float = LONG) -> list[asyncio.Task[Slot]]:
    """`n` waiters in line, in the order of the list."""
    before = gate.waiting
    tasks = [asyncio.create_task(gate.acquire(wait_s)) for _ in range(n)]
    await asyncio.sleep(0)
    assert gate.waiting == before + n
    return tasks


async def handed(task: asyncio.Task[Slot]) -> Slot:
    """The slot a waiter was handed, within a turn of the loop (not after its long wait)."""
    await asyncio.sleep(0)
    assert task.done()
    return task.result()


async def finish(tasks: list[asyncio.Task[Slot]]) -> list[object]:
    """Cancel what is still waiting and collect every outcome."""
    for task in tasks:
        task.cancel()
    return await asyncio.gather(*tasks, return_exceptions=True)


def assert_429(exc: BaseException, gate: Gate) -> int:
    assert isinstance(exc, GateFull)
    assert (exc.status, exc.type, exc.code) == (429, "rate_limit_error", gate.code)
    retry_after = int(exc.headers["Retry-After"])
    assert 1 <= retry_after <= RETRY_AFTER_CAP_S
    return retry_after


# --- fast path --------------------------------------------------------------------------------------------------


async def test_free_slots_are_taken_at_once_and_counted():
    gate = Gate("t", 2, wait_s=LONG, max_queue=0)
    a = await gate.acquire()
    b = await gate.acquire()
    assert a.held and b.held
    assert gate.snapshot() == {"capacity": 2, "in_use": 2, "waiting": 0, "admitted": 2, "rejected": 0}
    # Full: try_acquire says no without counting a rejection.
    assert gate.try_acquire() is None
    assert gate.rejected == 0
    a.release()
    assert gate.in_use == 1 and gate.has_room()
    assert gate.try_acquire() is not None
    assert gate.snapshot() == {"capacity": 2, "in_use": 2, "waiting": 0, "admitted": 3, "rejected": 0}


# --- FIFO -------------------------------------------------------------------------------------------------------


async def test_releases_admit_waiters_in_arrival_order_and_no_newcomer_overtakes():
    gate, (held,) = full_gate()
    waiters = await queue(gate, 20)
    for i in range(20):
        held.release()
        # The slot went to the head of the line without the count dropping: a newcomer in this instant
        # finds no room.
        assert gate.try_acquire() is None
        assert gate.in_use == 1
        held = await handed(waiters[i])
        assert [w.done() for w in waiters] == [True] * (i + 1) + [False] * (19 - i)
        assert gate.waiting == 19 - i
    held.release()
    assert gate.snapshot() == {"capacity": 1, "in_use": 0, "waiting": 0, "admitted": 21, "rejected": 0}


# --- bounded wait, bounded line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("gate_wait_s", "wait_s", "retry_after"), [
    (0.05, None, 1),     # nothing released yet: the gate's own wait, at least a second...
    (LONG, 0.05, 60),    # ...and at most a minute
])
async def test_a_wait_that_runs_out_is_a_429_with_retry_after(gate_wait_s, wait_s, retry_after):
    gate, _ = full_gate(wait_s=gate_wait_s, code="busy")
    # The guard only turns a wait that never ends into a failure; the 429 is due after 0.05 s.
    with pytest.raises(GateFull) as caught:
        async with asyncio.timeout(5):
            await gate.acquire(wait_s)
    assert assert_429(caught.value, gate) == retry_after
    assert "no slot freed within 0.05 s" in caught.value.message
    assert gate.snapshot() == {"capacity": 1, "in_use": 1, "waiting": 0, "admitted": 1, "rejected": 1}


@pytest.mark.parametrize("max_queue", [0, 2])
async def test_a_full_line_rejects_at_once(max_queue):
    gate, _ = full_gate(max_queue=max_queue)
    waiters = await queue(gate, max_queue)
    newcomer = asyncio.create_task(gate.acquire(LONG))
    await asyncio.sleep(0)
    # One turn of the loop and it is over: the newcomer never waited.
    assert newcomer.done()
    assert_429(newcomer.exception(), gate)
    assert "the waiting line is full" in newcomer.exception().message
    assert (gate.waiting, gate.rejected, gate.in_use) == (max_queue, 1, 1)
    await finish(waiters)


# --- cancellation -----------------------------------------------------------------------------------------------


async def test_a_cancelled_waiter_leaves_the_line_and_gets_no_slot():
    gate, (held,) = full_gate()
    (waiter,) = await queue(gate, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.snapshot() == {"capacity": 1, "in_use": 1, "waiting": 0, "admitted": 1, "rejected": 0}
    held.release()
    # Its dead turn is not handed the slot.
    assert gate.in_use == 0 and gate.has_room()


@pytest.mark.parametrize("next_waiter", [True, False])
async def test_a_waiter_handed_a_slot_as_it_is_cancelled_passes_the_slot_on(next_waiter):
    gate, (held,) = full_gate()
    waiters = await queue(gate, 2 if next_waiter else 1)
    # Same instant: the slot is handed to the first waiter, then it is cancelled before it ever runs.
    held.release()
    waiters[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    if next_waiter:
        # The cancelled waiter passed the slot on as it ended; the next one wakes with it.
        slot = await handed(waiters[1])
        assert slot.held
        assert (gate.in_use, gate.waiting) == (1, 0)
        slot.release()
    # Nothing leaked: the gate is empty again.
    assert (gate.in_use, gate.waiting) == (0, 0)
    assert gate.try_acquire() is not None


async def test_a_waiter_cancelled_as_its_wait_runs_out_leaves_with_neither_a_slot_nor_a_429():
    gate, (held,) = full_gate()
    (waiter,) = await queue(gate, 1, wait_s=0)
    turn = gate._line[0]
    for _ in range(10):  # its timer fires within a turn or two
        if turn.done():
            break
        await asyncio.sleep(0)
    # The wait has run out but the waiter has not run yet: cancel it in that instant.
    assert turn.done() and not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.snapshot() == {"capacity": 1, "in_use": 1, "waiting": 0, "admitted": 1, "rejected": 0}
    held.release()
    assert gate.in_use == 0


async def test_a_newcomer_beside_a_slot_freed_by_a_cancelled_waiter_is_admitted_at_once():
    gate, (held,) = full_gate()
    (waiter,) = await queue(gate, 1)
    # The newcomer's task is scheduled first, so it runs before the cancelled waiter's task does.
    newcomer = asyncio.create_task(gate.acquire(LONG))
    waiter.cancel()
    held.release()
    assert gate.in_use == 0
    # Admitted in the same turn of the loop, not after its hour-long wait.
    assert (await handed(newcomer)).held
    assert gate.snapshot() == {"capacity": 1, "in_use": 1, "waiting": 0, "admitted": 2, "rejected": 0}
    assert waiter.cancelled()


@pytest.mark.parametrize("release", [True, False], ids=["slot-free", "gate-full"])
async def test_a_cancelled_waiters_place_does_not_fill_the_line(release):
    # A cancelled waiter's place is free at once, not when its task next runs: a newcomer in between is
    # not refused "the waiting line is full" although the line's only waiter is gone, nor, with a release
    # in the same instant, although a slot is free. (Both happened before 04467bc.)
    gate, (held,) = full_gate(max_queue=1)
    (waiter,) = await queue(gate, 1)
    newcomer = asyncio.create_task(gate.acquire(LONG))  # runs before the cancelled waiter's task
    waiter.cancel()
    if release:
        held.release()
    await asyncio.sleep(0)
    refused = newcomer.done() and newcomer.exception()
    assert not refused, f"newcomer refused: {refused.message}"
    assert gate.rejected == 0
    if release:
        assert newcomer.result().held
        assert (gate.in_use, gate.waiting) == (1, 0)
    else:
        # It waits in the place the cancelled waiter left.
        assert (gate.in_use, gate.waiting) == (1, 1)
    await finish([newcomer])


async def test_many_waiters_cancelled_at_once_leave_exact_counts_and_a_compacted_line():
    gate, (held,) = full_gate()
    waiters = await queue(gate, 10_000)
    outcomes = await finish(waiters)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert gate.snapshot() == {"capacity": 1, "in_use": 1, "waiting": 0, "admitted": 1, "rejected": 0}
    # The dead turns were dropped, not kept until some release walks past them.
    assert len(gate._line) <= 64
    held.release()
    assert (gate.in_use, gate.waiting) == (0, 0)


# --- Slot and slot() --------------------------------------------------------------------------------------------


async def test_releasing_a_slot_twice_gives_back_one_slot():
    gate, (held,) = full_gate()
    first, second = await queue(gate, 2)
    held.release()
    held.release()
    assert not held.held
    # One hand-over only: the second waiter still waits.
    assert (gate.in_use, gate.waiting, gate.admitted) == (1, 1, 2)
    slot = await handed(first)
    assert not second.done()
    slot.release()
    slot.release()
    assert (gate.in_use, gate.waiting, gate.admitted) == (1, 0, 3)
    (await handed(second)).release()
    assert gate.in_use == 0


async def test_slot_context_releases_on_an_exception():
    gate = Gate("t", 1, wait_s=LONG, max_queue=0)
    with pytest.raises(RuntimeError):
        async with gate.slot() as slot:
            assert gate.in_use == 1
            raise RuntimeError("boom")
    assert not slot.held and gate.in_use == 0


async def test_slot_context_releases_when_the_holder_is_cancelled():
    gate = Gate("t", 1, wait_s=LONG, max_queue=0)
    inside, never = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with gate.slot():
            inside.set()
            await never.wait()

    task = asyncio.create_task(holder())
    await inside.wait()
    assert gate.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.in_use == 0


async def test_slot_context_cancelled_while_queued_releases_nobody_elses_slot():
    gate, (held,) = full_gate()
    entered = asyncio.Event()

    async def waiter() -> None:
        async with gate.slot():
            entered.set()

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    assert gate.waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not entered.is_set()
    assert (gate.in_use, gate.waiting) == (1, 0) and held.held


# --- Retry-After ------------------------------------------------------------------------------------------------


async def test_retry_after_grows_with_the_line_once_releases_are_seen(monkeypatch):
    # Retry-After is whole seconds, so releases microseconds apart would all round to 1: the test owns the
    # loop's clock and releases a second, then half seconds, apart.
    now = 0.0
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now)
    gate, (held,) = full_gate(max_queue=39)
    assert gate.retry_after() == 60  # no release seen yet: the hour-long wait, capped
    now += 1.0
    held.release()  # the first release only starts the clock
    held = gate.try_acquire()
    intervals = []
    for gap in (1.0, 0.5, 0.5, 0.5):
        now += gap
        held.release()
        held = gate.try_acquire()
        intervals.append(gate._interval_s)
    # Smoothed: the estimate moves toward the recent pace without jumping to it.
    assert intervals[0] == 1.0
    assert intervals == sorted(intervals, reverse=True) and len(set(intervals)) == 4 and intervals[-1] > 0.5

    waiters: list[asyncio.Task[Slot]] = []
    seen = []
    for n in (0, 3, 9, 39):
        waiters += await queue(gate, n - len(waiters))
        assert gate.retry_after() == math.ceil(gate._interval_s * (n + 1))
        seen.append(gate.retry_after())
    assert seen == sorted(set(seen))  # strictly longer with each longer line
    assert seen[0] == 1

    # A newcomer turned away from the full line is told the same.
    newcomer = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert assert_429(newcomer.exception(), gate) == seen[-1]
    # Silence since the last release reads as a slower drain: a second per slot, then two (capped).
    now += 1.0
    assert gate.retry_after() == 40
    now += 1.0
    assert gate.retry_after() == 60
    await finish(waiters)

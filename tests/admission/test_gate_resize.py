"""A gate resized in place (a reload): growing admits waiters at once, in line order; shrinking never takes a
held slot back, it admits no one until use is under the new capacity; cancelled or expired waiters leave
no slot behind. Synchronised as in test_gate.py."""

from __future__ import annotations

import asyncio

import pytest

from codexlb.admission.gate import GateFull
from tests.admission.test_gate import full_gate, handed, queue


async def test_growing_admits_waiters_at_once_in_line_order():
    gate, held = full_gate(1)
    waiters = await queue(gate, 3)
    gate.resize(3)
    first, second = await handed(waiters[0]), await handed(waiters[1])
    assert not waiters[2].done()
    assert (gate.in_use, gate.waiting) == (3, 1)
    for slot in (*held, first, second):
        slot.release()
    (await handed(waiters[2])).release()
    assert (gate.in_use, gate.waiting) == (0, 0)


async def test_shrinking_keeps_held_slots_and_admits_no_one_until_under():
    gate, held = full_gate(3)
    gate.resize(1)
    assert gate.in_use == 3 and gate.try_acquire() is None
    waiter = (await queue(gate, 1))[0]
    held[0].release()
    held[1].release()
    await asyncio.sleep(0)
    assert not waiter.done() and gate.in_use == 1  # the released slots are gone, not handed on
    held[2].release()
    slot = await handed(waiter)
    assert gate.in_use == 1
    slot.release()
    assert gate.in_use == 0 and gate.try_acquire() is not None


async def test_cancelled_and_expired_waiters_across_a_resize_leak_nothing():
    gate, held = full_gate(1)
    stay, cancelled = await queue(gate, 2)
    expiring = (await queue(gate, 1, wait_s=0.01))[0]
    cancelled.cancel()
    with pytest.raises(GateFull):
        await expiring
    gate.resize(4)
    slot = await handed(stay)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert (gate.in_use, gate.waiting) == (2, 0)
    gate.resize(1)
    slot.release()
    held[0].release()
    assert (gate.in_use, gate.waiting) == (0, 0)


async def test_a_waiter_cancelled_as_growth_hands_it_a_slot_gives_it_back():
    gate, held = full_gate(1)
    waiter = (await queue(gate, 1))[0]
    gate.resize(2)  # its turn is done with a slot ...
    waiter.cancel()  # ... and it is cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.in_use == 1
    held[0].release()
    assert gate.in_use == 0


async def test_on_free_fires_when_growth_makes_room():
    gate, _held = full_gate(1)
    freed = []
    gate.on_free = lambda: freed.append(gate.in_use)
    gate.resize(2)
    assert freed == [1] and gate.has_room()


async def test_resize_sets_the_bounds_of_later_waits():
    gate, _held = full_gate(1, max_queue=5)
    gate.resize(1, wait_s=0.01, max_queue=1)
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    with pytest.raises(GateFull, match="the waiting line is full"):
        await gate.acquire()
    with pytest.raises(GateFull, match="no slot freed within 0.01 s"):
        await waiter
    with pytest.raises(ValueError):
        gate.resize(0)

"""The gate against a pure model, over random interleavings of arrivals, cancellations, releases (some
twice), waits running out and partial turns of the event loop.

The model is the gate as it should be: a count of slots in use and one line of live waiters, first come
first served. Races turn on which waiter's code has run, so the model also keeps the loop's run queue as
far as the waiters go: every wake-up an action schedules is queued in the order asyncio runs it, and the
test advances the model exactly as far as it lets the real loop run. Each example owns a fresh loop
whose clock is the model's, so a wait runs out exactly when the test moves the clock past it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from codexlb.admission.gate import RETRY_AFTER_CAP_S, Gate, GateFull, Slot

# Where the test's own coroutine resumes from `sleep(0)` in the run queue.
DRIVER = ("driver", -1)
# Waiter states once its task is done. Before that: new, new+cancel (cancelled before it ran), queued,
# cancelled (its turn cancelled, its task not yet run), expired (likewise, its wait ran out), handed (a
# slot handed over, its task not yet run), and expired+cancel, handed+cancel.
DONE = {"held", "released", "rejected", "gone"}


class Model:
    def __init__(self, capacity: int, max_queue: int) -> None:
        self.capacity, self.max_queue = capacity, max_queue
        self.now = 0.0
        self.in_use = 0
        self.admitted = 0
        self.rejected = 0
        self.line: list[int] = []  # waiters whose turn is open, first come first
        self.state: list[str] = []  # by waiter, in arrival order
        self.wait_s: list[float] = []
        self.deadline: dict[int, float] = {}
        self.ready: deque[tuple[str, int]] = deque()  # what the loop will run, in order
        self.got: list[int] = []  # waiters in the order their code got a slot

    # What the test does; none of it runs a waiter.

    def arrive(self, wait_s: float) -> int:
        t = len(self.state)
        self.state.append("new")
        self.wait_s.append(wait_s)
        self.ready.append(("start", t))
        return t

    def cancel(self, t: int) -> None:
        state = self.state[t]
        if state == "queued":
            # Task.cancel cancels the turn the task awaits, which schedules the task.
            self.line.remove(t)
            self.ready.append(("wake", t))
        self.state[t] = {"new": "new+cancel", "queued": "cancelled", "handed": "handed+cancel",
                         "expired": "expired+cancel"}.get(state, state)

    def release(self, t: int) -> None:
        self.state[t] = "released"
        self._give_back()

    def run_to_driver(self, due_timers: bool = False) -> None:
        """Run what the loop runs before the test resumes from `sleep(0)`. Timers that came due since the
        loop last ran (it ran dry) fire in the next turn, after the test's own wake-up."""
        self.ready.append(DRIVER)
        if due_timers:
            due = sorted((t for t in self.line if self.deadline[t] <= self.now), key=self.deadline.__getitem__)
            self.ready.extend(("expire", t) for t in due)
        while (item := self.ready.popleft()) != DRIVER:
            getattr(self, "_" + item[0])(item[1])

    # What the loop runs.

    def _start(self, t: int) -> None:
        if self.state[t] == "new+cancel":
            self.state[t] = "gone"
        elif self.in_use < self.capacity and not self.line:
            self.in_use += 1
            self.admitted += 1
            self._hold(t)
        elif len(self.line) >= self.max_queue:
            self.state[t] = "rejected"
            self.rejected += 1
        else:
            self.line.append(t)
            self.state[t] = "queued"
            self.deadline[t] = self.now + self.wait_s[t]

    def _wake(self, t: int) -> None:
        state = self.state[t]
        if state == "handed":
            self._hold(t)
        elif state == "handed+cancel":
            self.state[t] = "gone"
            self._give_back()
        elif state in ("cancelled", "expired+cancel"):
            # Cancelled, even in the instant its wait ran out: it leaves with no 429 to count.
            self.state[t] = "gone"
        else:
            assert state == "expired"
            self.state[t] = "rejected"
            self.rejected += 1

    def _expire(self, t: int) -> None:
        if self.state[t] == "queued":
            self.line.remove(t)
            self.state[t] = "expired"
            self.ready.append(("wake", t))

    def _give_back(self) -> None:
        if self.line:
            t = self.line.pop(0)
            self.state[t] = "handed"
            self.admitted += 1
            self.ready.append(("wake", t))
        else:
            self.in_use -= 1

    def _hold(self, t: int) -> None:
        self.state[t] = "held"
        self.got.append(t)


async def drive(gate: Gate, model: Model, ops: list[tuple[str, int, bool]]) -> None:
    tasks: list[asyncio.Task[None]] = []
    slots: dict[int, Slot] = {}
    refused: dict[int, GateFull] = {}
    got: list[int] = []

    async def waiter(t: int, wait_s: float) -> None:
        try:
            slots[t] = await gate.acquire(wait_s)
            got.append(t)
        except GateFull as exc:
            refused[t] = exc

    async def turn(due_timers: bool = False) -> None:
        await asyncio.sleep(0)
        model.run_to_driver(due_timers)

    async def settle() -> None:
        while model.ready:
            await turn()

    def check() -> None:
        assert gate.in_use == model.in_use <= gate.capacity
        assert (gate.admitted, gate.rejected) == (model.admitted, model.rejected)
        assert got == model.got
        if model.ready:
            return  # the rest holds once the loop has run what it owes
        assert gate.waiting == len(model.line)
        assert gate.waiting == 0 or gate.in_use == gate.capacity
        assert gate.in_use == sum(slot.held for slot in slots.values())
        for t, task in enumerate(tasks):
            state = model.state[t]
            assert task.done() == (state in DONE), (t, state)
            assert (t in slots and slots[t].held) == (state == "held"), (t, state)
            assert task.cancelled() == (state == "gone"), (t, state)
            if state == "rejected":
                assert refused[t].status == 429
                assert 1 <= int(refused[t].headers["Retry-After"]) <= RETRY_AFTER_CAP_S
        # FIFO without the model: no one still waiting was overtaken by a later arrival.
        waiting = [t for t, task in enumerate(tasks) if not task.done()]
        assert not waiting or all(t < waiting[0] for t in got)

    for op, n, twice in ops:
        if op == "arrive":
            # 1 to 4 s, plus a fraction of its own: no two waits run out at the same instant.
            wait_s = 1 + n % 4 + len(tasks) / 1024
            tasks.append(asyncio.create_task(waiter(model.arrive(wait_s), wait_s)))
        elif op == "cancel":
            live = [t for t, state in enumerate(model.state) if state not in DONE]
            if live:
                t = live[n % len(live)]
                model.cancel(t)
                tasks[t].cancel()
        elif op == "release":
            held = [t for t, state in enumerate(model.state) if state == "held"]
            if held:
                t = held[n % len(held)]
                model.release(t)
                for _ in range(1 + twice):
                    slots[t].release()
        elif op == "turns":
            for _ in range(1 + n % 3):
                await turn()
        else:  # "clock": once the loop has run dry, move its clock on 1 to 3 s
            await settle()
            model.now += 1 + n % 3
            await turn(due_timers=True)
        check()

    # The end: everyone still waiting gives up, every slot goes back.
    for t, state in enumerate(model.state):
        if state not in DONE:
            model.cancel(t)
            tasks[t].cancel()
    await settle()
    check()
    for t, state in enumerate(model.state):
        if state == "held":
            model.release(t)
            slots[t].release()
    check()
    assert (gate.in_use, gate.waiting) == (0, 0)


# An action, a number that picks its subject or its size, and whether a release is repeated. Arrivals,
# releases and turns of the loop come more often than the rest: the line must fill and drain for the
# races to happen. Turns come first so that a shrunk example is padded with them, which change nothing.
OPS = st.lists(st.tuples(
    st.sampled_from(["turns"] * 2 + ["arrive"] * 3 + ["release"] * 2 + ["cancel", "clock"]),
    st.integers(0, 63),
    st.booleans(),
), min_size=20, max_size=80)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 3), max_queue=st.integers(0, 30), ops=OPS)
def test_gate_matches_the_model(capacity: int, max_queue: int, ops: list[tuple[str, int, bool]]) -> None:
    model = Model(capacity, max_queue)
    loop = asyncio.new_event_loop()
    loop.time = lambda: model.now  # the loop's clock is the model's
    try:
        loop.run_until_complete(drive(Gate("model", capacity, wait_s=1, max_queue=max_queue), model, ops))
    finally:
        # After a failed check, waiters are left behind: end them before the loop goes.
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
        loop.close()

"""A gate: at most `capacity` slots in use; a caller that finds it full waits in line (FIFO) for a
bounded time, then is turned away with a 429 that says when to come back.

Exactness is the point. A slot is taken in one place (`acquire`) and given back in one place
(`Slot.release`, idempotent), and the hand-over from a releasing caller to the first waiter happens
without the count dropping, so no arrival can jump the line. A waiter that is cancelled or whose wait
runs out leaves its future done; release skips done futures, and a waiter that was handed a slot in the
same instant it was cancelled gives it straight back. Every operation is O(1) (amortized): no waiter is
searched for, none is shielded.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from types import TracebackType
from typing import Callable

from codexlb.errors import APIError

# Retry-After is an estimate; past a minute it says more about the estimate than about the gate.
RETRY_AFTER_CAP_S = 60
# Weight of the newest interval between two releases in the drain-rate estimate.
_EWMA = 0.2


class GateFull(APIError):
    """The 429 a caller gets when the line is too long or its wait ran out."""

    def __init__(self, gate: "Gate", why: str, retry_after: int) -> None:
        super().__init__(429, f"codexlb is at capacity on its {gate.label} ({gate.in_use} of {gate.capacity} in use, "
                         f"{gate.waiting} waiting): {why}. Retry in {retry_after} s.",
                         code=gate.code, type="rate_limit_error", headers={"Retry-After": str(retry_after)})
        self.gate = gate


class _Expired(Exception):
    """Set on a waiter's future by its timer: the wait ran out before a slot came."""


class Slot:
    """One unit of a gate's capacity. `release` gives it back, once, however often it is called."""

    __slots__ = ("_gate",)

    def __init__(self, gate: "Gate") -> None:
        self._gate: Gate | None = gate

    @property
    def held(self) -> bool:
        return self._gate is not None

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._give_back()

    async def __aenter__(self) -> "Slot":
        return self

    async def __aexit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                        _tb: TracebackType | None) -> None:
        self.release()


class _Entry:
    """`async with gate.slot():` takes a slot on entry and gives it back on exit, cancellation included."""

    __slots__ = ("_gate", "_wait_s", "_slot")

    def __init__(self, gate: "Gate", wait_s: float | None) -> None:
        self._gate, self._wait_s, self._slot = gate, wait_s, None

    async def __aenter__(self) -> Slot:
        self._slot = await self._gate.acquire(self._wait_s)
        return self._slot

    async def __aexit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                        _tb: TracebackType | None) -> None:
        if self._slot is not None:
            self._slot.release()


class Gate:
    def __init__(self, name: str, capacity: int, *, wait_s: float, max_queue: int, code: str = "proxy_overloaded",
                 label: str | None = None) -> None:
        if capacity < 1 or max_queue < 0 or wait_s < 0:
            raise ValueError("a gate needs capacity >= 1, max_queue >= 0 and wait_s >= 0")
        self._name = name
        self._label = label or f"{name} gate"
        self.capacity = capacity
        self.wait_s = wait_s
        self.max_queue = max_queue
        self.code = code
        self.in_use = 0
        self.waiting = 0
        self.admitted = 0
        self.rejected = 0
        self._line: deque[asyncio.Future[None]] = deque()
        self._last_release: float | None = None
        self._interval_s: float | None = None  # smoothed time between two releases
        # Called when a slot comes free with nobody in this gate's line to take it.
        self.on_free: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def label(self) -> str:
        return self._label

    def has_room(self) -> bool:
        return self.in_use < self.capacity and not self.waiting

    def try_acquire(self) -> Slot | None:
        """A slot now, or None; never waits and never counts a rejection."""
        if not self.has_room():
            return None
        self.in_use += 1
        self.admitted += 1
        return Slot(self)

    def slot(self, wait_s: float | None = None) -> _Entry:
        return _Entry(self, wait_s)

    async def acquire(self, wait_s: float | None = None) -> Slot:
        """A slot, waiting in line at most `wait_s` (default: the gate's); raises GateFull past that."""
        slot = self.try_acquire()
        if slot is not None:
            return slot
        if self.waiting >= self.max_queue:
            raise self.reject("the waiting line is full")
        wait_s = self.wait_s if wait_s is None else wait_s
        loop = asyncio.get_running_loop()
        turn = _Turn(self, loop)
        self._line.append(turn)
        self.waiting += 1
        timer = loop.call_later(wait_s, turn.expire)
        try:
            await turn
        except _Expired:
            raise self.reject(f"no slot freed within {wait_s:g} s") from None
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                # Handed a slot in the same instant we were cancelled: pass it on.
                self._give_back()
            raise
        finally:
            timer.cancel()
        return Slot(self)

    def retry_after(self) -> int:
        """Seconds until a newcomer would likely get a slot, from how fast slots have been coming free."""
        if self._interval_s is None or self._last_release is None:
            return max(1, min(RETRY_AFTER_CAP_S, math.ceil(self.wait_s)))
        since = asyncio.get_running_loop().time() - self._last_release
        interval = max(self._interval_s, since)
        return max(1, min(RETRY_AFTER_CAP_S, math.ceil(interval * (self.waiting + 1))))

    def snapshot(self) -> dict[str, int]:
        return {"capacity": self.capacity, "in_use": self.in_use, "waiting": self.waiting,
                "admitted": self.admitted, "rejected": self.rejected}

    def reject(self, why: str) -> GateFull:
        """The 429 for a caller turned away (counted as a rejection)."""
        self.rejected += 1
        return GateFull(self, why, self.retry_after())

    def resize(self, capacity: int, *, wait_s: float | None = None, max_queue: int | None = None) -> None:
        """New bounds, in place (a reload). More capacity admits waiters at once; less never takes a held slot
        back: the gate admits no one until its use is under the new capacity. `wait_s` and `max_queue` bound
        the waits that begin from now on."""
        if capacity < 1 or (max_queue is not None and max_queue < 0) or (wait_s is not None and wait_s < 0):
            raise ValueError("a gate needs capacity >= 1, max_queue >= 0 and wait_s >= 0")
        self.capacity = capacity
        self.wait_s = self.wait_s if wait_s is None else wait_s
        self.max_queue = self.max_queue if max_queue is None else max_queue
        self._admit_waiting()
        if self.in_use < self.capacity and self.on_free is not None:
            self.on_free()

    def _give_back(self) -> None:
        self._note_release()
        # The count drops and the first waiter takes the slot in one step, so no newcomer overtakes the line;
        # over capacity (shrunk by a reload) nobody takes it.
        self.in_use -= 1
        self._admit_waiting()
        if self.in_use < self.capacity and self.on_free is not None:
            self.on_free()

    def _admit_waiting(self) -> None:
        """Hand free slots to waiters, first in line first."""
        while self.in_use < self.capacity and self._line:
            turn = self._line.popleft()
            if not turn.done():
                self.in_use += 1
                self.waiting -= 1
                self.admitted += 1
                turn.set_result(None)

    def _note_release(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._last_release is not None:
            gap = now - self._last_release
            self._interval_s = gap if self._interval_s is None else _EWMA * gap + (1 - _EWMA) * self._interval_s
        self._last_release = now

    def _left(self) -> None:
        """A waiter left the line without a slot (cancelled, or its wait ran out), this very instant."""
        self.waiting -= 1
        line = self._line
        if len(line) > 64 and len(line) > 2 * self.waiting:
            # Drop the turns of waiters that left once they outnumber live ones: amortized O(1).
            self._line = deque(turn for turn in line if not turn.done())
        # The leaver may have been all that kept a free slot from the line (a release found only it).
        self._admit_waiting()


class _Turn(asyncio.Future[None]):
    """A waiter's place in line. Its gate learns of a cancellation or an expired wait the moment it
    happens, not when the waiter's task next runs: `waiting` is exact at every instant."""

    def __init__(self, gate: Gate, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._gate = gate

    def cancel(self, msg: object = None) -> bool:
        if not super().cancel(msg):
            return False
        self._gate._left()
        return True

    def expire(self) -> None:
        if not self.done():
            self.set_exception(_Expired())
            self._gate._left()

"""A bound on the silence of a stream, with one timer for the whole stream.

`async with asyncio.timeout(idle)` around each read makes a timer and cancels it again for every read: a
heap entry per event, and cancelled entries pile up in the loop's heap until it is cleaned, so with
thousands of paced streams every new timer is pushed into a heap of thousands. Here a read only notes when
it began and ended; the one timer, when it fires, looks whether the read still waiting has really waited
`idle_s`, and is otherwise set again for when it would have.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class IdleTimeout:
    """`async with IdleTimeout(idle_s) as idle:` around a stream's loop; `idle.waiting()` before each read
    and `idle.heard()` after it. A read that waits `idle_s` ends in TimeoutError out of the block (its task
    is cancelled, as by `asyncio.timeout`); the time between reads (the caller writing what it read) does
    not count."""

    __slots__ = ("_idle_s", "_loop", "_since", "_waiting", "_timeout", "_timer")

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._since = 0.0
        self._waiting = False
        self._timeout = asyncio.timeout(None)
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> IdleTimeout:
        self._loop = asyncio.get_running_loop()
        await self._timeout.__aenter__()
        return self

    def waiting(self) -> None:
        self._since, self._waiting = self._loop.time(), True
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._idle_s, self._look)

    def heard(self) -> None:
        self._waiting = False

    def _look(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # the next read sets it again
        due = self._since + self._idle_s
        if due <= self._loop.time():
            self._timeout.reschedule(due)  # expires now
        else:
            self._timer = self._loop.call_at(due, self._look)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return await self._timeout.__aexit__(kind, exc, tb)

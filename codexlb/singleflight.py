"""One piece of work per key, however many callers ask for it at once.

Each caller waits on a future of its own, so a caller that is cancelled leaves
the shared work, and every other caller, untouched (no shield per waiter).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[T]] = {}

    def running(self, key: Hashable) -> bool:
        return key in self._running

    async def do(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(lambda _t: self._running.pop(key, None))
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def relay(done: asyncio.Task[T]) -> None:
            if waiter.done():
                return
            if done.cancelled():
                waiter.cancel()
            elif done.exception() is not None:
                waiter.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                waiter.set_result(done.result())

        task.add_done_callback(relay)
        try:
            return await waiter
        finally:
            task.remove_done_callback(relay)

    async def close(self) -> None:
        """Cancel all work still running (at shutdown)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""Log lines leave the event loop through a queue; one thread writes them to the OS, in batches.

A write to stderr blocks when its reader is slow (journald under pressure, a full pipe to `tee`),
and a blocked write on the loop stalls every request. Here the loop only queues the line: a slow
sink delays log lines, never requests. Past `max_waiting` queued lines, new ones are dropped and
counted, and the count is written as soon as the sink takes lines again.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from typing import Callable, TextIO

_STOP = object()
# After a line wakes the writer, it waits this long for more before writing: one wake-up and one write per
# burst, not per line. Waking a thread costs the event loop the GIL handoffs and context switches; per
# request line that was 9% of the plain path's CPU at 2,000 requests a second.
_LINGER_S = 0.02
_BATCH = 1024  # lines a write takes at most
# Lines still queued at exit get this long to be written; a sink that takes none would hold exit forever.
_EXIT_WAIT_S = 2.0


class LineSink:
    """A write-only text file for loggers (`write`, `flush`) whose writes never block the caller."""

    def __init__(self, stream: TextIO, *, max_waiting: int = 10_000,
                 on_drop: Callable[[int], None] | None = None) -> None:
        """`on_drop(n)` runs on the writer thread once the sink took lines again after `n` were dropped;
        what it logs is never dropped."""
        self.stream = stream
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._max_waiting = max_waiting
        self._on_drop = on_drop
        self._dropped = 0
        self._dropped_lock = threading.Lock()  # lines are logged from several threads
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="codexlb-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def write(self, text: str) -> int:
        if self._closed:
            # Late lines (other exit handlers) are written as they come, unless the writer thread is still
            # stuck on a sink that takes nothing: then they would hang the exit too, and are dropped.
            if not self._thread.is_alive():
                self._write(text)
        # A full queue drops lines, but not the writer thread's own (its drop reports).
        elif self._queue.qsize() >= self._max_waiting and threading.get_ident() != self._thread.ident:
            with self._dropped_lock:
                self._dropped += 1
        else:
            self._queue.put(text)
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the writer thread flushes after each batch (see `drain` to wait for it)."""

    def drain(self, wait_s: float = _EXIT_WAIT_S) -> bool:
        """Wait (at most `wait_s`) until every line queued so far is written; False if it was not."""
        if self._closed:
            return True
        written = threading.Event()
        self._queue.put(written)
        return written.wait(wait_s)

    def close(self, wait_s: float = _EXIT_WAIT_S) -> None:
        """Write what is queued (waiting at most `wait_s`) and stop the thread."""
        atexit.unregister(self.close)
        if not self._closed:
            self._queue.put(_STOP)
            self._thread.join(wait_s)
            self._closed = True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the sink is gone (closed pipe or file): nothing left to tell

    def _run(self) -> None:
        while True:
            batch = self._take(block=True)
            if len(batch) < _BATCH and _STOP not in batch:  # (a full batch: lines are waiting already)
                time.sleep(_LINGER_S)
                batch += self._take(block=False)
            stop = _STOP in batch
            self._write_batch(batch)
            with self._dropped_lock:
                dropped, self._dropped = self._dropped, 0
            if dropped and self._on_drop is not None:
                self._on_drop(dropped)
            if stop:  # the drop report and whatever else came in since, then done
                self._write_batch(self._take(block=False))
                return

    def _write_batch(self, batch: list[object]) -> None:
        """Lines are written; a `drain` waiting on this batch (its Event) is told."""
        self._write("".join(item for item in batch if isinstance(item, str)))
        for item in batch:
            if isinstance(item, threading.Event):
                item.set()

    def _take(self, *, block: bool) -> list[object]:
        batch = [self._queue.get()] if block else []
        try:
            while len(batch) < _BATCH:
                batch.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return batch

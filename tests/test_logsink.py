"""A slow log reader delays log lines, never the code that logs; what it cannot take is counted, not lost silently."""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Callable

from codexlb import log
from codexlb.logsink import LineSink

LINE = "x" * 1000 + "\n"


class StalledPipe:
    """A pipe (64 KiB) nobody reads until the logging into it has returned, as it must: a direct write of
    more than the pipe holds would block there."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.out = os.fdopen(write_fd, "w")
        self._received, self._reading = bytearray(), threading.Event()
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True)  # a failed test must not hang
        self._reader.start()

    def _read(self, fd: int) -> None:
        self._reading.wait()
        with os.fdopen(fd, "rb") as pipe:
            while chunk := pipe.read(65536):
                self._received.extend(chunk)

    def read_after(self, log_lines: Callable[[], None], close_sink: Callable[[], None]) -> list[str]:
        """Run `log_lines` while the pipe is not read, then read it, close the sink, and return what came out."""
        logged = threading.Event()
        threading.Thread(target=lambda: (log_lines(), logged.set()), daemon=True).start()
        try:
            assert logged.wait(10), "logging blocked on a stalled reader"
        finally:
            self._reading.set()
            close_sink()  # what the sink still holds is written
        self.out.close()
        self._reader.join(10)
        return self._received.decode().splitlines()


def test_logging_into_a_stalled_pipe_returns_and_every_line_is_written_or_counted():
    pipe, drops = StalledPipe(), []
    sink = LineSink(pipe.out, max_waiting=100, on_drop=drops.append)
    lines = pipe.read_after(lambda: [sink.write(LINE) for _ in range(2000)], lambda: sink.close(wait_s=10))
    assert set(lines) == {LINE.strip()}
    assert sum(drops) > 0
    assert len(lines) + sum(drops) == 2000


def test_the_drop_is_reported_in_the_log_itself():
    pipe = StalledPipe()
    log.configure("info", "json", pipe.out)

    def log_many() -> None:
        logger = log.get("codexlb.test")
        for i in range(12_000):  # more than the sink holds while the pipe is not read
            logger.info("filler", i=i, pad=LINE)

    records = [json.loads(line) for line in pipe.read_after(log_many, lambda: log.configure("info", "json", io.StringIO()))]
    fillers = sum(1 for r in records if r["event"] == "filler")
    reports = [r for r in records if r["event"] == "log lines dropped"]
    assert reports and reports[-1]["level"] == "warning"
    assert fillers + sum(r["count"] for r in reports) == 12_000


def test_drain_returns_once_the_lines_so_far_are_written():
    pipe, drained = StalledPipe(), []
    sink = LineSink(pipe.out)

    def log_and_drain() -> None:
        for _ in range(200):
            sink.write(LINE)
        drained.append(sink.drain(0.05))  # the pipe is not read: they cannot all be out

    def drain_and_close() -> None:
        drained.append(sink.drain(10))
        sink.close()

    lines = pipe.read_after(log_and_drain, drain_and_close)
    assert drained == [False, True]
    assert len(lines) == 200


def test_a_sink_that_takes_nothing_cannot_hold_the_exit():
    pipe = StalledPipe()
    sink = LineSink(pipe.out)

    def log_then_exit() -> None:
        for _ in range(200):
            sink.write(LINE)  # more than the pipe holds: the writer thread is stuck in its write
        sink.close(wait_s=0.05)  # what exit does, bounded
        sink.write("late\n")  # an exit handler's line: dropped, not written on this thread

    lines = pipe.read_after(log_then_exit, lambda: None)
    assert "late" not in lines and lines

"""A slow log reader delays log lines, never the code that logs; what it cannot take is counted, not lost silently."""

from __future__ import annotations

import io
import json
import os
import threading

from codexlb import log
from codexlb.logsink import LineSink

LINE = "x" * 1000 + "\n"


def _reader(fd: int, into: bytearray, started: threading.Event) -> threading.Thread:
    def run() -> None:
        started.wait()
        with os.fdopen(fd, "rb") as pipe:
            while chunk := pipe.read(65536):
                into.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)  # a failed test must not hang on it
    thread.start()
    return thread


def test_logging_into_a_stalled_pipe_returns_and_every_line_is_written_or_counted():
    read_fd, write_fd = os.pipe()
    out = os.fdopen(write_fd, "w")
    drops: list[int] = []
    sink = LineSink(out, max_waiting=100, on_drop=drops.append)
    received, reading = bytearray(), threading.Event()
    reader = _reader(read_fd, received, reading)
    logged = threading.Event()

    def log_many() -> None:
        for _ in range(2000):
            sink.write(LINE)  # 2 MB into a 64 KiB pipe nobody reads yet: a direct write would block here
        logged.set()

    threading.Thread(target=log_many, daemon=True).start()
    try:
        assert logged.wait(10), "logging blocked on a stalled reader"
    finally:
        reading.set()
    sink.close(wait_s=10)
    out.close()
    reader.join(10)
    lines = received.decode().splitlines()
    assert set(lines) == {LINE.strip()}
    assert sum(drops) > 0
    assert len(lines) + sum(drops) == 2000


def test_the_drop_is_reported_in_the_log_itself():
    read_fd, write_fd = os.pipe()
    out = os.fdopen(write_fd, "w")
    received, reading = bytearray(), threading.Event()
    reader = _reader(read_fd, received, reading)
    log.configure("info", "json", out)
    logged = threading.Event()

    def log_many() -> None:
        logger = log.get("codexlb.test")
        for i in range(12_000):  # more than the sink holds while the pipe is not read
            logger.info("filler", i=i, pad=LINE)
        logged.set()

    threading.Thread(target=log_many, daemon=True).start()
    try:
        assert logged.wait(10), "logging blocked on a stalled reader"
    finally:
        reading.set()
        log.configure("info", "json", io.StringIO())  # closes the sink: what it holds is written
    out.close()
    reader.join(10)
    records = [json.loads(line) for line in received.decode().splitlines()]
    fillers = sum(1 for r in records if r["event"] == "filler")
    reports = [r for r in records if r["event"] == "log lines dropped"]
    assert reports and reports[-1]["level"] == "warning"
    assert fillers + sum(r["count"] for r in reports) == 12_000

"""Which server holds a data dir: a kernel lock it keeps while it runs, and a record of where it listens.

A server takes `server.lock` (flock, released by the kernel however the process ends) before it touches the
data dir, and writes `server.json` (pid, the address it bound, start time) once it listens; both go at a
clean exit. The lock, not the record, says whether a server runs: a record left by a killed server is stale
as soon as its lock is free. Who may share a data dir is decided here only (replicas on one PostgreSQL
database are a later case). Every function blocks: call it off the event loop.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "server.lock"
RECORD_FILE = "server.json"
# A command checking the lock holds it for a moment; a server starting then waits that long, no more.
ACQUIRE_WAIT_S = 1.0


@dataclass(frozen=True)
class Holder:
    """The server holding a data dir; no address while it is still starting."""

    pid: int | None
    host: str | None = None
    port: int | None = None
    started_at: float | None = None
    # The last upgrade this server tried that failed (it went on serving): when, and why.
    upgrade_failed_at: float | None = None
    upgrade_error: str | None = None
    # The last reload (SIGHUP): when, and what came of it (`Hold.reloaded`).
    reloaded_at: float | None = None
    reload: dict | None = None

    @property
    def url(self) -> str | None:
        """The address to reach it on from this machine."""
        if self.host is None or self.port is None:
            return None
        # A server listening on every address is reachable, and admin-allowed, on loopback.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid else "pid unknown"
        return f"{pid} at {self.url}" if self.url else f"{pid}, still starting"


class HeldError(Exception):
    """Another server holds the data dir; the message names it."""

    def __init__(self, data_dir: Path, holder: Holder) -> None:
        super().__init__(f"data dir {data_dir} is in use by another codexlb server ({holder.describe()}): "
                         "stop it, or give this one its own --data-dir")
        self.holder = holder


class Hold:
    """This process's hold on a data dir, from `acquire` to `release`."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        """`fd`: the lock, open and locked (by `acquire`, or handed over by the server upgraded from)."""
        self.data_dir, self._fd = data_dir, fd
        self._record: dict[str, object] = {}

    @property
    def fd(self) -> int:
        return self._fd

    def listening(self, host: str, port: int, started_at: float) -> None:
        """Record the address bound (the real port, also for port 0), whole or not at all."""
        self._record = {"pid": os.getpid(), "host": host, "port": port, "started_at": started_at}
        self._write()

    def upgrade_failed(self, error: str) -> None:
        """Record an upgrade that failed, for `codexlb upgrade` to tell."""
        self._record.update(upgrade_failed_at=time.time(), upgrade_error=error)
        self._write()

    def reloaded(self, outcome: dict) -> None:
        """Record what the last reload did, for `codexlb reload` to tell."""
        self._record.update(reloaded_at=time.time(), reload=outcome)
        self._write()

    def _write(self) -> None:
        lock_pid = str(os.getpid()).encode()
        os.pwrite(self._fd, lock_pid.ljust(16), 0)  # the lock names its holder (handed over: the new one)
        record = self._record
        path = self.data_dir / RECORD_FILE
        tmp = path.with_name(f".{RECORD_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)

    def hand_over(self) -> None:
        """Let go of the lock without removing anything: another process holds it too (the new server this one
        handed over to, or the old one, when this new one failed to start)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def release(self) -> None:
        """Remove the record and the lock, then let the lock go."""
        if self._fd < 0:
            return
        (self.data_dir / RECORD_FILE).unlink(missing_ok=True)
        # Unlinked while still held: whoever opened the old file sees it is gone once it gets the lock.
        (self.data_dir / LOCK_FILE).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def acquire(data_dir: Path, wait_s: float = ACQUIRE_WAIT_S) -> Hold:
    """Hold `data_dir` for this process (the data dir must exist); HeldError names the server that has it."""
    path = data_dir / LOCK_FILE
    deadline = time.monotonic() + wait_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                raise HeldError(data_dir, _read_record(data_dir)) from None
            time.sleep(0.05)
            continue
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            # A record left by a server that was killed is not this one's.
            (data_dir / RECORD_FILE).unlink(missing_ok=True)
            return Hold(data_dir, fd)
        os.close(fd)  # the holder removed the file as we waited: lock the one there now


def holder(data_dir: Path) -> Holder | None:
    """The server holding `data_dir`, or None when none does (a record left behind is then ignored)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return _read_record(data_dir, fd)
        return None  # nobody holds it: whatever was recorded is stale
    finally:
        os.close(fd)


def _read_record(data_dir: Path, lock_fd: int | None = None) -> Holder:
    pid: int | None = None
    try:
        if lock_fd is None:
            pid = int((data_dir / LOCK_FILE).read_text() or 0) or None
        else:
            pid = int(os.pread(lock_fd, 32, 0) or 0) or None
        record = json.loads((data_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return Holder(pid)
    if pid is not None and record.get("pid") != pid:
        return Holder(pid)  # the holder's record is not written yet
    return Holder(record.get("pid"), record.get("host"), record.get("port"), record.get("started_at"),
                  record.get("upgrade_failed_at"), record.get("upgrade_error"), record.get("reloaded_at"),
                  record.get("reload"))


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False

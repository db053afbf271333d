"""An upgrade without downtime on one machine: a running `serve` hands its listening socket and its data dir
to a new process, which must be ready before the old one stops accepting.

On SIGUSR2 (`systemctl reload codexlb`, `codexlb upgrade`) `serve` starts the program at its path again (a new
binary put there is what runs) with its own command line, and hands over two open file descriptors: the
listening socket, and the data dir's lock. Inheriting the socket keeps one kernel accept queue: a connection
queued while processes change is accepted by one of them, never refused or reset (a second socket bound with
SO_REUSEPORT has a queue of its own, whose connections are reset when it closes). The new process starts as
any `serve` does (config, database, migrations), serves the inherited socket, records itself in `server.json`
and says ready over a pipe; only then does the old one stop accepting and drain its in-flight requests. A new
process that cannot start writes its one-line error to that pipe instead: the old one logs it, records it for
`codexlb upgrade`, and goes on serving. A fifth descriptor, one end of a Unix socket pair, is the channel over which
the old process hands its client connections over as each comes to rest (`conn_handover`); a process started by
a version without it gets four, and its connections are closed by the drain as before.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable

from codexlb import log

_log = log.get("codexlb.server")

# listening socket, data dir lock, where to say ready (or why not), where to hear "go", where connections come
FLAG = "--handover-fds"
READY_WAIT_S = 120.0  # a start that migrates a big database takes a while; one that hangs must not block upgrades
GO_WAIT_S = 30.0  # the old process stops accepting and writes what it shares; past this the new one goes anyway
READY = b"\x01"


@dataclass(slots=True)
class Inherited:
    """In the new process: what the old one handed over."""

    listen_fd: int
    lock_fd: int
    ready_fd: int
    go_fd: int
    conns_fd: int = -1  # the connections channel; -1 from an old process that hands none over

    @classmethod
    def parse(cls, value: str) -> "Inherited":
        return cls(*(int(part) for part in value.split(",")))

    def socket(self) -> socket.socket:
        return socket.socket(fileno=self.listen_fd)

    def conns(self) -> socket.socket | None:
        return socket.socket(fileno=self.conns_fd) if self.conns_fd >= 0 else None

    async def ready(self) -> None:
        """Say ready (set up, not accepting yet), then wait for the old process's go: it has stopped accepting
        and written what it shares (the sticky map), so what this one reads next is whole."""
        self._say(READY)
        try:
            await asyncio.wait_for(asyncio.to_thread(_read_all, self.go_fd), GO_WAIT_S)
        except TimeoutError:
            _log.warning("upgrade: no go from the old process; serving anyway", waited_s=GO_WAIT_S)

    def failed(self, message: str) -> None:
        self._say(message.encode(errors="replace"))

    def _say(self, what: bytes) -> None:
        if self.ready_fd < 0:
            return
        try:
            os.write(self.ready_fd, what)
        except OSError:
            pass  # the old process is gone: nobody to tell
        finally:
            os.close(self.ready_fd)
            self.ready_fd = -1


class HandoverFailed(Exception):
    """The new process did not get ready; the message says why (its own error line when it sent one)."""


def successor_command(fds: tuple[int, ...]) -> list[str]:
    """This program's command line again (without a hand-over of its own), handed `fds`."""
    argv = [a for a in sys.argv[1:] if not a.startswith(f"{FLAG}=")]
    program = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "codexlb"]
    return [*program, *argv, f"{FLAG}={','.join(map(str, fds))}"]


async def hand_over(listen_fd: int, lock_fd: int,
                    before_go: Callable[[], Awaitable[None]]) -> tuple[int, socket.socket]:
    """Start the new process with the socket and the lock; once it is ready, `before_go` (stop accepting, write
    what is shared), then tell it to go; its pid, and this end of the connections channel. Raises HandoverFailed
    (this process goes on serving)."""
    read_end, write_end = os.pipe()
    go_read, go_write = os.pipe()
    conns, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = (listen_fd, lock_fd, write_end, go_read, theirs.fileno())
    try:
        command = successor_command(fds)
        proc = await asyncio.to_thread(subprocess.Popen, command, pass_fds=fds, stdin=subprocess.DEVNULL)
    except OSError as exc:
        os.close(read_end)
        os.close(go_write)
        conns.close()
        raise HandoverFailed(f"cannot start {command[0]}: {exc.strerror or exc}") from None
    except BaseException:
        os.close(read_end)
        os.close(go_write)
        conns.close()
        raise
    finally:
        os.close(write_end)
        os.close(go_read)
        theirs.close()
    try:
        pid = await _until_ready(proc, read_end)
        await before_go()
    except BaseException:
        conns.close()
        raise
    finally:
        os.close(go_write)  # go (or, failed: nothing to wait for)
    return pid, conns


async def _until_ready(proc: subprocess.Popen, read_end: int) -> int:
    _log.info("upgrade: new process starting", pid=proc.pid)
    reading = asyncio.ensure_future(asyncio.to_thread(_read_all, read_end))
    try:
        done, _ = await asyncio.wait({reading}, timeout=READY_WAIT_S)
    except asyncio.CancelledError:
        proc.kill()  # the old process is stopping: it keeps the socket, the half-started new one goes
        raise
    if not done:
        proc.kill()
        await asyncio.to_thread(proc.wait)
        raise HandoverFailed(f"the new process (pid {proc.pid}) was not ready within {READY_WAIT_S:g} s")
    said = reading.result()
    if said == READY:
        return proc.pid
    returncode = await asyncio.to_thread(proc.wait)
    if said:
        raise HandoverFailed(said.decode(errors="replace").strip())
    raise HandoverFailed(f"the new process (pid {proc.pid}) exited ({exit_status(returncode)}) before it was ready")


def exit_status(returncode: int) -> str:
    return f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)

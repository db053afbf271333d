"""`serve --workers N`: one parent binds the port and supervises N worker processes that serve it.

The parent binds the listening socket once and every worker inherits that one socket, so the kernel's accept
queue outlives any worker: a worker that dies loses no queued connection, and one being restarted refuses
none (SO_REUSEPORT would give each worker a queue of its own, dropped with it). A worker is this same program
run again (`sys.executable`: the frozen binary itself, or `python -m codexlb`) with the same setting flags and
a hidden `--worker-fd`, so it starts the same way from source and from the binary, and each is a full replica.
The parent holds the data dir and its server record; workers never take the lock. A worker says it is ready by
closing a pipe after a byte; one that exits before that failed to start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

from codexlb import log, server_record
from codexlb.config import Settings
from codexlb.server import SIGNALS, StartupError, hold_dir, let_go, listen_failure, sd_notify
from codexlb.server.handover import exit_status
from codexlb.server.limits import BACKLOG

_log = log.get("codexlb.workers")

# A worker that dies is started again after a pause that doubles per failed start, up to the cap; one that
# never gets ready this many times in a row (a bad config, a missing file) will not on the next try either.
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 10.0
MAX_FAILED_STARTS = 5
# After the stop, workers get their own drain bound plus this to exit; then they are killed.
EXIT_GRACE_S = 10.0


class GaveUp(Exception):
    """Workers cannot be started; the message says which and how it ended."""


def worker_command(flags: list[str]) -> list[str]:
    """How to run this program again with `flags`: the frozen binary is `sys.executable` itself."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *flags]
    return [sys.executable, "-m", "codexlb", *flags]


def bind(host: str, port: int) -> socket.socket:
    """The one listening socket, for the first address `host` resolves to (as `bind` would pick)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class _Supervisor:
    def __init__(self, settings: Settings, flags: list[str], sock: socket.socket) -> None:
        self.settings, self.flags, self.sock = settings, flags, sock
        self.stopping = asyncio.Event()
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.first_round = True
        # Workers hold the read end; the kernel closes the write end however the parent ends, and the
        # workers then drain and exit rather than serve on, orphaned, holding the port.
        self.alive_read, self.alive_write = os.pipe()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._stop, sig)
        try:
            results = await asyncio.gather(
                *(self._keep(number) for number in range(1, self.settings.workers + 1)), return_exceptions=True)
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)  # what is left is teardown
        failed = [r for r in results if isinstance(r, BaseException)]
        for exc in failed:
            if not isinstance(exc, GaveUp):
                raise exc
        if failed:
            raise StartupError(str(failed[0]))
        return 0 if all(r == 0 for r in results) else 1

    def _stop(self, sig: int) -> None:
        """Pass the signal on: each worker drains as `serve` does, and a second one cuts its drain."""
        if not self.stopping.is_set():
            _log.info("stopping workers", signal=signal.Signals(sig).name)
            asyncio.get_running_loop().call_later(self.settings.drain_timeout_s + EXIT_GRACE_S, self._kill)
        self.stopping.set()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    async def _keep(self, number: int) -> int:
        """Run worker `number` until the parent stops, starting it again when it dies; its last exit code."""
        failed_starts = 0
        while True:
            proc, ready = await self._start(number)
            returncode = await proc.wait()
            got_ready = await ready
            self.procs.pop(number, None)
            if self.stopping.is_set():
                return returncode
            if got_ready:
                failed_starts = 0
            else:
                failed_starts += 1
                # Before any worker served, a failed start is the config's, not bad luck: say so at once.
                if self.first_round or failed_starts >= MAX_FAILED_STARTS:
                    self._give_up()
                    raise GaveUp(f"worker {number} could not start ({exit_status(returncode)}, "
                                 f"{failed_starts} time(s) in a row); see its error above")
            backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** failed_starts)
            _log.warning("worker exited; starting it again", worker=number, pid=proc.pid,
                         status=exit_status(returncode), backoff_s=backoff)
            try:
                await asyncio.wait_for(self.stopping.wait(), backoff)
                return returncode
            except asyncio.TimeoutError:
                pass

    def _kill(self) -> None:
        for number, proc in self.procs.items():
            if proc.returncode is None:
                _log.warning("worker did not exit after draining; killing it", worker=number, pid=proc.pid)
                proc.kill()

    def _give_up(self) -> None:
        if not self.stopping.is_set():
            self._stop(signal.SIGTERM)

    async def _start(self, number: int) -> tuple[asyncio.subprocess.Process, asyncio.Future[bool]]:
        read_end, write_end = os.pipe()
        fd = self.sock.fileno()
        try:
            proc = await asyncio.create_subprocess_exec(
                *worker_command([*self.flags, "--worker-fd", str(fd), "--worker-number", str(number),
                                 "--worker-ready-fd", str(write_end), "--worker-parent-fd", str(self.alive_read)]),
                pass_fds=(fd, write_end, self.alive_read), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.procs[number] = proc
        # The read ends with the worker's byte, or with nothing when it exits first.
        ready = asyncio.ensure_future(asyncio.to_thread(_read_ready, read_end))
        ready.add_done_callback(lambda done: self._on_ready(number, proc, done))
        return proc, ready

    def _on_ready(self, number: int, proc: asyncio.subprocess.Process, done: asyncio.Future[bool]) -> None:
        if not done.cancelled() and done.result():
            self.first_round = False
            _log.info("worker ready", worker=number, pid=proc.pid)


def _read_ready(fd: int) -> bool:
    try:
        return os.read(fd, 1) == b"1"
    finally:
        os.close(fd)


def watch_parent(fd: int) -> None:
    """In a worker: when the parent is gone, stop as on SIGTERM (drain, exit)."""
    loop = asyncio.get_running_loop()

    def gone() -> None:
        loop.remove_reader(fd)
        os.kill(os.getpid(), signal.SIGTERM)

    loop.add_reader(fd, gone)


def tell_ready(fd: int) -> None:
    """In a worker: tell the parent it serves."""
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)


async def _no_upgrade(hold: server_record.Hold) -> None:
    error = "an upgrade without downtime is not supported with --workers yet: restart instead"
    _log.error("upgrade refused", error=error)
    await asyncio.to_thread(hold.upgrade_failed, error)


async def supervise(settings: Settings, flags: list[str]) -> int:
    """Bind, hold the data dir, run `settings.workers` workers with `flags` until stopped; the exit code."""
    started_at = time.time()
    changes, hold = await asyncio.to_thread(hold_dir, settings)
    served = False
    try:
        try:
            sock = bind(settings.host, settings.port)
        except OSError as exc:
            raise StartupError(listen_failure(settings.host, settings.port, exc)) from None
        try:
            host, port = sock.getsockname()[:2]
            await asyncio.to_thread(hold.listening, host, port, started_at)
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            _log.info("listening", url=url, workers=settings.workers)
            supervisor = _Supervisor(settings, flags, sock)
            sd_notify.notify(MAINPID=sd_notify.main_pid(), READY=1)
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR2, lambda: asyncio.ensure_future(_no_upgrade(hold)))
            try:
                code = await supervisor.run()
            finally:
                loop.remove_signal_handler(signal.SIGUSR2)
            served = not supervisor.first_round
        finally:
            sock.close()
    finally:
        await asyncio.to_thread(let_go, hold, None if served else changes)
    _log.info("stopped", exit_code=code)
    return code

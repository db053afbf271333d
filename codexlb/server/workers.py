"""`serve --workers N`: one parent binds the port and supervises N worker processes that serve it.

The parent binds the listening socket once and every worker inherits that one socket, so the kernel's accept
queue outlives any worker: a worker that dies loses no queued connection, and one being restarted refuses
none (SO_REUSEPORT would give each worker a queue of its own, dropped with it). A worker is this same program
run again (`sys.executable`: the frozen binary itself, or `python -m codexlb`) with the same setting flags and
a hidden `--worker-fd`, so it starts the same way from source and from the binary, and each is a full replica.
The parent holds the data dir and its server record; workers never take the lock. A worker says it is ready by
closing a pipe after a byte; one that exits before that failed to start. An upgrade (SIGUSR2) hands the socket
and the data dir's lock to a new parent as `serve` hands its own (`handover`): the new parent starts its own
workers on the same socket and says ready once they all are; then the old parent's workers drain and it exits.
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
from codexlb.server import SIGNALS, StartupError, handover, hold_dir, let_go, listen_failure, sd_notify
from codexlb.server import _until_stopped as until_stopped  # the upgrade loop `serve` runs, shared
from codexlb.server.handover import exit_status
from codexlb.server.limits import BACKLOG
from codexlb.server.reloading import Reloader

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
        self.all_ready = asyncio.Event()  # every worker got ready once
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.first_round = True
        self._ready: set[int] = set()  # worker numbers that got ready once
        self.serving: set[int] = set()  # pids of the workers ready now
        # Workers hold the read end; the kernel closes the write end however the parent ends, and the
        # workers then drain and exit rather than serve on, orphaned, holding the port.
        self.alive_read, self.alive_write = os.pipe()

    async def run(self) -> int:
        results = await asyncio.gather(
            *(self._keep(number) for number in range(1, self.settings.workers + 1)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for exc in failed:
            if not isinstance(exc, GaveUp):
                raise exc
        if failed:
            raise StartupError(str(failed[0]))
        return 0 if all(r == 0 for r in results) else 1

    def stop(self, sig: int) -> None:
        """Pass the signal on: each worker drains as `serve` does, and a second one cuts its drain."""
        if not self.stopping.is_set():
            _log.info("stopping workers", signal=signal.Signals(sig).name)
            asyncio.get_running_loop().call_later(self.settings.drain_timeout_s + EXIT_GRACE_S, self._kill)
        self.stopping.set()
        self.send(sig)

    def send(self, sig: int, *, serving_only: bool = False) -> None:
        for proc in self.procs.values():
            if proc.returncode is None and (proc.pid in self.serving or not serving_only):
                proc.send_signal(sig)

    async def _keep(self, number: int) -> int:
        """Run worker `number` until the parent stops, starting it again when it dies; its last exit code."""
        failed_starts = 0
        while True:
            proc, ready = await self._start(number)
            returncode = await proc.wait()
            got_ready = await ready
            self.procs.pop(number, None)
            self.serving.discard(proc.pid)
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
            self.stop(signal.SIGTERM)

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
            self._ready.add(number)
            self.serving.add(proc.pid)
            if len(self._ready) == self.settings.workers:
                self.all_ready.set()


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


async def supervise(settings: Settings, flags: list[str], reloader: Reloader,
                    inherited: handover.Inherited | None = None) -> int:
    """Bind (or take over what `inherited` hands over: the socket and the data dir), hold the data dir, run
    `settings.workers` workers with `flags` until stopped or handed over to a new parent; the exit code.

    The parent's signals: SIGTERM/SIGINT stop the workers (they drain); SIGHUP reloads the settings here
    (`reloader`: the log level; the record for `codexlb reload`) and in every worker; SIGUSR2 hands over to
    a new parent as `serve` does (`handover`), which starts its own workers and is ready once they all are;
    then this one's workers drain and it exits."""
    started_at = time.time()
    if inherited is not None:
        changes, hold, sock = None, server_record.Hold(settings.data_dir, inherited.lock_fd), inherited.socket()
    else:
        changes, hold = await asyncio.to_thread(hold_dir, settings)
        sock = None
    served = ready = handed_over = False
    try:
        if sock is None:
            try:
                sock = bind(settings.host, settings.port)
            except OSError as exc:
                raise StartupError(listen_failure(settings.host, settings.port, exc)) from None
        try:
            supervisor = _Supervisor(settings, flags, sock)
            if inherited is None:
                await _listening(settings, hold, sock, started_at)
            try:
                code, ready, handed_over = await _run(supervisor, hold, reloader, inherited, started_at)
            finally:
                served = not supervisor.first_round
        finally:
            sock.close()
    finally:
        if handed_over or (inherited is not None and not ready):
            hold.hand_over()  # the data dir is the new parent's now, or still the old one's
        else:
            await asyncio.to_thread(let_go, hold, None if served else changes)
    _log.info("stopped", exit_code=code)
    return code


async def _listening(settings: Settings, hold: server_record.Hold, sock: socket.socket, started_at: float) -> None:
    host, port = sock.getsockname()[:2]
    await asyncio.to_thread(hold.listening, host, port, started_at)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    _log.info("listening", url=url, workers=settings.workers)
    sd_notify.notify(MAINPID=sd_notify.main_pid(), READY=1)


async def _run(supervisor: _Supervisor, hold: server_record.Hold, reloader: Reloader,
               inherited: handover.Inherited | None, started_at: float) -> tuple[int, bool, bool]:
    """Supervise under the parent's signals; (exit code, whether the workers got ready, whether handed over)."""
    loop = asyncio.get_running_loop()
    orders: asyncio.Queue[str] = asyncio.Queue()

    def stop(sig: int) -> None:
        supervisor.stop(sig)
        orders.put_nowait("stop")  # ends an upgrade under way: the half-started new parent goes

    def reload() -> None:
        reloader.request(hold)
        # A worker still starting reads the settings as they are now anyway.
        supervisor.send(signal.SIGHUP, serving_only=True)

    handled = (*SIGNALS, signal.SIGUSR2, signal.SIGHUP)
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    loop.add_signal_handler(signal.SIGUSR2, orders.put_nowait, "upgrade")
    loop.add_signal_handler(signal.SIGHUP, reload)
    running = asyncio.ensure_future(supervisor.run())
    upgrades: asyncio.Future[bool] | None = None
    try:
        all_ready = asyncio.ensure_future(supervisor.all_ready.wait())
        await asyncio.wait({running, all_ready}, return_when=asyncio.FIRST_COMPLETED)
        all_ready.cancel()
        ready = supervisor.all_ready.is_set()
        if ready and inherited is not None:
            # A new parent: its workers serve; the old parent's stop once it hears ready.
            await inherited.ready()
            await _listening(supervisor.settings, hold, supervisor.sock, started_at)
        if ready:
            upgrades = asyncio.ensure_future(
                until_stopped(orders, supervisor.sock.fileno(), hold, _nothing_to_hand_off))
            await asyncio.wait({running, upgrades}, return_when=asyncio.FIRST_COMPLETED)
        handed_over = upgrades is not None and upgrades.done() and not upgrades.cancelled() and upgrades.result()
        if handed_over:
            supervisor.stop(signal.SIGTERM)
        return await running, ready, handed_over
    finally:
        if upgrades is not None and not upgrades.done():
            upgrades.cancel()
            await asyncio.gather(upgrades, return_exceptions=True)
        if not running.done():
            running.cancel()
        for sig in handled:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)  # what is left is teardown


async def _nothing_to_hand_off() -> None:
    """The parent shares nothing: its workers write what they share as they drain."""

"""Running the app: listen, wait for SIGTERM/SIGINT, drain, exit; SIGHUP reloads the settings (`reloading`)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import time
from typing import Any, Awaitable, Callable, Coroutine

from aiohttp import web

from codexlb import log, server_record
from codexlb.app import create_app
from codexlb.config import Settings
from codexlb.dir_changes import DirChanges
from codexlb.handlers import health
from codexlb.server import conn_handover, handover, sd_notify
from codexlb.server.reloading import Reloader
from codexlb.server import limits as server_limits
from codexlb import services
from codexlb.services import StartupError, ensure_data_dir
from codexlb.store import DB_FILE_NAME, DatabaseError, SecretKeyError

__all__ = ["StartupError", "serve", "run_until_stopped", "hold_dir", "let_go", "listen_failure"]

_log = log.get("codexlb.server")


SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_GRACE_S = 0.5
# A drain waits for requests in flight (up to drain_timeout_s), then for this long with none, so that a request
# a client sent on a connection kept alive just before the drain is served, not cut; then it closes what is left.
IDLE_GRACE_S = 0.5
# What is still running when the drain's time is up gets this long more before it is cancelled.
CLOSE_TAIL_S = 1.0


async def serve(
    settings: Settings,
    app: web.Application | None = None,
    on_listening: Callable[[str], None] | None = None,
    *,
    hold_data_dir: bool = True,
    sock: socket.socket | None = None,
    inherited: handover.Inherited | None = None,
    reloader: Reloader | None = None,
) -> None:
    """Serve until the first SIGTERM/SIGINT, then drain within `drain_timeout_s`.

    A second signal while draining stops waiting for in-flight requests.
    `app` defaults to `create_app(settings)`; `on_listening` gets the bound URL. With `hold_data_dir`
    (not for the simulated backend, which keeps nothing there) the data dir is this server's alone while it
    runs, and records where it listens (`server_record`); a start that fails leaves the data dir as it was.
    `sock`, a socket already listening (a worker's, from `serve --workers N`), is served instead of binding.
    `inherited`: what the server this one upgrades handed over (`handover`): its socket and data dir lock.
    SIGUSR2 hands this server's own over to a new process in turn. SIGHUP has `reloader` reload the settings.
    """
    app = app or create_app(settings)
    if not hold_data_dir:
        await _serve(settings, app, on_listening, None, sock, reloader=reloader)
        return
    if inherited is not None:
        changes, hold, sock = None, server_record.Hold(settings.data_dir, inherited.lock_fd), inherited.socket()
    else:
        changes, hold = await asyncio.to_thread(hold_dir, settings)
    listening = False

    def listened(url: str) -> None:
        nonlocal listening
        listening = True
        if on_listening is not None:
            on_listening(url)

    handed_over = False
    try:
        handed_over = await _serve(settings, app, listened, hold, sock,
                                   before_listen=_taking_over(inherited, app) if inherited is not None else None,
                                   conns=inherited.conns() if inherited is not None else None, reloader=reloader)
    finally:
        if handed_over or (inherited is not None and not listening):
            hold.hand_over()  # the data dir is the new process's now, or still the old one's
        else:
            await asyncio.to_thread(let_go, hold, None if listening else changes)


def hold_dir(settings: Settings) -> tuple[DirChanges, server_record.Hold]:
    changes = DirChanges(settings.data_dir, DB_FILE_NAME)
    try:
        ensure_data_dir(settings)
        return changes, server_record.acquire(settings.data_dir)
    except server_record.HeldError as exc:
        changes.undo()
        raise StartupError(str(exc)) from None
    except OSError as exc:
        changes.undo()
        raise StartupError(f"cannot prepare data dir {settings.data_dir}: {exc.strerror or exc}") from None


def _taking_over(inherited: handover.Inherited, app: web.Application) -> Callable[[], Awaitable[None]]:
    """Before the new process accepts: ready, the old one's go, then what it shared read in."""
    async def take_over() -> None:
        await inherited.ready()
        await services.take_over(app)
    return take_over


def let_go(hold: server_record.Hold, undo: DirChanges | None) -> None:
    if undo is not None:
        undo.undo()
    hold.release()


async def _serve(settings: Settings, app: web.Application, on_listening: Callable[[str], None] | None,
                 hold: server_record.Hold | None, sock: socket.socket | None = None, *,
                 before_listen: Callable[[], Awaitable[None]] | None = None,
                 conns: socket.socket | None = None, reloader: Reloader | None = None) -> bool:
    """Serve until stopped; True when stopped because a new process took over (`handover`). `before_listen`
    runs once the app is set up, before it accepts a connection; `conns`: where the process this one took over
    from hands its connections over (`conn_handover`)."""
    started_at = time.time()
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=CLOSE_TAIL_S,  # the drain itself is `_drain`
        # A client that hangs up cancels its handler, so upstream work and leases end with it.
        handler_cancellation=True,
    )
    try:
        await runner.setup()
    except (SecretKeyError, DatabaseError) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot prepare data dir {settings.data_dir}: {exc.strerror or exc}") from None
    if before_listen is not None:
        await before_listen()
    try:
        listener = await server_limits.listen(runner, settings.host, settings.port,
                                              header_timeout_s=settings.header_timeout_s, sock=sock)
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(listen_failure(settings.host, settings.port, exc)) from None
    host, port = listener.sockets[0].getsockname()[:2]
    url = f"http://{host}:{port}"
    if hold is not None:
        try:
            await asyncio.to_thread(hold.listening, host, port, started_at)
        except OSError as exc:
            listener.close()
            await runner.cleanup()
            raise StartupError(f"cannot record the server in {settings.data_dir}: {exc.strerror or exc}") from None
    _log.info("listening", url=url)
    if on_listening is not None:
        on_listening(url)
    if hold is not None:
        sd_notify.notify(MAINPID=sd_notify.main_pid(), READY=1)
    adopting = None if conns is None else asyncio.create_task(conn_handover.adopt_connections(
        app, conns, server_limits.handlers(runner, header_timeout_s=settings.header_timeout_s)))

    loop = asyncio.get_running_loop()
    orders: asyncio.Queue[str] = asyncio.Queue()
    # asyncio restores the defaults when its handlers go; put back whatever was there instead.
    handled = (*SIGNALS, signal.SIGUSR2) if hold is not None else SIGNALS
    handled += (signal.SIGHUP,) if reloader is not None else ()
    previous = {sig: signal.getsignal(sig) for sig in handled}
    for sig in SIGNALS:
        loop.add_signal_handler(sig, orders.put_nowait, "stop")
    if hold is not None:
        loop.add_signal_handler(signal.SIGUSR2, orders.put_nowait, "upgrade")
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, reloader.request, hold)
    successor: socket.socket | None = None
    handed_over = False
    try:
        async def before_go() -> None:
            listener.close()  # the new process accepts from here on: the kernel's queue is one
            await services.hand_off(app)

        successor = await _until_stopped(orders, listener.sockets[0].fileno(), hold, before_go)
        handed_over = successor is not None
        first_signal_at = loop.time()
        app[health.LIFECYCLE].passing = handed_over
        app[health.LIFECYCLE].draining = True
        _log.info("draining", timeout_s=settings.drain_timeout_s)
        if hold is not None and not handed_over:
            sd_notify.notify(STOPPING=1)
        pause_s = 0.0 if handed_over else settings.drain_pause_s  # handed over: the port is served on
        cleanup = asyncio.ensure_future(_drain(runner, app, settings.drain_timeout_s, listener, pause_s, successor))

        def second_signal() -> None:
            # The frozen binary's launcher forwards the signal the terminal already sent us:
            # a repeat that close is the same keypress, not an order to stop at once.
            if loop.time() - first_signal_at >= REPEAT_GRACE_S:
                cleanup.cancel()

        for sig in SIGNALS:
            loop.add_signal_handler(sig, second_signal)
        try:
            await cleanup
        except asyncio.CancelledError:
            _log.warning("drain cut short by a second signal")
            raise
    finally:
        listener.close()
        if successor is not None:
            successor.close()
        if adopting is not None:
            adopting.cancel()
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            # Under run_until_stopped what is left is teardown: a late signal may not break into it.
            signal.signal(sig, signal.SIG_IGN if handler is _exit_quietly else handler)
    _log.info("stopped")
    return handed_over


async def _drain(runner: web.AppRunner, app: web.Application, timeout_s: float, listener: asyncio.AbstractServer,
                 pause_s: float, successor: socket.socket | None) -> None:
    """Stop accepting after `pause_s`; hand each connection over to the `successor` once it is at rest
    (`conn_handover`); without one, or once it fails, let requests in flight finish (every answer now closes its
    connection); then close the rest."""
    lifecycle = app[health.LIFECYCLE]
    if pause_s:
        # Readiness fails from now on while the port still accepts: a front door's health check takes this
        # replica out before a connection to it could be refused.
        await asyncio.sleep(pause_s)
    listener.close()  # no new connections; the runner then drains those open
    try:
        async with asyncio.timeout(timeout_s):
            if successor is not None and runner.server is not None:
                lifecycle.passing = await conn_handover.pass_connections(app, runner.server, successor)
            if not lifecycle.passing:
                await lifecycle.quiet(IDLE_GRACE_S)
    except TimeoutError:
        _log.warning("drain time is up; closing what is still open", in_flight=lifecycle.in_flight)
    await runner.cleanup()


async def _until_stopped(orders: asyncio.Queue[str], listen_fd: int, hold: server_record.Hold | None,
                         before_go: Callable[[], Awaitable[None]]) -> socket.socket | None:
    """Wait for a stop signal (then None), or for an upgrade that gets a new process ready: the channel to hand it
    the connections over. An upgrade that fails is logged and recorded, and this process goes on; a stop during
    an upgrade ends the new process."""
    while await orders.get() != "stop":
        assert hold is not None
        upgrading = asyncio.ensure_future(handover.hand_over(listen_fd, hold.fd, before_go))
        stopping = asyncio.ensure_future(_next_stop(orders))
        try:
            await asyncio.wait({upgrading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not upgrading.done():
                upgrading.cancel()
            await asyncio.gather(upgrading, stopping, return_exceptions=True)
        if upgrading.cancelled():
            return None
        try:
            pid, channel = upgrading.result()
        except handover.HandoverFailed as exc:
            _log.error("upgrade failed; this process goes on serving", error=str(exc))
            await asyncio.to_thread(hold.upgrade_failed, str(exc))
            continue
        _log.info("upgrade: new process ready; this one drains", pid=pid)
        return channel
    return None


async def _next_stop(orders: asyncio.Queue[str]) -> None:
    """Until a stop order (another upgrade order during one is moot)."""
    while await orders.get() != "stop":
        pass

def listen_failure(host: str, port: int, exc: OSError) -> str:
    # The bind error's own text repeats the address; its errno says all there is.
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {host}:{port}: address already in use; pick another port with --port "
                "(or stop the process using it)")
    return f"cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}"


def run_until_stopped(main: Coroutine[Any, Any, int | None]) -> int:
    """Run a `serve`-based coroutine as a command, the last thing its process does: its exit code.

    A stop signal before `serve` listens ends the process quietly. After `serve` has stopped, a late one
    (a forwarded copy, or systemd's) must not break the teardown or kill a process that drained cleanly:
    from then on stop signals are ignored until the process is gone.
    """
    for sig in SIGNALS:
        signal.signal(sig, _exit_quietly)
    try:
        code = asyncio.run(main)
    except asyncio.CancelledError:
        return 1
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        log.flush()  # the last lines ("stopped") are out before the exit code is
    return code or 0


def _exit_quietly(signum: int, _frame: object) -> None:
    raise SystemExit(0)

"""Running the app: listen, wait for SIGTERM/SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path
from typing import Callable

from aiohttp import web

from codexlb import health, log
from codexlb.app import create_app
from codexlb.config import Settings

_log = log.get("codexlb.server")


def ensure_data_dir(path: Path) -> None:
    """Create the data dir private to this user; tighten it if it is readable by others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(0o700)
        _log.warning("tightened data dir permissions", path=str(path), was=oct(mode), now="0o700")


class StartupError(Exception):
    """The server could not start; the message is meant for the operator as it is."""


async def serve(
    settings: Settings,
    app: web.Application | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until the first SIGTERM/SIGINT, then drain within `drain_timeout_s`.

    A second signal while draining stops waiting for in-flight requests.
    `app` defaults to `create_app(settings)`; `on_listening` gets the bound URL.
    """
    app = app or create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.drain_timeout_s,
        # A client that hangs up cancels its handler, so upstream work and leases end with it.
        handler_cancellation=True,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    _log.info("listening", url=url)
    if on_listening is not None:
        on_listening(url)

    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        app[health.LIFECYCLE].draining = True
        _log.info("draining", timeout_s=settings.drain_timeout_s)
        cleanup = asyncio.ensure_future(runner.cleanup())
        for sig in signals:
            loop.add_signal_handler(sig, cleanup.cancel)
        try:
            await cleanup
        except asyncio.CancelledError:
            _log.warning("drain cut short by a second signal")
            raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    _log.info("stopped")

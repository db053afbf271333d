"""Liveness and readiness, never gated and never authenticated."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler


@dataclass(slots=True)
class Lifecycle:
    """Process state: `draining` (readiness fails, and every response closes its connection) flips when the
    server stops or hands over to a new process; requests in flight are counted so a drain can wait for them
    before it closes the connections that are left (idle ones). While `passing`, connections go on to the process
    that took over (`server.conn_handover`) rather than being closed, so responses keep them alive."""

    draining: bool = False
    passing: bool = False
    in_flight: int = 0
    _started: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def begin(self) -> None:
        self.in_flight += 1
        self._started += 1
        self._idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def quiet(self, grace_s: float) -> None:
        """Until no request has been in flight for `grace_s`: a client that got a keep-alive answer just before
        the drain began may be sending its next request on that connection; it is served (and told to close)
        rather than cut."""
        while True:
            if self.in_flight:
                await self._idle.wait()
            started = self._started
            await asyncio.sleep(grace_s)
            if self._started == started and not self.in_flight:
                return


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
PREFIXES = ("/health/",)


async def live(_request: web.Request) -> web.Response:
    # The pid tells which process answered: with `serve --workers N`, several serve one port.
    return web.json_response({"status": "live", "pid": os.getpid()})


async def ready(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})


@web.middleware
async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts the request in flight (WebSockets for as long as they are open)."""
    lifecycle = request.app[LIFECYCLE]
    lifecycle.begin()
    try:
        return await handler(request)
    finally:
        lifecycle.end()


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    # The client opens its next connection elsewhere (the new process, another replica) instead of racing
    # this one's close with its next request.
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.draining and not lifecycle.passing:
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"  # the headers were made before this hook: say it there too


def setup(app: web.Application) -> None:
    app[LIFECYCLE] = Lifecycle()
    app.on_response_prepare.append(_close_when_draining)
    app.router.add_get("/health/live", live, allow_head=True)
    app.router.add_get("/health/ready", ready, allow_head=True)

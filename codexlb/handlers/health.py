"""Liveness and readiness, never gated and never authenticated."""

from __future__ import annotations

import os
from dataclasses import dataclass

from aiohttp import web


@dataclass(slots=True)
class Lifecycle:
    """Process state that readiness reports; `draining` flips on SIGTERM."""

    draining: bool = False


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
PREFIXES = ("/health/",)


async def live(_request: web.Request) -> web.Response:
    # The pid tells which process answered: with `serve --workers N`, several serve one port.
    return web.json_response({"status": "live", "pid": os.getpid()})


async def ready(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})


def setup(app: web.Application) -> None:
    app[LIFECYCLE] = Lifecycle()
    app.router.add_get("/health/live", live, allow_head=True)
    app.router.add_get("/health/ready", ready, allow_head=True)

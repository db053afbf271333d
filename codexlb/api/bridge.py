"""`/api/bridge`: the HTTP bridge's sessions, and how often each recovery decision was taken."""

from __future__ import annotations

from aiohttp import web

from codexlb.api.admin import json_response, require_admin
from codexlb.bridge.http import SESSIONS
from codexlb.proxy.upstream import UPSTREAM


async def bridge(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response({"sessions": len(request.app[SESSIONS]),
                          "recoveries": dict(request.app[UPSTREAM].recoveries)})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/bridge", bridge)

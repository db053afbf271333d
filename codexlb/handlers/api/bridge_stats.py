"""`/api/bridge`: the HTTP bridge's sessions, how often each recovery decision was taken, and the
transcripts' use (responses kept, bytes, hits, misses, evictions)."""

from __future__ import annotations

from aiohttp import web

from codexlb.bridge.http import SESSIONS
from codexlb.handlers.api.admin import json_response, require_admin
from codexlb.upstream.state import UPSTREAM


async def bridge(request: web.Request) -> web.Response:
    require_admin(request)
    up = request.app[UPSTREAM]
    return json_response({"sessions": len(request.app[SESSIONS]), "recoveries": dict(up.recoveries),
                          "transcripts": up.transcripts.stats()})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/bridge", bridge)

"""`/api/admission`: every gate's capacity, slots in use, waiters, and admitted/rejected totals."""

from __future__ import annotations

from aiohttp import web

from codexlb.handlers.api.admin import json_response, require_admin
from codexlb.services import GATES


async def admission(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(request.app[GATES].snapshot())


def setup(app: web.Application) -> None:
    app.router.add_get("/api/admission", admission)

"""What the admin API handlers share: who may call them, and JSON answers."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from codexlb.errors import APIError
from codexlb.loopback import is_loopback_remote


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def require_admin(request: web.Request) -> None:
    """Loopback only until admin passwords exist (the dashboard issue)."""
    if not is_loopback_remote(request.remote):
        raise APIError(403, "The admin API answers loopback clients only.", code="admin_forbidden")

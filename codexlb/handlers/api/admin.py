"""What the admin API handlers share: who may call them, and JSON answers."""

from __future__ import annotations

from typing import Any, Collection, Mapping

import orjson
from aiohttp import web

from codexlb.errors import APIError
from codexlb.services import ADMIN


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def require_admin(request: web.Request) -> None:
    """The operator only: see `codexlb.admin_auth` for who that is."""
    request.app[ADMIN].check(request)


def only_fields(body: Mapping[str, Any], allowed: Collection[str]) -> None:
    """A mistyped or unknown field is refused by name: taken silently, it looks applied when it was not."""
    for field in body:
        if field not in allowed:
            raise APIError(400, f"Unknown field {field!r}; this call takes: {', '.join(sorted(allowed))}.",
                           code="unknown_parameter", param=field)

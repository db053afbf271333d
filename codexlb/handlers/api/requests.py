"""`/api/requests`: the request log with filters and paging; `/api/usage/series`: tokens over time per
account or API key; `/api/live`: what is flowing now. All read-only, for the operator."""

from __future__ import annotations

import time

from aiohttp import web

from codexlb.errors import APIError
from codexlb.handlers.api.admin import json_response, require_admin
from codexlb.services import GATES, STORE

MAX_PAGE = 500
_FILTERS = {"account": "account_id", "key": "api_key_id", "model": "model", "status": "status",
            "error_code": "error_code"}


def _int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"'{name}' must be a whole number.", code="invalid_value", param=name) from None
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low} and {high}.", code="invalid_value", param=name)
    return value


async def requests(request: web.Request) -> web.Response:
    """?account=&key=&model=&status=&error_code= filter; ?limit= (<= 500) and ?before= (an id) page."""
    require_admin(request)
    filters: dict[str, object] = {}
    for name, column in _FILTERS.items():
        value = request.query.get(name)
        if value:
            filters[column] = _int(request, name, None, 100, 599) if name == "status" else value
    limit = _int(request, "limit", 100, 1, MAX_PAGE)
    rows = await request.app[STORE].requests(filters, limit or 100, _int(request, "before", None, 1, 2**62))
    return json_response({"requests": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None})


async def usage_series(request: web.Request) -> web.Response:
    """?by=account|key, ?hours= (<= 720) back, ?bucket= seconds (>= 60)."""
    require_admin(request)
    by = {"account": "account_id", "key": "api_key_id"}.get(request.query.get("by", "account"))
    if by is None:
        raise APIError(400, "'by' is account or key.", code="invalid_value", param="by")
    hours = _int(request, "hours", 24, 1, 720) or 24
    bucket = _int(request, "bucket", 3600, 60, 86400) or 3600
    series = await request.app[STORE].token_series(by, time.time() - hours * 3600, bucket)
    return json_response({"by": request.query.get("by", "account"), "bucket_s": bucket, "points": series})


async def live(request: web.Request) -> web.Response:
    require_admin(request)
    inflight = request.app[GATES].inflight
    return json_response({"in_flight": inflight.in_use, "waiting": inflight.waiting, "admitted": inflight.admitted,
                          "rejected": inflight.rejected, "at": time.time()})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/requests", requests)
    app.router.add_get("/api/usage/series", usage_series)
    app.router.add_get("/api/live", live)

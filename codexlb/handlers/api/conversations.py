"""The ledger, for the operator: `/api/conversations` (per conversation: turns, tokens, bytes each way, savings,
recoveries), `/api/conversations/{conversation}` (its requests), `/api/usage` (totals per API key and per
account). Read-only; the rows are the request log's (`codexlb.store.ledger`)."""

from __future__ import annotations

import math
import time

from aiohttp import web

from codexlb.errors import APIError
from codexlb.handlers.api.admin import json_response, require_admin
from codexlb.handlers.api.requests import MAX_PAGE
from codexlb.services import STORE
from codexlb.store import ledger

DEFAULT_SPAN_S = 24 * 3600.0


def _epoch(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise APIError(400, f"'{name}' must be a time in seconds since the epoch.", code="invalid_value", param=name)
    return value


def _range(request: web.Request) -> tuple[float, float]:
    until = _epoch(request, "until", time.time() + 1)
    since = _epoch(request, "since", until - DEFAULT_SPAN_S)
    if since > until:
        raise APIError(400, "'since' must not be after 'until'.", code="invalid_value", param="since")
    return since, until


async def _key_ids(request: web.Request, ref: str) -> list[str]:
    ids = await ledger.key_ids(request.app[STORE].db, ref)
    if not ids:
        raise APIError(404, f"No API key has the id or name {ref!r}.", code="not_found", param="key")
    return ids


async def list_conversations(request: web.Request) -> web.Response:
    """?since=&until= (epoch seconds; the last 24 h by default), ?key= (id or name), ?limit= (<= 500)."""
    require_admin(request)
    since, until = _range(request)
    raw_limit = request.query.get("limit") or "100"
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise APIError(400, f"'limit' must be between 1 and {MAX_PAGE}.", code="invalid_value", param="limit")
    key = request.query.get("key")
    key_ids = await _key_ids(request, key) if key else None
    rows = await ledger.conversations(request.app[STORE].db, since, until, key_ids=key_ids, limit=int(raw_limit))
    return json_response({"conversations": rows})


async def show_conversation(request: web.Request) -> web.Response:
    require_admin(request)
    found = await ledger.conversation(request.app[STORE].db, request.match_info["conversation"])
    if found is None:
        raise APIError(404, "No request of this conversation is in the log.", code="not_found")
    summary, requests = found
    return json_response({"conversation": summary, "requests": requests})


async def usage(request: web.Request) -> web.Response:
    """?since=&until= (epoch seconds; the last 24 h by default)."""
    require_admin(request)
    since, until = _range(request)
    return json_response(await ledger.usage(request.app[STORE].db, since, until))


def setup(app: web.Application) -> None:
    app.router.add_get("/api/conversations", list_conversations)
    app.router.add_get("/api/conversations/{conversation:.+}", show_conversation)  # a cache key may hold a /
    app.router.add_get("/api/usage", usage)

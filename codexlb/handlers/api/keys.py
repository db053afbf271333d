"""`/api/keys`: list, create and revoke client API keys. A key is in a response once: the one creating it."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from codexlb.errors import APIError
from codexlb.handlers.api.admin import json_response, only_fields, require_admin
from codexlb.handlers.request_body import ADMIN_MAX_BYTES, admin_too_large, read_body
from codexlb.keys import KeyRingError
from codexlb.services import KEYS
from codexlb.store.api_keys import KeyRecord

# The one response holding a key must not linger in a cache.
_NO_STORE = {"Cache-Control": "no-store"}


def key_view(record: KeyRecord) -> dict[str, Any]:
    """Everything about a key except the key."""
    return {
        "id": record.id, "name": record.name, "prefix": record.prefix, "status": record.status,
        "created_at": record.created_at, "last_used_at": record.last_used_at, "revoked_at": record.revoked_at,
        "max_concurrency": record.max_concurrency,
    }


def _error(exc: KeyRingError) -> APIError:
    return APIError(404 if exc.not_found else 400, str(exc), code="not_found" if exc.not_found else "invalid_value")


async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response({"keys": [key_view(r) for r in await request.app[KEYS].list()]})


async def create_key(request: web.Request) -> web.Response:
    """Body (optional): {"name": str, "max_concurrency": int}."""
    require_admin(request)
    raw = await read_body(request, ADMIN_MAX_BYTES, admin_too_large)
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise APIError(400, "Body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "Body must be a JSON object.", code="invalid_type")
    only_fields(data, ("name", "max_concurrency"))
    name, limit = data.get("name"), data.get("max_concurrency")
    if name is not None and not isinstance(name, str):
        raise APIError(400, "name must be a string.", code="invalid_type", param="name")
    try:
        key, record = await request.app[KEYS].create(name, limit)
    except KeyRingError as exc:
        raise _error(exc) from None
    return json_response({"key": key, "api_key": key_view(record)}, status=201, headers=_NO_STORE)


async def revoke_key(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        record = await request.app[KEYS].revoke(request.match_info["key"])
    except KeyRingError as exc:
        raise _error(exc) from None
    return json_response({"api_key": key_view(record)})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/keys", list_keys)
    app.router.add_post("/api/keys", create_key)
    app.router.add_delete("/api/keys/{key}", revoke_key)

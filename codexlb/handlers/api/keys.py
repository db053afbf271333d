"""`/api/keys`: list, create, update and revoke client API keys. A key is in a response once: the one creating it.

A key's view carries its limits and their use in the current windows (`use`: the fleet's count, read at once)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from codexlb.errors import APIError
from codexlb.handlers.api.admin import json_response, only_fields, require_admin
from codexlb.handlers.request_body import ADMIN_MAX_BYTES, admin_too_large, read_body
from codexlb.key_limits.enforce import LIMITS_KEY
from codexlb.key_limits.policy import FIELDS
from codexlb.keys import KeyRingError
from codexlb.services import KEYS
from codexlb.store.api_keys import KeyRecord

# The one response holding a key must not linger in a cache.
_NO_STORE = {"Cache-Control": "no-store"}


def key_view(record: KeyRecord, use: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything about a key except the key."""
    return {
        "id": record.id, "name": record.name, "prefix": record.prefix, "status": record.status,
        "created_at": record.created_at, "last_used_at": record.last_used_at, "revoked_at": record.revoked_at,
        "max_concurrency": record.max_concurrency, "rpm": record.rpm, "tokens_5h": record.tokens_5h,
        "tokens_day": record.tokens_day, "tokens_week": record.tokens_week,
        "models": list(record.models) if record.models is not None else None, "expires_at": record.expires_at,
        "note": record.note, "use": use or {},
    }


def _error(exc: KeyRingError) -> APIError:
    return APIError(404 if exc.not_found else 400, str(exc), code="not_found" if exc.not_found else "invalid_value")


async def _object(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    raw = await read_body(request, ADMIN_MAX_BYTES, admin_too_large)
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise APIError(400, "Body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "Body must be a JSON object.", code="invalid_type")
    only_fields(data, allowed)
    return data


async def _views(request: web.Request, records: list[KeyRecord]) -> list[dict[str, Any]]:
    use = await request.app[LIMITS_KEY].use([r for r in records if r.revoked_at is None])
    return [key_view(r, use.get(r.id)) for r in records]


async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response({"keys": await _views(request, await request.app[KEYS].list())})


async def create_key(request: web.Request) -> web.Response:
    """Body (optional): {"name": str, and any of `key_limits.policy.FIELDS`}."""
    require_admin(request)
    data = await _object(request, ("name", *FIELDS))
    name = data.pop("name", None)
    if name is not None and not isinstance(name, str):
        raise APIError(400, "name must be a string.", code="invalid_type", param="name")
    try:
        key, record = await request.app[KEYS].create(name, data)
    except KeyRingError as exc:
        raise _error(exc) from None
    return json_response({"key": key, "api_key": key_view(record)}, status=201, headers=_NO_STORE)


async def update_key(request: web.Request) -> web.Response:
    """Body: any of `key_limits.policy.FIELDS`; null clears one."""
    require_admin(request)
    data = await _object(request, FIELDS)
    if not data:
        raise APIError(400, f"Nothing to change; this call takes: {', '.join(FIELDS)}.", code="invalid_value")
    try:
        record = await request.app[KEYS].update(request.match_info["key"], data)
    except KeyRingError as exc:
        raise _error(exc) from None
    return json_response({"api_key": (await _views(request, [record]))[0]})


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
    app.router.add_patch("/api/keys/{key}", update_key)
    app.router.add_delete("/api/keys/{key}", revoke_key)

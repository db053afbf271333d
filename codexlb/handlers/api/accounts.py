"""`/api/accounts`: list, import, pause, resume and remove accounts. Tokens never leave the process."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from codexlb.account import Account, Window
from codexlb.auth import authjson
from codexlb.auth.authjson import AuthFileError
from codexlb.errors import APIError
from codexlb.handlers.api.admin import json_response as _json
from codexlb.handlers.api.admin import require_admin
from codexlb.handlers.request_body import ADMIN_MAX_BYTES, admin_too_large, read_body
from codexlb.pool.roster import RosterError
from codexlb.services import ROSTER

__all__ = ["account_view", "require_admin", "setup"]


def _window(window: Window | None) -> dict[str, Any] | None:
    if window is None:
        return None
    return {"used_percent": window.used_percent, "window_minutes": window.window_minutes,
            "reset_at": window.reset_at}


def account_view(account: Account) -> dict[str, Any]:
    return {
        "id": account.id, "alias": account.alias, "email": account.email, "plan": account.plan,
        "status": account.status.value, "status_until": account.status_until, "status_reason": account.status_reason,
        "primary": _window(account.primary), "secondary": _window(account.secondary),
        "last_refresh": account.tokens.last_refresh, "access_expires_at": account.tokens.access_expires_at,
        "inflight": account.inflight, "created_at": account.created_at,
    }


def _roster_error(exc: RosterError) -> APIError:
    status = 404 if str(exc).startswith("no account") else 400
    return APIError(status, str(exc), code="not_found" if status == 404 else "invalid_value")


async def list_accounts(request: web.Request) -> web.Response:
    require_admin(request)
    return _json({"accounts": [account_view(a) for a in request.app[ROSTER].all()]})


async def import_account(request: web.Request) -> web.Response:
    """Body: a Codex CLI auth.json object, optionally with "alias"."""
    require_admin(request)
    try:
        data = orjson.loads(await read_body(request, ADMIN_MAX_BYTES, admin_too_large))
    except orjson.JSONDecodeError:
        raise APIError(400, "Body is not valid JSON.", code="invalid_json") from None
    alias = data.get("alias") if isinstance(data, dict) else None
    if alias is not None and not isinstance(alias, str):
        raise APIError(400, "alias must be a string.", code="invalid_type", param="alias")
    try:
        account, outcome = await request.app[ROSTER].add_login(authjson.parse(data, "auth.json"), alias)
    except AuthFileError as exc:
        raise APIError(400, str(exc), code="invalid_value") from None
    except RosterError as exc:
        raise _roster_error(exc) from None
    return _json({"outcome": outcome, "account": account_view(account)}, status=201 if outcome == "added" else 200)


async def _act(request: web.Request, action: str) -> web.Response:
    require_admin(request)
    roster = request.app[ROSTER]
    try:
        account = await getattr(roster, action)(request.match_info["account"])
    except RosterError as exc:
        raise _roster_error(exc) from None
    return _json({"account": account_view(account)})


async def pause(request: web.Request) -> web.Response:
    return await _act(request, "pause")


async def resume(request: web.Request) -> web.Response:
    return await _act(request, "resume")


async def remove(request: web.Request) -> web.Response:
    return await _act(request, "remove")


def setup(app: web.Application) -> None:
    app.router.add_get("/api/accounts", list_accounts)
    app.router.add_post("/api/accounts", import_account)
    app.router.add_post("/api/accounts/{account}/pause", pause)
    app.router.add_post("/api/accounts/{account}/resume", resume)
    app.router.add_delete("/api/accounts/{account}", remove)

"""`/api/login`, `/api/logout` and `/api/admin/password`: the operator's session and password."""

from __future__ import annotations

from aiohttp import web

from codexlb.admin_auth import SESSION_COOKIE, SESSION_TTL_S, over_tls, session_digest
from codexlb.errors import APIError
from codexlb.handlers.api.admin import json_response, only_fields, require_admin
from codexlb.handlers.request_body import read_json
from codexlb.services import ADMIN, STORE

MIN_PASSWORD = 12
_MAX_BODY = 64 * 1024


async def _password(request: web.Request) -> str:
    body = await read_json(request, _MAX_BODY, too_large_status=413)
    only_fields(body, ("password",))
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise APIError(400, "Send {\"password\": \"...\"}.", code="missing_required_parameter", param="password")
    return password


async def login(request: web.Request) -> web.Response:
    """Body {"password"}: a session cookie, and the CSRF token its state-changing calls must carry."""
    auth = request.app[ADMIN]
    cookie, csrf = await auth.login(request, await _password(request))
    made = auth.session(cookie)
    assert made is not None
    # Stored before it is handed out, so that the next request may land on any replica.
    await request.app[STORE].add_admin_session(session_digest(cookie), made.csrf, made.expires_at)
    response = json_response({"csrf_token": csrf, "expires_in": int(SESSION_TTL_S)})
    response.set_cookie(SESSION_COOKIE, cookie, max_age=int(SESSION_TTL_S), httponly=True, samesite="Strict",
                        secure=over_tls(request), path="/")
    return response


async def logout(request: web.Request) -> web.Response:
    await request.app[STORE].remove_admin_session(request.app[ADMIN].logout(request))
    response = json_response({"logged_out": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def set_password(request: web.Request) -> web.Response:
    """Body {"password"}: the new admin password (the operator only; every session ends)."""
    require_admin(request)
    password = await _password(request)
    if len(password) < MIN_PASSWORD:
        raise APIError(400, f"An admin password needs at least {MIN_PASSWORD} characters.", code="invalid_value",
                       param="password")
    hashed = await request.app[ADMIN].hash(password)
    await request.app[STORE].set_admin_password(hashed)
    request.app[ADMIN].set_password(hashed)
    return json_response({"password_set": True})


async def session(request: web.Request) -> web.Response:
    """Whether the caller may use the admin API, and its session's CSRF token if it has one."""
    auth = request.app[ADMIN]
    try:
        auth.check(request)
        authenticated = True
    except APIError:
        authenticated = False
    return json_response({"authenticated": authenticated, "csrf_token": auth.csrf_for(request),
                          "password_set": auth.password_hash is not None})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/session", session)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_post("/api/admin/password", set_password)

"""What the admin API handlers share: who may call them, and JSON answers."""

from __future__ import annotations

from typing import Any, Collection, Mapping

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from codexlb.admin_auth import SESSION_COOKIE, Session, session_digest
from codexlb.errors import APIError
from codexlb.handlers.client_auth import PROXY_PREFIXES
from codexlb.services import ADMIN, STORE
from codexlb.store import DatabaseError


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def require_admin(request: web.Request) -> None:
    """The operator only: see `codexlb.admin_auth` for who that is."""
    request.app[ADMIN].check(request)


@web.middleware
async def shared_sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A session cookie this replica does not know may be a login made on another one a moment ago (before
    the change feed told): looked up once in the database, before the operator's check."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not request.path.startswith(PROXY_PREFIXES) and request.app[ADMIN].session(cookie) is None:
        try:
            stored = await request.app[STORE].admin_session(session_digest(cookie))
        except DatabaseError:
            stored = None  # then it is not known here: the check below says what the caller lacks
        if stored is not None:
            request.app[ADMIN].adopt(session_digest(cookie), Session(*stored))
    return await handler(request)


def only_fields(body: Mapping[str, Any], allowed: Collection[str]) -> None:
    """A mistyped or unknown field is refused by name: taken silently, it looks applied when it was not."""
    for field in body:
        if field not in allowed:
            raise APIError(400, f"Unknown field {field!r}; this call takes: {', '.join(sorted(allowed))}.",
                           code="unknown_parameter", param=field)

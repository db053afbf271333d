"""`/api/accounts/device`: add an account by device-code sign-in from the dashboard.

`POST` starts one (the server talks to the OAuth server) and answers the address and code to show the
person; `GET /api/accounts/device/{id}` says whether they approved it yet, and which account it added.
At most `MAX_PENDING` run at once; each ends by itself when its code expires.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from aiohttp import web

from codexlb import log
from codexlb.auth import authjson, oauth
from codexlb.errors import APIError
from codexlb.handlers.api.accounts import account_view
from codexlb.handlers.api.admin import json_response, require_admin
from codexlb.services import HTTP, ROSTER, SETTINGS

MAX_PENDING = 8
# How long a finished sign-in's answer stays readable by the page that polls it.
KEEP_DONE_S = 600.0
# The OAuth server's first answer (the code) must come within this.
CODE_WAIT_S = 30.0
_log = log.get("codexlb.api.device")


@dataclass(slots=True)
class _SignIn:
    task: asyncio.Task[None] | None = None
    code: asyncio.Future[tuple[str, str]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    status: str = "pending"  # pending, added, failed
    account: dict | None = None
    error: str | None = None
    ended_at: float | None = None


SIGN_INS = web.AppKey("device_sign_ins", dict)


async def _run(app: web.Application, sign_in: _SignIn) -> None:
    def show(url: str, user_code: str) -> None:
        if not sign_in.code.done():
            sign_in.code.set_result((url, user_code))

    try:
        tokens = await oauth.login_device(app[HTTP], app[SETTINGS].auth_base_url, on_code=show)
        login = authjson.from_tokens(tokens.access_token, tokens.refresh_token, tokens.id_token,
                                     issued_at=time.time(), origin="sign-in")
        account, _outcome = await app[ROSTER].add_login(login)
        sign_in.status, sign_in.account = "added", account_view(account)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong is the answer the page shows
        sign_in.status, sign_in.error = "failed", str(exc) or type(exc).__name__
        if not sign_in.code.done():
            sign_in.code.set_exception(APIError(502, f"Device sign-in could not start: {sign_in.error}",
                                                code="login_failed", type="server_error"))
    finally:
        sign_in.ended_at = time.monotonic()


def _tidy(sign_ins: dict[str, _SignIn]) -> None:
    now = time.monotonic()
    for key in [k for k, s in sign_ins.items() if s.ended_at is not None and now - s.ended_at > KEEP_DONE_S]:
        del sign_ins[key]


async def start(request: web.Request) -> web.Response:
    require_admin(request)
    sign_ins: dict[str, _SignIn] = request.app[SIGN_INS]
    _tidy(sign_ins)
    if sum(1 for s in sign_ins.values() if s.status == "pending") >= MAX_PENDING:
        raise APIError(429, f"{MAX_PENDING} device sign-ins are already waiting; finish one first.",
                       code="too_many_sign_ins", type="rate_limit_error", headers={"Retry-After": "30"})
    key = "dev_" + secrets.token_hex(8)
    sign_in = sign_ins[key] = _SignIn()
    sign_in.task = asyncio.create_task(_run(request.app, sign_in), name="codexlb-device-sign-in")
    try:
        async with asyncio.timeout(CODE_WAIT_S):
            url, user_code = await sign_in.code
    except TimeoutError:
        sign_in.task.cancel()
        raise APIError(504, f"The sign-in server gave no code within {CODE_WAIT_S:g} s.", code="login_failed",
                       type="server_error") from None
    _log.info("device sign-in started", sign_in=key)
    return json_response({"id": key, "verification_url": url, "user_code": user_code}, status=201)


async def status(request: web.Request) -> web.Response:
    require_admin(request)
    sign_in = request.app[SIGN_INS].get(request.match_info["id"])
    if sign_in is None:
        raise APIError(404, "No such device sign-in (it may have ended long ago).", code="not_found")
    return json_response({"status": sign_in.status, "account": sign_in.account, "error": sign_in.error})


async def _sign_ins_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SIGN_INS] = {}
    yield
    for sign_in in app[SIGN_INS].values():
        if sign_in.task is not None:
            sign_in.task.cancel()
    await asyncio.gather(*(s.task for s in app[SIGN_INS].values() if s.task), return_exceptions=True)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_sign_ins_ctx)
    app.router.add_post("/api/accounts/device", start)
    app.router.add_get("/api/accounts/device/{id}", status)

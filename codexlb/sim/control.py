"""`/__sim/...`: the JSON control API that scripts faults and inspects the sim at run time.

| Call | Does |
|---|---|
| `GET /__sim/accounts` | accounts with their current tokens and usage, the refreshes served (`refreshes`) and \
refused for a reused refresh token (`reused`) |
| `POST /__sim/accounts/{id}/usage` `{"primary_used_percent", "secondary_used_percent"}` | set usage (100 = exhausted) |
| `POST /__sim/accounts/{id}/expire` `{"hold_stale"?}` | the current access token expires now; `hold_stale`: \
its 401s after the first, and refusals of a reused refresh token, wait until a newer access token of the account \
is used (they arrive after the client's refresh) |
| `POST /__sim/accounts/{id}/revoke` | every token of the account stops working |
| `GET/POST/DELETE /__sim/faults`, `DELETE /__sim/faults/{id}` | list, add (a `Fault` as JSON), clear |
| `POST /__sim/state/drop` `{"account"?, "response_id"?}` | forget conversation state (genuine not-found) |
| `POST /__sim/state/expire` | age all conversation state past its TTL |
| `GET/DELETE /__sim/requests` | what each Responses request carried and how it ended |
| `POST /__sim/reset` | clear faults, state and records |
| `POST /__sim/login/next` `{"account"?, "error"?, "error_description"?}` | the next sign-in's account (the \
rotation goes on from it), or the OAuth `error` (e.g. `access_denied`) the next `/oauth/authorize` sends back |
| `GET /__sim/device` | device codes not yet redeemed, pending or approved |
| `POST /__sim/device/approve` `{"user_code", "account"?}` | a person approves the code, signing in as `account` \
(default: the rotation's next); 404 if unknown or expired |
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from codexlb.errors import APIError
from codexlb.sim.accounts import SimAccount
from codexlb.sim.backend import BACKEND
from codexlb.sim.faults import Fault

def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise APIError(400, "Body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "Body must be a JSON object.", code="invalid_type")
    return data


def _account(request: web.Request) -> SimAccount:
    account = request.app[BACKEND].account(request.match_info["account"])
    if account is None:
        raise APIError(404, f"No simulated account {request.match_info['account']!r}.", code="not_found")
    return account


def account_view(account: SimAccount) -> dict[str, Any]:
    now = time.time()
    return {
        "number": account.index + 1, "account_id": account.account_id, "email": account.email,
        "plan": account.plan, "access_token": account.access_token, "refresh_token": account.refresh_token,
        "id_token": account.id_token, "access_expires_at": account.access_expires_at, "revoked": account.revoked,
        "refreshes": account.refreshes, "reused": account.reused,
        "usage": account.usage_view(now),
    }


async def list_accounts(request: web.Request) -> web.Response:
    return _json({"accounts": [account_view(a) for a in request.app[BACKEND].accounts]})


async def set_usage(request: web.Request) -> web.Response:
    account = _account(request)
    body = await _body(request)
    for name, window in (("primary", account.primary), ("secondary", account.secondary)):
        value = body.get(f"{name}_used_percent")
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
            raise APIError(400, f"{name}_used_percent must be a number from 0 to 100.", code="invalid_value")
        window.used_tokens = int(window.limit_tokens * value / 100)
    return _json(account_view(account))


async def expire_token(request: web.Request) -> web.Response:
    account = _account(request)
    hold = (await _body(request)).get("hold_stale", False)
    if not isinstance(hold, bool):
        raise APIError(400, "hold_stale must be true or false.", code="invalid_value", param="hold_stale")
    if hold:
        account.renewed, account.first_401_sent = asyncio.Event(), False
    now = time.time()
    account.valid_access = {token: min(expires, now) for token, expires in account.valid_access.items()}
    account.access_expires_at = min(account.access_expires_at, now)
    return _json(account_view(account))


async def revoke(request: web.Request) -> web.Response:
    account = _account(request)
    account.revoked = True
    return _json(account_view(account))


async def list_faults(request: web.Request) -> web.Response:
    return _json({"faults": [f.to_json() for f in request.app[BACKEND].faults.list()]})


async def add_fault(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    data = await _body(request)
    if isinstance(data.get("account"), (str, int)):
        found = backend.account(str(data["account"]))
        if found is None:
            raise APIError(400, f"No simulated account {data['account']!r}.", code="invalid_value", param="account")
        data["account"] = found.account_id
    try:
        fault = Fault.from_json(data)
    except ValueError as exc:
        raise APIError(400, f"Invalid fault: {exc}", code="invalid_value") from None
    return _json(backend.faults.add(fault).to_json(), status=201)


async def clear_faults(request: web.Request) -> web.Response:
    request.app[BACKEND].faults.clear()
    return _json({"faults": []})


async def remove_fault(request: web.Request) -> web.Response:
    if not request.app[BACKEND].faults.remove(request.match_info["fault"]):
        raise APIError(404, f"No fault {request.match_info['fault']!r}.", code="not_found")
    return _json({"removed": request.match_info["fault"]})


async def drop_state(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    body = await _body(request)
    account_id = None
    if body.get("account") is not None:
        account = backend.account(str(body["account"]))
        if account is None:
            raise APIError(400, f"No simulated account {body['account']!r}.", code="invalid_value")
        account_id = account.account_id
    return _json({"dropped": backend.state.drop(account_id=account_id, response_id=body.get("response_id"))})


async def expire_state(request: web.Request) -> web.Response:
    request.app[BACKEND].state.expire_all()
    return _json({"expired": len(request.app[BACKEND].state)})


async def list_requests(request: web.Request) -> web.Response:
    return _json({"requests": request.app[BACKEND].records_view()})


async def clear_requests(request: web.Request) -> web.Response:
    request.app[BACKEND].records.clear()
    return _json({"requests": []})


async def reset(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    backend.faults.clear()
    backend.records.clear()
    backend.state.drop()
    return _json({"reset": True})


def _account_in(body: dict[str, Any], backend: Any) -> SimAccount | None:
    if body.get("account") is None:
        return None
    if not isinstance(body["account"], (str, int)) or isinstance(body["account"], bool):
        raise APIError(400, "account must be an account id or a 1-based number.", code="invalid_value",
                       param="account")
    account = backend.account(str(body["account"]))
    if account is None:
        raise APIError(400, f"No simulated account {body['account']!r}.", code="invalid_value", param="account")
    return account


async def login_next(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    body = await _body(request)
    account = _account_in(body, backend)
    error, description = body.get("error"), body.get("error_description")
    if error is not None and (not isinstance(error, str) or not error):
        raise APIError(400, "error must be an OAuth error code such as 'access_denied'.", code="invalid_value",
                       param="error")
    if description is not None and not isinstance(description, str):
        raise APIError(400, "error_description must be a string.", code="invalid_value", param="error_description")
    if account is None and error is None:
        raise APIError(400, "Give an account, an error, or both.", code="invalid_value")
    backend.auth.set_next(account, error, description)
    return _json({"next": backend.auth.upcoming().account_id, "error": error})


async def list_devices(request: web.Request) -> web.Response:
    return _json({"devices": request.app[BACKEND].auth.devices_view()})


async def approve_device(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    body = await _body(request)
    account = _account_in(body, backend)
    device = backend.auth.device_approve(body.get("user_code"), account)
    if device is None:
        raise APIError(404, f"No pending device code {body.get('user_code')!r} (unknown or expired).",
                       code="not_found", param="user_code")
    return _json(device.view(time.time()))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/__sim/accounts", list_accounts)
    r.add_post("/__sim/accounts/{account}/usage", set_usage)
    r.add_post("/__sim/accounts/{account}/expire", expire_token)
    r.add_post("/__sim/accounts/{account}/revoke", revoke)
    r.add_get("/__sim/faults", list_faults)
    r.add_post("/__sim/faults", add_fault)
    r.add_delete("/__sim/faults", clear_faults)
    r.add_delete("/__sim/faults/{fault}", remove_fault)
    r.add_post("/__sim/state/drop", drop_state)
    r.add_post("/__sim/state/expire", expire_state)
    r.add_get("/__sim/requests", list_requests)
    r.add_delete("/__sim/requests", clear_requests)
    r.add_post("/__sim/reset", reset)
    r.add_post("/__sim/login/next", login_next)
    r.add_get("/__sim/device", list_devices)
    r.add_post("/__sim/device/approve", approve_device)

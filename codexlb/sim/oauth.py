"""auth.openai.com's sign-in flows, simulated: the PKCE browser flow and the device-code flow.

Nobody types a password here. `GET /oauth/authorize` "signs in" at once as the next simulated account
(a rotation, or the one `POST /__sim/login/next` chose) and redirects back with a one-time code; a
device code is approved by `POST /__sim/device/approve`, standing in for the person in the browser.
Codes go to `POST /oauth/token` (grant_type=authorization_code) for the account's tokens.

A sign-in issues the account's tokens anew, as a refresh does: the sim keeps one token chain per
account, so the previous refresh token counts as used afterwards. Signing in to a revoked account
brings it back with fresh tokens; its old ones stay dead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

import orjson
from aiohttp import web

from codexlb.sim.accounts import SimAccount
from codexlb.sim.errors import SimError, bad_request

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
CODE_TTL_S = 600.0          # an authorization code's life
DEVICE_CODE_TTL_S = 900.0   # a device code's life (the Codex CLI says "expires in 15 minutes")
DEVICE_CALLBACK_PATH = "/deviceauth/callback"
CALLBACK_PATH = "/auth/callback"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Unambiguous characters for user codes a person types.
USER_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def invalid_grant(message: str) -> SimError:
    return SimError(400, message, code="invalid_grant")


@dataclass(slots=True)
class Grant:
    """An authorization code issued and not yet redeemed."""

    account_id: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    expires_at: float


@dataclass(slots=True)
class DeviceAuth:
    device_auth_id: str
    user_code: str
    redirect_uri: str
    expires_at: float
    polls: int = 0
    account_id: str | None = None  # set on approval
    code: str | None = None
    code_verifier: str | None = None

    def view(self, now: float) -> dict[str, Any]:
        return {"user_code": self.user_code, "status": "approved" if self.code else "pending",
                "account": self.account_id, "polls": self.polls,
                "expires_in": max(0, int(self.expires_at - now))}


class AuthServer:
    """The sign-in state of the simulated auth.openai.com: whose turn it is, codes, device codes."""

    def __init__(self, accounts: list[SimAccount], lookup: Callable[[str], SimAccount | None], *,
                 device_poll_interval_s: float) -> None:
        self.accounts = accounts
        self.lookup = lookup
        self.device_poll_interval_s = device_poll_interval_s
        self.code_ttl_s = CODE_TTL_S
        self.device_code_ttl_s = DEVICE_CODE_TTL_S
        self.grants: dict[str, Grant] = {}
        self.used_codes: set[str] = set()
        self.devices: dict[str, DeviceAuth] = {}  # by user code
        self._next = 0
        self._next_error: tuple[str, str] | None = None

    # --- who signs in ---------------------------------------------------------------------------

    def set_next(self, account: SimAccount | None, error: str | None = None,
                 error_description: str | None = None) -> None:
        """The next sign-in is `account` (the rotation goes on from it), or fails with OAuth `error`."""
        if account is not None:
            self._next = account.index
        self._next_error = (error, error_description or "The user denied the request.") if error else None

    def upcoming(self) -> SimAccount:
        """Who the next sign-in will be."""
        return self.accounts[self._next % len(self.accounts)]

    def next_account(self) -> SimAccount:
        account = self.upcoming()
        self._next = (account.index + 1) % len(self.accounts)
        return account

    def sign_in(self, account: SimAccount) -> None:
        """Fresh tokens for the account, as a completed sign-in gets them."""
        if account.revoked:
            account.valid_access.clear()
            account.revoked = False
        account.issue_tokens()

    def _issue_code(self, account: SimAccount, client_id: str, redirect_uri: str, challenge: str) -> str:
        now = time.time()
        for code, grant in list(self.grants.items()):
            if grant.expires_at <= now:
                del self.grants[code]
        code = f"ac_sim_{secrets.token_urlsafe(24)}"
        self.grants[code] = Grant(account.account_id, client_id, redirect_uri, challenge, now + self.code_ttl_s)
        return code

    # --- the browser flow -----------------------------------------------------------------------

    def authorize(self, query: Mapping[str, str]) -> str:
        """`GET /oauth/authorize`: the redirect target. A bad client or redirect_uri is answered here
        (400), since redirecting would be unsafe; any other problem goes back to the client as
        `?error=...&state=...`, as OAuth servers do."""
        client_id = query.get("client_id", "")
        if client_id != CLIENT_ID:
            raise SimError(400, f"Unknown client_id {client_id!r}.", code="invalid_client", param="client_id")
        redirect_uri = query.get("redirect_uri", "")
        if not _loopback_callback(redirect_uri):
            raise bad_request("The redirect_uri is not registered for this client: it must be "
                              f"http://localhost:<port>{CALLBACK_PATH}.", "invalid_request", "redirect_uri")
        state = query.get("state", "")

        def refuse(error: str, description: str) -> str:
            params = {"error": error, "error_description": description}
            if state:
                params["state"] = state
            return f"{redirect_uri}?{urlencode(params)}"

        if query.get("response_type") != "code":
            return refuse("unsupported_response_type", "response_type must be 'code'.")
        if "openid" not in query.get("scope", "").split():
            return refuse("invalid_scope", "The scope must include 'openid'.")
        if len(state) < 8:
            return refuse("invalid_state", "The state is missing or has fewer than 8 characters.")
        challenge = query.get("code_challenge", "")
        if not challenge:
            return refuse("invalid_request", "PKCE is required: code_challenge is missing.")
        if query.get("code_challenge_method") != "S256":
            return refuse("invalid_request", "code_challenge_method must be 'S256'.")
        if self._next_error is not None:
            error, description = self._next_error
            self._next_error = None
            return refuse(error, description)
        account = self.next_account()
        code = self._issue_code(account, client_id, redirect_uri, challenge)
        return f"{redirect_uri}?{urlencode({'code': code, 'scope': query.get('scope', ''), 'state': state})}"

    def exchange(self, form: Mapping[str, Any]) -> SimAccount:
        """`POST /oauth/token` with grant_type=authorization_code. A code is spent when first presented,
        whether or not the rest of the request holds up."""
        fields = {}
        for name in ("code", "redirect_uri", "client_id", "code_verifier"):
            value = form.get(name)
            if not isinstance(value, str) or not value:
                raise bad_request(f"Missing required parameter: '{name}'.", "invalid_request", name)
            fields[name] = value
        code = fields["code"]
        if code in self.used_codes:
            raise invalid_grant("The authorization code has already been used.")
        grant = self.grants.pop(code, None)
        if grant is None:
            raise invalid_grant("The authorization code is invalid.")
        self.used_codes.add(code)
        if grant.expires_at <= time.time():
            raise invalid_grant("The authorization code has expired.")
        if fields["client_id"] != grant.client_id:
            raise invalid_grant("The authorization code was issued to another client.")
        if fields["redirect_uri"] != grant.redirect_uri:
            raise invalid_grant("The redirect_uri does not match the one of the authorization request.")
        if not hmac.compare_digest(s256(fields["code_verifier"]), grant.code_challenge):
            raise invalid_grant("The PKCE code_verifier does not match the code_challenge.")
        account = self.lookup(grant.account_id)
        if account is None:
            raise invalid_grant("The authorization code is invalid.")
        self.sign_in(account)
        return account

    # --- the device-code flow -------------------------------------------------------------------

    def interval_text(self) -> str:
        """Seconds as a string, as upstream sends it. The Codex CLI parses whole seconds only."""
        interval = self.device_poll_interval_s
        return str(int(interval)) if float(interval).is_integer() else f"{interval:g}"

    def device_start(self, body: Mapping[str, Any], auth_base_url: str) -> dict[str, Any]:
        """`POST /api/accounts/deviceauth/usercode`."""
        if body.get("client_id") != CLIENT_ID:
            raise SimError(400, f"Unknown client_id {body.get('client_id')!r}.", code="invalid_client",
                           param="client_id")
        now = time.time()
        for user_code, device in list(self.devices.items()):
            if device.expires_at <= now:
                del self.devices[user_code]
        user_code = "-".join("".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(4)) for _ in range(2))
        device = DeviceAuth(f"deviceauth_{secrets.token_hex(12)}", user_code,
                            f"{auth_base_url}{DEVICE_CALLBACK_PATH}", now + self.device_code_ttl_s)
        self.devices[user_code] = device
        return {"device_auth_id": device.device_auth_id, "user_code": user_code,
                "interval": self.interval_text()}

    def _device(self, user_code: Any) -> DeviceAuth | None:
        device = self.devices.get(user_code.strip().upper()) if isinstance(user_code, str) else None
        if device is None or device.expires_at <= time.time():
            return None
        return device

    def device_poll(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /api/accounts/deviceauth/token`: 403 while pending, 404 for an unknown or expired code,
        the authorization code and its PKCE pair once approved (then the device code is spent)."""
        device = self._device(body.get("user_code"))
        if device is None or body.get("device_auth_id") != device.device_auth_id:
            raise SimError(404, "Device authorization not found or expired.", code="deviceauth_not_found")
        device.polls += 1
        if device.code is None or device.code_verifier is None:
            raise SimError(403, "The device authorization is pending: the user has not approved it yet.",
                           code="deviceauth_authorization_pending")
        del self.devices[device.user_code]
        return {"authorization_code": device.code, "code_challenge": s256(device.code_verifier),
                "code_verifier": device.code_verifier}

    def device_approve(self, user_code: Any, account: SimAccount | None) -> DeviceAuth | None:
        """The person entered the code and signed in as `account` (default: the rotation's next)."""
        device = self._device(user_code)
        if device is None:
            return None
        if device.code is None:
            account = account or self.next_account()
            verifier = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()
            device.code_verifier = verifier
            device.code = self._issue_code(account, CLIENT_ID, device.redirect_uri, s256(verifier))
            device.account_id = account.account_id
        return device

    def devices_view(self) -> list[dict[str, Any]]:
        now = time.time()
        return [d.view(now) for d in self.devices.values() if d.expires_at > now]


def _loopback_callback(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and port is not None
            and parts.path == CALLBACK_PATH and not parts.query and not parts.fragment)


# --- routes -------------------------------------------------------------------------------------

AUTH = web.AppKey("sim_auth", AuthServer)

DEVICE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>codexlb sim: device sign-in</title>
</head><body><h1>Simulated device sign-in</h1><p>Nobody signs in here. Approve a code with
<code>POST /__sim/device/approve {"user_code": "XXXX-XXXX", "account": "1"}</code>.</p></body></html>"""
DEVICE_DONE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>codexlb sim: signed in</title>
</head><body><h1>Signed in</h1><p>You can close this window.</p></body></html>"""


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise bad_request("The body must be a JSON object.", "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The body must be a JSON object.", "invalid_json")
    return data


# SimErrors raised here become upstream-shaped answers in the sim app's middleware.
async def authorize(request: web.Request) -> web.Response:
    location = request.app[AUTH].authorize(request.query)
    return web.Response(status=302, headers={"Location": location})


async def device_usercode(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return _json(200, request.app[AUTH].device_start(body, str(request.url.origin())))


async def device_token(request: web.Request) -> web.Response:
    return _json(200, request.app[AUTH].device_poll(await _json_body(request)))


async def device_page(request: web.Request) -> web.Response:
    return web.Response(text=DEVICE_PAGE, content_type="text/html")


async def device_done_page(request: web.Request) -> web.Response:
    return web.Response(text=DEVICE_DONE_PAGE, content_type="text/html")


def setup(app: web.Application, auth: AuthServer) -> None:
    app[AUTH] = auth
    r = app.router
    r.add_get("/oauth/authorize", authorize)
    r.add_post("/api/accounts/deviceauth/usercode", device_usercode)
    r.add_post("/api/accounts/deviceauth/token", device_token)
    r.add_get("/codex/device", device_page)
    r.add_get(DEVICE_CALLBACK_PATH, device_done_page)

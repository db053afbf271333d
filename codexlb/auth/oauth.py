"""Signing in to a ChatGPT account the way the Codex CLI does, against auth.openai.com or a `codexlb sim`.

Two flows, both ending in an authorization code that `exchange_code` trades for tokens:

- Browser (PKCE): `login_pkce` listens on http://localhost:1455/auth/callback (`CallbackServer`), hands
  the authorize URL to the caller to print or open, and takes the code from whichever comes first: the
  browser's redirect to the callback, or the redirect URL pasted by a user whose browser runs elsewhere.
- Device code: `login_device` asks for a user code, hands it to the caller to show, and polls until the
  person approves it at `<auth base>/codex/device`.

Nothing here prints. Every network wait is bounded. Failures are `LoginError`, whose message is one
line for the CLI and never holds a token, an authorization code or a verifier.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import html
import secrets
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import orjson
from aiohttp import web

from codexlb import log

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
SCOPES = "openid profile email offline_access"
DEFAULT_PORT = 1455
# auth.openai.com accepts the Codex CLI's callback on 1455, and on 1457 when 1455 is taken.
FALLBACK_PORT = 1457
CALLBACK_PATH = "/auth/callback"
DEVICE_VERIFICATION_PATH = "/codex/device"
DEVICE_CALLBACK_PATH = "/deviceauth/callback"
REQUEST_TIMEOUT_S = 30.0     # one HTTP call to the auth server
BROWSER_TIMEOUT_S = 600.0    # a person signing in through the browser
DEVICE_TIMEOUT_S = 900.0     # a device code lives 15 minutes
DEFAULT_DEVICE_INTERVAL_S = 5.0
MIN_DEVICE_INTERVAL_S = 0.05
# How long a browser's callback request is held for a `wait_for_code` to take it.
HANDLER_WAIT_S = 30.0

_log = log.get("codexlb.auth.oauth")


class LoginError(Exception):
    """A sign-in failed; the message is one line fit for the CLI, with no secrets in it."""


@dataclass(frozen=True, slots=True)
class OAuthTokens:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    id_token: str = field(repr=False)


# --- the pieces -------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, code_challenge) pair, S256, as the Codex CLI makes them."""
    verifier = _b64url(secrets.token_bytes(64))
    return verifier, _b64url(hashlib.sha256(verifier.encode()).digest())


def new_state() -> str:
    return _b64url(secrets.token_bytes(32))


def redirect_uri_for(port: int) -> str:
    return f"http://localhost:{port}{CALLBACK_PATH}"


def authorize_url(auth_base_url: str, redirect_uri: str, challenge: str, state: str) -> str:
    query = urlencode({
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri,
        "scope": SCOPES,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "id_token_add_organizations": "true",
        "codex_cli_simplified_flow": "true",
        "state": state,
    }, quote_via=quote)
    return f"{auth_base_url.rstrip('/')}/oauth/authorize?{query}"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_detail(raw: bytes) -> str:
    """What an auth server's error body says: OAuth's `error`/`error_description` or OpenAI's `error.message`."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _one_line(raw.decode(errors="replace")) or "no details"
    if isinstance(data, dict):
        error = data.get("error")
        description = data.get("error_description")
        if isinstance(error, dict):
            message, code = error.get("message"), error.get("code")
            if isinstance(message, str) and message:
                return _one_line(f"{message} ({code})" if isinstance(code, str) and code else message)
            if isinstance(code, str) and code:
                return code
        if isinstance(error, str) and error:
            return _one_line(f"{error}: {description}" if isinstance(description, str) and description else error)
    return "no details"


def _budget(deadline: float) -> float:
    """One request's timeout: at most REQUEST_TIMEOUT_S, and not much past the overall deadline."""
    return min(REQUEST_TIMEOUT_S, max(deadline - asyncio.get_running_loop().time(), 0.0) + 2.0)


async def _post(session: aiohttp.ClientSession, url: str, *, timeout: float, json: Any = None,
                form: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """POST and read the whole answer within `timeout`; unreachable servers become LoginError."""
    try:
        async with session.post(url, json=json, data=form, headers={"Accept": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.read()
    except asyncio.TimeoutError:
        raise LoginError(f"{url} did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise LoginError(f"cannot reach {url}: {_one_line(str(exc)) or type(exc).__name__}") from None


async def exchange_code(session: aiohttp.ClientSession, auth_base_url: str, code: str, redirect_uri: str,
                        verifier: str, *, timeout: float = REQUEST_TIMEOUT_S) -> OAuthTokens:
    """Trade an authorization code for tokens (`POST /oauth/token`, grant_type=authorization_code)."""
    url = f"{auth_base_url.rstrip('/')}/oauth/token"
    status, raw = await _post(session, url, timeout=timeout, form={
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
        "client_id": CLIENT_ID, "code_verifier": verifier,
    })
    _log.info("oauth code exchange", status=status)
    if status != 200:
        raise LoginError(f"sign-in failed: the token endpoint answered HTTP {status}: {_error_detail(raw)}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    tokens = {}
    for name in ("access_token", "refresh_token", "id_token"):
        value = data.get(name) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise LoginError(f"sign-in failed: the token endpoint's answer has no {name}")
        tokens[name] = value
    return OAuthTokens(**tokens)


# --- the callback -----------------------------------------------------------------------------------


class CallbackStateMismatch(ValueError):
    """A callback for some other sign-in (or a forged one)."""


class SignInRefused(ValueError):
    """The auth server sent the user back with an OAuth `error`."""


class NoCode(ValueError):
    """A callback with neither a code nor an error."""


def _check_callback(params: Mapping[str, str], expected_state: str) -> str:
    """The code of a callback's query, or why there is none."""
    state = params.get("state") or ""
    if not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise CallbackStateMismatch("the callback's state does not match this sign-in "
                                    "(a URL from another or an older login attempt?)")
    error = params.get("error")
    if error:
        description = params.get("error_description")
        reason = f"{error}: {description}" if description else error
        raise SignInRefused(_one_line(f"sign-in refused by the auth server: {reason}"))
    code = params.get("code")
    if not code:
        raise NoCode("the callback URL has no authorization code")
    return code


def parse_pasted_callback(url: str, expected_state: str) -> str:
    """The authorization code in a pasted redirect URL (`http://localhost:1455/auth/callback?code=…&state=…`,
    or just its query). ValueError, with a message for the user, if it does not hold this sign-in's code."""
    text = url.strip()
    query = urlsplit(text).query if "?" in text else (text if "=" in text else "")
    if not query:
        raise NoCode("that is not the redirect URL: it has no ?code=…&state=… part")
    params = {key: values[0] for key, values in parse_qs(query).items()}
    return _check_callback(params, expected_state)


def _page(title: str, message: str) -> str:
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>codexlb: {html.escape(title)}</title>"
            f"</head><body style=\"font-family:sans-serif;margin:3em\"><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(message)}</p></body></html>")


SUCCESS_PAGE = _page("Signed in", "codexlb received the sign-in. You can close this window and return to "
                     "the terminal.")


class CallbackServer:
    """The local end of the browser flow: `GET /auth/callback?code&state` on 127.0.0.1.

    `port` 0 picks a free one; the default, 1455, falls back to 1457 when taken, as the Codex CLI does
    (auth.openai.com accepts only those two). Callbacks that arrive before `wait_for_code` is called
    wait for it (up to HANDLER_WAIT_S).
    """

    def __init__(self, port: int = DEFAULT_PORT, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._queue: asyncio.Queue[tuple[dict[str, str], asyncio.Future[tuple[int, str]]]] = asyncio.Queue()

    @property
    def redirect_uri(self) -> str:
        return redirect_uri_for(self.port)

    async def __aenter__(self) -> CallbackServer:
        app = web.Application()
        app.router.add_get(CALLBACK_PATH, self._callback)
        # No access log: the callback's query holds the authorization code.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        ports = [self.requested_port]
        if self.requested_port == DEFAULT_PORT:
            ports.append(FALLBACK_PORT)
        try:
            for i, port in enumerate(ports):
                try:
                    await web.TCPSite(runner, self.host, port).start()
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or i == len(ports) - 1:
                        taken = " and ".join(str(p) for p in ports[: i + 1])
                        why = "in use (another login running?)" if exc.errno == errno.EADDRINUSE else exc.strerror
                        raise LoginError(f"cannot listen for the sign-in callback on {self.host} port {taken}: "
                                         f"{why}; pick another port or use the device-code login") from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        while not self._queue.empty():
            _, reply = self._queue.get_nowait()
            if not reply.done():
                reply.set_result((503, _page("Sign-in not in progress", "codexlb is no longer waiting for this "
                                             "sign-in. Start the login again.")))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _callback(self, request: web.Request) -> web.Response:
        reply: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((dict(request.query), reply))
        try:
            status, body = await asyncio.wait_for(reply, HANDLER_WAIT_S)
        except asyncio.TimeoutError:
            status, body = 503, _page("Sign-in not in progress", "codexlb is not waiting for a sign-in right now.")
        return web.Response(status=status, text=body, content_type="text/html",
                            headers={"Cache-Control": "no-store", "Connection": "close"})

    async def wait_for_code(self, expected_state: str, timeout: float) -> str:
        """The authorization code of the first callback carrying `expected_state`. A callback with another
        state gets a 400 page and is ignored; one with `error=` ends the sign-in (LoginError)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    params, reply = await self._queue.get()
                    try:
                        code = _check_callback(params, expected_state)
                    except CallbackStateMismatch as exc:
                        _log.warning("login callback with a foreign state ignored")
                        _reply(reply, 400, _page("State mismatch", f"Not for this sign-in: {exc}."))
                        continue
                    except (SignInRefused, NoCode) as exc:
                        _reply(reply, 400, _page("Sign-in failed", f"{exc}. Return to the terminal."))
                        raise LoginError(str(exc)) from None
                    _reply(reply, 200, SUCCESS_PAGE)
                    return code
        except TimeoutError:
            raise LoginError(f"sign-in timed out: no browser callback within {timeout:g} s") from None


def _reply(reply: asyncio.Future[tuple[int, str]], status: int, body: str) -> None:
    if not reply.done():
        reply.set_result((status, body))


# --- the flows --------------------------------------------------------------------------------------


async def _code_from_pastes(pasted: AsyncIterator[str], state: str,
                            on_bad_paste: Callable[[str], None] | None) -> str | None:
    async for line in pasted:
        if not line.strip():
            continue
        try:
            return parse_pasted_callback(line, state)
        except SignInRefused as exc:
            raise LoginError(str(exc)) from None
        except ValueError as exc:
            if on_bad_paste is None:
                raise LoginError(str(exc)) from None
            on_bad_paste(str(exc))
    return None


async def login_pkce(session: aiohttp.ClientSession, auth_base_url: str, *, port: int = DEFAULT_PORT,
                     open_browser: Callable[[str], None] | None = None, pasted: AsyncIterator[str] | None = None,
                     on_url: Callable[[str], None] | None = None,
                     on_bad_paste: Callable[[str], None] | None = None,
                     timeout: float = BROWSER_TIMEOUT_S) -> OAuthTokens:
    """The browser sign-in. `on_url(url)` gets the authorize URL to show; `open_browser(url)` (if given)
    opens it, and its failure is not the login's. The code comes from the callback server or from a line
    of `pasted` (the redirect URL), whichever is first; blank lines are skipped, and a line that is not
    this sign-in's URL goes to `on_bad_paste(message)` (the login keeps waiting) or, without it, fails
    the login. The end of `pasted` leaves the callback to finish the job. `timeout` bounds the wait for
    the code; the exchange after it has its own bound."""
    verifier, challenge = pkce_pair()
    state = new_state()
    async with CallbackServer(port) as server:
        url = authorize_url(auth_base_url, server.redirect_uri, challenge, state)
        if on_url is not None:
            on_url(url)
        if open_browser is not None:
            try:
                open_browser(url)
            except Exception as exc:  # the URL is shown; a browser that will not open is no failure
                _log.info("could not open a browser", error=type(exc).__name__)
        tasks = {asyncio.create_task(server.wait_for_code(state, timeout))}
        if pasted is not None:
            tasks.add(asyncio.create_task(_code_from_pastes(pasted, state, on_bad_paste)))
        try:
            code = None
            while code is None:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    code = code or task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Inside the server's life, so the browser surely gets its page.
        return await exchange_code(session, auth_base_url, code, server.redirect_uri, verifier)


async def login_device(session: aiohttp.ClientSession, auth_base_url: str, *,
                       on_code: Callable[[str, str], None], timeout: float = DEVICE_TIMEOUT_S) -> OAuthTokens:
    """The device-code sign-in. `on_code(verification_url, user_code)` gets what to show the person; then
    this polls at the server's interval until they approve (or `timeout` passes), and exchanges the code."""
    base = auth_base_url.rstrip("/")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status, raw = await _post(session, f"{base}/api/accounts/deviceauth/usercode", json={"client_id": CLIENT_ID},
                              timeout=_budget(deadline))
    if status == 404:
        raise LoginError(f"device-code login is not enabled on {base}; use the browser login")
    if status != 200:
        raise LoginError(f"device-code request failed: HTTP {status}: {_error_detail(raw)}")
    try:
        data = orjson.loads(raw)
        device_auth_id = data["device_auth_id"]
        user_code = data.get("user_code") or data["usercode"]
        interval = max(MIN_DEVICE_INTERVAL_S, float(data.get("interval") or DEFAULT_DEVICE_INTERVAL_S))
        if not (isinstance(device_auth_id, str) and isinstance(user_code, str)):
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise LoginError("device-code request failed: the server's answer is not a device code") from None
    on_code(f"{base}{DEVICE_VERIFICATION_PATH}", user_code)

    poll = {"device_auth_id": device_auth_id, "user_code": user_code}
    while True:
        trouble = ""
        try:
            status, raw = await _post(session, f"{base}/api/accounts/deviceauth/token", json=poll,
                                      timeout=_budget(deadline))
        except LoginError as exc:
            status, raw, trouble = 0, b"", str(exc)  # unreachable for a moment: keep polling
        if status == 200:
            break
        # 403 and 404 mean "not approved yet"; 429, 5xx and a lost connection are passing trouble.
        if status not in (0, 403, 404, 429) and status < 500:
            raise LoginError(f"device-code login failed: HTTP {status}: {_error_detail(raw)}")
        if status in (429,) or status >= 500:
            trouble = f"HTTP {status}: {_error_detail(raw)}"
        remaining = deadline - loop.time()
        if remaining <= 0:
            why = f"last poll: {trouble}" if trouble else "the code was not approved"
            raise LoginError(f"device-code login timed out after {timeout:g} s ({why})")
        await asyncio.sleep(min(interval, remaining))
    try:
        data = orjson.loads(raw)
        code, verifier = data["authorization_code"], data["code_verifier"]
        if not (isinstance(code, str) and code and isinstance(verifier, str) and verifier):
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise LoginError("device-code login failed: the approval carries no authorization code") from None
    return await exchange_code(session, base, code, f"{base}{DEVICE_CALLBACK_PATH}", verifier)

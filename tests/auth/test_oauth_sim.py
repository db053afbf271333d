"""Signing in to ChatGPT accounts (codexlb.auth.oauth) against the simulated auth.openai.com.

Everything goes over real loopback sockets: the `sim` fixture is the auth server, `CallbackServer`
listens on a free port, and the test plays the person's browser with an aiohttp client (following the
sim's redirect to the callback) or approves device codes through the sim's control API.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest

from codexlb.auth import jwt, oauth
from codexlb.sim.oauth import s256
from tests.simclient import body, post_responses, user

WAIT_S = 10.0  # bound on any one await a test makes; none should come close


async def control(http: aiohttp.ClientSession, sim, method: str, path: str, json: Any = None) -> tuple[int, Any]:
    data = None if json is None else orjson.dumps(json)
    async with http.request(method, f"{sim.url}/__sim{path}", data=data,
                            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, orjson.loads(await resp.read())


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def account_of(tokens: oauth.OAuthTokens) -> str:
    return jwt.claims(tokens.id_token)[jwt.AUTH_CLAIM]["chatgpt_account_id"]


async def start_pkce(http, sim, **kwargs) -> tuple[asyncio.Task, str]:
    """login_pkce running in a task, and the authorize URL it asks the user to open."""
    shown: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(oauth.login_pkce(http, sim.url, port=0, on_url=shown.set_result,
                                                timeout=kwargs.pop("timeout", WAIT_S), **kwargs))
    return task, await asyncio.wait_for(shown, WAIT_S)


async def authorize_redirect(http, url: str) -> str:
    """What the sim's authorize endpoint redirects the browser to (not followed)."""
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        return resp.headers["Location"]


async def issue_code(http, sim, redirect_uri: str = "http://localhost:1455/auth/callback") -> tuple[str, str]:
    """A fresh authorization code and its verifier, from the sim's authorize endpoint."""
    verifier, challenge = oauth.pkce_pair()
    state = oauth.new_state()
    location = await authorize_redirect(http, oauth.authorize_url(sim.url, redirect_uri, challenge, state))
    params = query(location)
    assert params["state"] == state
    return params["code"], verifier


async def works_upstream(http, sim, tokens: oauth.OAuthTokens, number: int) -> bool:
    resp, _ = await post_responses(http, sim, body(user("hi")), number=number,
                                   headers={"Authorization": f"Bearer {tokens.access_token}"})
    return resp.status == 200


async def lines(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    """What a user types, one line at a time; None ends it."""
    while (line := await queue.get()) is not None:
        yield line


# --- the browser flow ---------------------------------------------------------------------------


async def test_browser_login_signs_in_the_chosen_account_and_its_tokens_work(sim, http):
    status, chosen = await control(http, sim, "POST", "/login/next", {"account": 2})
    assert status == 200 and chosen["next"] == "acct-sim-02"
    before_refresh = sim.backend.accounts[1].refresh_token
    login, url = await start_pkce(http, sim)

    params = query(url)
    assert url.startswith(f"{sim.url}/oauth/authorize?")
    assert params["client_id"] == "app_EMoamEEZ73f0CkXaXp7hrann"
    assert params["scope"] == "openid profile email offline_access"
    assert params["response_type"] == "code" and params["code_challenge_method"] == "S256"
    assert params["id_token_add_organizations"] == "true" and params["codex_cli_simplified_flow"] == "true"
    redirect = urlsplit(params["redirect_uri"])
    assert (redirect.scheme, redirect.hostname, redirect.path) == ("http", "localhost", "/auth/callback")

    # The browser: authorize, the sim signs in and redirects to our callback, which shows its page.
    async with http.get(url) as resp:
        page = await resp.text()
        assert resp.status == 200, page
        assert resp.url.port == redirect.port and resp.url.path == "/auth/callback"
    assert "You can close this window" in page

    tokens = await asyncio.wait_for(login, WAIT_S)
    assert account_of(tokens) == "acct-sim-02"
    assert "rt_" not in repr(tokens) and tokens.access_token not in repr(tokens)
    assert await works_upstream(http, sim, tokens, number=2)

    # The refresh grant still rotates, the new refresh token included; the sim keeps one token chain
    # per account, so the refresh token from before the sign-in now counts as used.
    grant = {"grant_type": "refresh_token", "client_id": oauth.CLIENT_ID, "refresh_token": tokens.refresh_token}
    async with http.post(f"{sim.url}/oauth/token", data=grant) as resp:
        assert resp.status == 200
        rotated = await resp.json()
    assert rotated["refresh_token"] != tokens.refresh_token
    async with http.post(f"{sim.url}/oauth/token", data=grant) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "refresh_token_reused"
    async with http.post(f"{sim.url}/oauth/token", json={**grant, "refresh_token": before_refresh}) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "refresh_token_reused"


async def test_open_browser_gets_the_url_and_its_failure_is_not_the_logins(sim, http):
    visits: list[asyncio.Task] = []

    async def browse(url: str) -> int:
        async with http.get(url) as resp:
            return resp.status

    def open_browser(url: str) -> None:
        visits.append(asyncio.create_task(browse(url)))
        raise RuntimeError("no display")  # webbrowser-style trouble after the browser did start

    tokens = await oauth.login_pkce(http, sim.url, port=0, open_browser=open_browser, timeout=WAIT_S)
    assert account_of(tokens) == "acct-sim-01"
    assert [await visit for visit in visits] == [200]


async def test_sign_ins_rotate_through_the_accounts(sim, http):
    signed_in = []
    for _ in range(4):
        code, verifier = await issue_code(http, sim)
        tokens = await oauth.exchange_code(http, sim.url, code, "http://localhost:1455/auth/callback", verifier)
        signed_in.append(account_of(tokens))
    assert signed_in == ["acct-sim-01", "acct-sim-02", "acct-sim-03", "acct-sim-01"]


async def test_pasted_redirect_url_completes_the_login(sim, http):
    """A headless user: the browser runs elsewhere and its redirect never reaches our callback."""
    await control(http, sim, "POST", "/login/next", {"account": "acct-sim-03"})
    typed: asyncio.Queue[str | None] = asyncio.Queue()
    complaints: list[str] = []
    login, url = await start_pkce(http, sim, pasted=lines(typed), on_bad_paste=complaints.append)
    location = await authorize_redirect(http, url)
    assert location.startswith(query(url)["redirect_uri"] + "?")

    for line in ("", "   ", "no idea what to paste", location):
        typed.put_nowait(line)
    tokens = await asyncio.wait_for(login, WAIT_S)
    assert account_of(tokens) == "acct-sim-03"
    assert complaints == ["that is not the redirect URL: it has no ?code=…&state=… part"]
    assert await works_upstream(http, sim, tokens, number=3)


async def test_pasted_url_of_another_login_fails_without_a_complaint_handler(sim, http):
    typed: asyncio.Queue[str | None] = asyncio.Queue()
    login, url = await start_pkce(http, sim, pasted=lines(typed))
    location = await authorize_redirect(http, url)
    typed.put_nowait(location.replace(f"state={query(url)['state']}", "state=someone-elses-state"))
    with pytest.raises(oauth.LoginError, match="state does not match"):
        await asyncio.wait_for(login, WAIT_S)


async def test_end_of_pasted_input_leaves_the_callback_to_finish(sim, http):
    typed: asyncio.Queue[str | None] = asyncio.Queue()
    login, url = await start_pkce(http, sim, pasted=lines(typed))
    typed.put_nowait(None)
    async with http.get(url) as resp:
        assert resp.status == 200
    assert account_of(await asyncio.wait_for(login, WAIT_S)) == "acct-sim-01"


def test_parse_pasted_callback():
    url = "http://localhost:1455/auth/callback?code=ac_123&scope=openid&state=s-expected"
    assert oauth.parse_pasted_callback(url, "s-expected") == "ac_123"
    assert oauth.parse_pasted_callback("  code=ac_123&state=s-expected\n", "s-expected") == "ac_123"
    with pytest.raises(ValueError, match="state does not match"):
        oauth.parse_pasted_callback(url, "s-other")
    with pytest.raises(ValueError, match="no authorization code"):
        oauth.parse_pasted_callback("http://localhost:1455/auth/callback?state=s-expected", "s-expected")
    with pytest.raises(ValueError, match="access_denied: nope"):
        oauth.parse_pasted_callback("http://localhost:1455/auth/callback?error=access_denied&"
                                    "error_description=nope&state=s-expected", "s-expected")
    with pytest.raises(ValueError, match="not the redirect URL"):
        oauth.parse_pasted_callback("http://localhost:1455/auth/callback", "s-expected")


async def test_callback_with_a_wrong_state_is_refused_and_the_login_keeps_waiting(sim, http):
    login, url = await start_pkce(http, sim)
    callback = query(url)["redirect_uri"]
    async with http.get(callback, params={"code": "ac_forged", "state": "forged-state"}) as resp:
        assert resp.status == 400
        assert "State mismatch" in await resp.text()
    assert not login.done()
    async with http.get(url) as resp:
        assert resp.status == 200
    assert account_of(await asyncio.wait_for(login, WAIT_S)) == "acct-sim-01"


async def test_refused_sign_in_fails_the_login(sim, http):
    await control(http, sim, "POST", "/login/next", {"error": "access_denied"})
    login, url = await start_pkce(http, sim)
    async with http.get(url) as resp:
        assert resp.status == 400
        assert "access_denied" in await resp.text()
    with pytest.raises(oauth.LoginError, match="sign-in refused by the auth server: access_denied"):
        await asyncio.wait_for(login, WAIT_S)
    # Only that one sign-in was refused.
    code, verifier = await issue_code(http, sim)
    assert code.startswith("ac_")


async def test_browser_login_times_out_without_a_callback(sim, http):
    started = time.monotonic()
    with pytest.raises(oauth.LoginError, match=r"timed out: no browser callback within 0.2 s"):
        await oauth.login_pkce(http, sim.url, port=0, timeout=0.2)
    assert time.monotonic() - started < WAIT_S


async def test_callback_port_in_use_is_a_clear_error():
    async with oauth.CallbackServer(0) as first:
        with pytest.raises(oauth.LoginError, match=rf"port {first.port}: in use"):
            async with oauth.CallbackServer(first.port):
                pass


async def test_reused_code_is_refused(sim, http):
    redirect_uri = "http://localhost:1455/auth/callback"
    code, verifier = await issue_code(http, sim)
    tokens = await oauth.exchange_code(http, sim.url, code, redirect_uri, verifier)
    assert account_of(tokens) == "acct-sim-01"
    with pytest.raises(oauth.LoginError) as caught:
        await oauth.exchange_code(http, sim.url, code, redirect_uri, verifier)
    message = str(caught.value)
    assert "HTTP 400" in message and "already been used" in message and "invalid_grant" in message
    assert code not in message and verifier not in message and "\n" not in message


@pytest.mark.parametrize("spoil, reason", [
    ("verifier", "code_verifier does not match"),
    ("redirect_uri", "redirect_uri does not match"),
    ("code", "authorization code is invalid"),
])
async def test_exchange_checks_the_code_its_verifier_and_redirect(sim, http, spoil, reason):
    redirect_uri = "http://localhost:1455/auth/callback"
    code, verifier = await issue_code(http, sim)
    args = {"code": code, "redirect_uri": redirect_uri, "verifier": verifier}
    args[spoil] = {"verifier": oauth.pkce_pair()[0], "redirect_uri": "http://localhost:1457/auth/callback",
                   "code": "ac_sim_made_up"}[spoil]
    with pytest.raises(oauth.LoginError, match=reason):
        await oauth.exchange_code(http, sim.url, args["code"], args["redirect_uri"], args["verifier"])


async def test_expired_code_is_refused(sim, http):
    sim.backend.auth.code_ttl_s = 0.0
    code, verifier = await issue_code(http, sim)
    with pytest.raises(oauth.LoginError, match="expired"):
        await oauth.exchange_code(http, sim.url, code, "http://localhost:1455/auth/callback", verifier)


async def test_token_endpoint_accepts_json_and_names_missing_parameters(sim, http):
    code, verifier = await issue_code(http, sim)
    grant = {"grant_type": "authorization_code", "code": code, "client_id": oauth.CLIENT_ID,
             "redirect_uri": "http://localhost:1455/auth/callback", "code_verifier": verifier}
    async with http.post(f"{sim.url}/oauth/token", json={**grant, "code_verifier": None}) as resp:
        error = (await resp.json())["error"]
        assert resp.status == 400 and (error["code"], error["param"]) == ("invalid_request", "code_verifier")
    async with http.post(f"{sim.url}/oauth/token", json=grant) as resp:
        assert resp.status == 200
        tokens = await resp.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
    assert {"access_token", "refresh_token", "id_token"} <= tokens.keys()


async def test_authorize_validates_the_request(sim, http):
    _, challenge = oauth.pkce_pair()
    good = {"response_type": "code", "client_id": oauth.CLIENT_ID, "scope": oauth.SCOPES,
            "redirect_uri": "http://localhost:1455/auth/callback", "code_challenge": challenge,
            "code_challenge_method": "S256", "state": "state-12345"}

    async def authorize(**changes: str | None) -> aiohttp.ClientResponse:
        params = {k: v for k, v in {**good, **changes}.items() if v is not None}
        async with http.get(f"{sim.url}/oauth/authorize", params=params, allow_redirects=False) as resp:
            await resp.read()
            return resp

    # Not redirected: the client or its redirect_uri cannot be trusted.
    for changes, code in (({"client_id": "app_other"}, "invalid_client"),
                          ({"redirect_uri": "https://evil.example/auth/callback"}, "invalid_request"),
                          ({"redirect_uri": None}, "invalid_request")):
        resp = await authorize(**changes)
        assert resp.status == 400, changes
    async with http.get(f"{sim.url}/oauth/authorize", params={**good, "client_id": "x"}) as resp:
        assert (await resp.json())["error"]["code"] == "invalid_client"
    # Redirected back with an OAuth error.
    for changes, error in (({"code_challenge": None}, "invalid_request"),
                           ({"code_challenge_method": "plain"}, "invalid_request"),
                           ({"code_challenge_method": None}, "invalid_request"),
                           ({"response_type": "token"}, "unsupported_response_type")):
        resp = await authorize(**changes)
        assert resp.status == 302, changes
        params = query(resp.headers["Location"])
        assert params["error"] == error and params["state"] == "state-12345" and "code" not in params
    resp = await authorize()
    assert resp.status == 302 and query(resp.headers["Location"])["code"].startswith("ac_")


# --- the device-code flow -------------------------------------------------------------------------


def device_session(pending: asyncio.Event) -> aiohttp.ClientSession:
    """A session that sets `pending` when a device-code poll is answered 403 (not approved yet)."""
    async def on_end(_session: Any, _ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        if params.url.path == "/api/accounts/deviceauth/token" and params.response.status == 403:
            pending.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    return aiohttp.ClientSession(trace_configs=[trace], timeout=aiohttp.ClientTimeout(total=30))


async def test_device_login_polls_until_approved(sim, http):
    pending = asyncio.Event()
    shown: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
    async with device_session(pending) as session:
        login = asyncio.create_task(oauth.login_device(
            session, sim.url, on_code=lambda url, code: shown.set_result((url, code)), timeout=WAIT_S))
        verification_url, user_code = await asyncio.wait_for(shown, WAIT_S)
        assert verification_url == f"{sim.url}/codex/device"
        await asyncio.wait_for(pending.wait(), WAIT_S)
        assert not login.done()

        status, devices = await control(http, sim, "GET", "/device")
        assert status == 200 and devices["devices"][0]["status"] == "pending"
        assert devices["devices"][0]["polls"] >= 1
        status, approved = await control(http, sim, "POST", "/device/approve",
                                         {"user_code": user_code, "account": "3"})
        assert status == 200 and approved["status"] == "approved" and approved["account"] == "acct-sim-03"
        tokens = await asyncio.wait_for(login, WAIT_S)
    assert account_of(tokens) == "acct-sim-03"
    assert await works_upstream(http, sim, tokens, number=3)
    # The device code is spent.
    status, _ = await control(http, sim, "POST", "/device/approve", {"user_code": user_code})
    assert status == 404


async def test_device_login_times_out_when_never_approved(sim, http):
    pending = asyncio.Event()
    started = time.monotonic()
    async with device_session(pending) as session:
        with pytest.raises(oauth.LoginError, match=r"timed out after 0.3 s \(the code was not approved\)"):
            await oauth.login_device(session, sim.url, on_code=lambda url, code: None, timeout=0.3)
    assert pending.is_set()
    assert time.monotonic() - started < WAIT_S


async def test_device_endpoints_as_the_codex_cli_sees_them(sim, http):
    async with http.post(f"{sim.url}/api/accounts/deviceauth/usercode", json={"client_id": "app_other"}) as resp:
        assert resp.status == 400
    async with http.post(f"{sim.url}/api/accounts/deviceauth/usercode",
                         json={"client_id": oauth.CLIENT_ID}) as resp:
        assert resp.status == 200
        started = await resp.json()
    assert started["interval"] == "1" and started["device_auth_id"] and started["user_code"]
    poll = {"device_auth_id": started["device_auth_id"], "user_code": started["user_code"]}
    token_url = f"{sim.url}/api/accounts/deviceauth/token"
    async with http.post(token_url, json=poll) as resp:
        assert resp.status == 403
    async with http.post(token_url, json={**poll, "device_auth_id": "deviceauth_other"}) as resp:
        assert resp.status == 404

    status, _ = await control(http, sim, "POST", "/device/approve", {"user_code": "NOPE-NOPE"})
    assert status == 404
    status, _ = await control(http, sim, "POST", "/device/approve", {"user_code": started["user_code"]})
    assert status == 200
    async with http.post(token_url, json=poll) as resp:
        assert resp.status == 200
        issued = await resp.json()
    assert issued["code_challenge"] == s256(issued["code_verifier"])
    async with http.post(token_url, json=poll) as resp:
        assert resp.status == 404

    # The code is bound to <auth base>/deviceauth/callback.
    with pytest.raises(oauth.LoginError, match="redirect_uri does not match"):
        await oauth.exchange_code(http, sim.url, issued["authorization_code"],
                                  "http://localhost:1455/auth/callback", issued["code_verifier"])


async def test_device_login_reports_a_server_without_it(http):
    from aiohttp import web

    runner = web.AppRunner(web.Application())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        base = "http://127.0.0.1:%d" % runner.addresses[0][1]
        with pytest.raises(oauth.LoginError, match="device-code login is not enabled"):
            await oauth.login_device(http, base, on_code=lambda url, code: None, timeout=5)
    finally:
        await runner.cleanup()


async def test_device_poll_interval_is_configurable():
    from codexlb.sim.backend import SimConfig
    from codexlb.sim.running import running_sim

    async with running_sim(SimConfig(accounts=1, device_poll_interval_s=0.25)) as fast, \
            aiohttp.ClientSession() as http:
        async with http.post(f"{fast.url}/api/accounts/deviceauth/usercode",
                             json={"client_id": oauth.CLIENT_ID}) as resp:
            assert (await resp.json())["interval"] == "0.25"

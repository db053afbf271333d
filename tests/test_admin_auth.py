"""Who gets into the admin API: this machine until a password exists, then sessions (with CSRF
tokens) or the CLI's local token; cross-site calls never; password guessing slowly."""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import pytest

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from codexlb import admin_auth
from codexlb.admin_auth import LOGIN_FAILURES, SESSION_COOKIE, TOKEN_FILE, hash_password, verify_password
from codexlb.errors import APIError
from codexlb.app import create_app
from codexlb.services import ADMIN
from codexlb.store import Store
from codexlb.trusted_proxies import TRUSTED_PROXIES, TrustedProxies
from tests.keys.conftest import keyed_app
from tests.serving import child_env, serving

REMOTE = {"x-test-remote": "203.0.113.7"}
PASSWORD = "correct horse battery"


def test_password_hashes_verify_and_differ():
    stored = hash_password(PASSWORD)
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored) and not verify_password("wrong", stored)
    assert hash_password(PASSWORD) != stored  # salted
    assert not verify_password(PASSWORD, "garbage") and not verify_password(PASSWORD, "md5$x$y$z$a$b")


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(keyed_app(settings))


async def set_password(client) -> None:
    resp = await client.post("/api/admin/password", json={"password": PASSWORD})
    assert resp.status == 200, await resp.text()


async def login(client, headers=None) -> str:
    resp = await client.post("/api/login", json={"password": PASSWORD}, headers=headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["csrf_token"]


async def code(resp) -> tuple[int, str | None]:
    return resp.status, (await resp.json()).get("error", {}).get("code")


async def test_without_a_password_this_machine_only(client):
    assert (await client.get("/api/accounts")).status == 200
    assert await code(await client.get("/api/accounts", headers=REMOTE)) == (403, "admin_forbidden")
    assert await code(await client.post("/api/login", json={"password": "x"}, headers=REMOTE)) == (
        401, "invalid_password")


async def test_without_a_password_a_local_reverse_proxy_is_not_this_machine(client, settings):
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    status, error = await code(await client.get("/api/accounts", headers=forwarded))
    assert (status, error) == (403, "admin_forbidden")
    # Not even with the CLI's token: a proxy in front makes a request someone else's.
    token = (settings.data_dir / TOKEN_FILE).read_text()
    resp = await client.get("/api/accounts", headers={**forwarded, "Authorization": f"Bearer {token}"})
    assert await code(resp) == (403, "admin_forbidden")


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}])
async def test_cross_site_state_changes_are_refused(client, headers):
    resp = await client.post("/api/keys", json={"name": "x"}, headers=headers)
    assert await code(resp) == (403, "csrf_failed")
    assert (await (await client.get("/api/keys")).json())["keys"] == []


async def test_with_a_password_sessions_and_csrf_tokens(client):
    await set_password(client)
    # Even this machine must log in now (or bring the local token, below).
    assert await code(await client.get("/api/accounts")) == (401, "admin_login_required")
    assert await code(await client.post("/api/login", json={"password": "wrong"}, headers=REMOTE)) == (
        401, "invalid_password")
    csrf = await login(client, REMOTE)
    assert (await client.get("/api/keys", headers=REMOTE)).status == 200
    # A state change with the session cookie alone is what a forged request looks like.
    assert await code(await client.post("/api/keys", json={"name": "ci"}, headers=REMOTE)) == (403, "csrf_failed")
    assert await code(await client.post("/api/keys", json={"name": "ci"},
                                        headers={**REMOTE, "X-CSRF-Token": "guess"})) == (403, "csrf_failed")
    resp = await client.post("/api/keys", json={"name": "ci"}, headers={**REMOTE, "X-CSRF-Token": csrf})
    assert resp.status == 201
    assert (await client.post("/api/logout", headers=REMOTE)).status == 200
    assert await code(await client.get("/api/keys", headers=REMOTE)) == (401, "admin_login_required")


async def test_credentials_that_are_not_ascii_are_refused_not_a_500(client):
    # hmac.compare_digest takes no str with a non-ASCII character: such a header was a 500.
    await set_password(client)
    resp = await client.get("/api/keys", headers={"Authorization": "Bearer \u00e9"})
    assert await code(resp) == (401, "admin_login_required")
    await login(client, REMOTE)
    resp = await client.post("/api/keys", json={"name": "x"}, headers={**REMOTE, "X-CSRF-Token": "\u00e9"})
    assert await code(resp) == (403, "csrf_failed")


async def test_the_session_cookie_is_locked_down(client):
    await set_password(client)
    resp = await client.post("/api/login", json={"password": PASSWORD})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS it is set


async def test_the_dashboard_works_behind_a_tls_reverse_proxy(client):
    # nginx as set up by default: TLS ends there, and it passes its own upstream address as Host.
    await set_password(client)
    browser = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Host": "127.0.0.1:2455",
               "Origin": "https://lb.example.com", "Sec-Fetch-Site": "same-origin"}
    resp = await client.post("/api/login", json={"password": PASSWORD}, headers=browser)
    assert resp.status == 200 and "Secure" in resp.headers["Set-Cookie"]
    csrf = (await resp.json())["csrf_token"]
    # The browser sends the Secure cookie back over its HTTPS connection to the proxy.
    browser["Cookie"] = f"{SESSION_COOKIE}={resp.cookies[SESSION_COOKIE].value}"
    resp = await client.post("/api/keys", json={"name": "via-nginx"}, headers={**browser, "X-CSRF-Token": csrf})
    assert resp.status == 201
    # What the browser says of a call from another site still counts.
    resp = await client.post("/api/keys", json={"name": "forged"},
                             headers={**browser, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"})
    assert await code(resp) == (403, "csrf_failed")


async def test_the_cli_token_works_from_this_machine_only(client, settings):
    await set_password(client)
    token = (settings.data_dir / TOKEN_FILE).read_text()
    assert (settings.data_dir / TOKEN_FILE).stat().st_mode & 0o077 == 0
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/accounts", headers=bearer)).status == 200
    assert (await client.post("/api/keys", json={"name": "cli"}, headers=bearer)).status == 201
    assert await code(await client.get("/api/accounts", headers={**bearer, **REMOTE})) == (
        401, "admin_login_required")


async def test_password_guessing_is_slowed(client):
    await set_password(client)
    for _ in range(LOGIN_FAILURES):
        assert (await client.post("/api/login", json={"password": "nope"}, headers=REMOTE)).status == 401
    resp = await client.post("/api/login", json={"password": PASSWORD}, headers=REMOTE)
    assert await code(resp) == (429, "login_rate_limited") and int(resp.headers["Retry-After"]) >= 1
    # Another address is not held back by this one's failures.
    assert (await client.post("/api/login", json={"password": PASSWORD},
                              headers={"x-test-remote": "198.51.100.1"})).status == 200


@pytest.mark.parametrize("header", ["X-Forwarded-For", "X-Real-IP", "Forwarded"])
async def test_forwarding_headers_do_not_reset_the_login_limit(client, header):
    # From a peer nobody listed in trusted_proxies, the headers are the client's own writing: 40 of them
    # each naming another address used to get 40 checks (and 401s).
    await set_password(client)
    statuses = []
    for n in range(40):
        value = f"for=10.9.0.{n}" if header == "Forwarded" else f"10.9.0.{n}"
        resp = await client.post("/api/login", json={"password": "nope"}, headers={header: value})
        statuses.append(resp.status)
    assert statuses == [401] * LOGIN_FAILURES + [429] * (40 - LOGIN_FAILURES)


async def test_concurrent_wrong_logins_get_no_more_checks_than_the_limit(client):
    # The failure count was read before the (awaited) password check: 400 at once all got 401.
    await set_password(client)
    responses = await asyncio.gather(*(client.post("/api/login", json={"password": "nope"}) for _ in range(60)))
    statuses = [r.status for r in responses]
    assert statuses.count(401) <= LOGIN_FAILURES and statuses.count(401) + statuses.count(429) == 60
    assert all(int(r.headers["Retry-After"]) >= 1 for r in responses if r.status == 429)


@pytest.fixture
async def behind_proxy(aiohttp_client, settings):
    """codexlb behind a reverse proxy on this machine, which the operator listed in trusted_proxies."""
    return await aiohttp_client(keyed_app(dataclasses.replace(settings, trusted_proxies=("127.0.0.1",))))


async def test_behind_a_reverse_proxy_each_client_has_its_own_failed_logins(behind_proxy):
    client = behind_proxy
    await set_password(client)
    # The proxy appends the address it saw; what a client wrote in front of it does not count.
    guesser = {"X-Forwarded-For": "198.51.100.1, 203.0.113.66"}
    for _ in range(LOGIN_FAILURES):
        assert (await client.post("/api/login", json={"password": "nope"}, headers=guesser)).status == 401
    spoofing = {"X-Forwarded-For": "192.0.2.10, 203.0.113.66"}
    assert await code(await client.post("/api/login", json={"password": PASSWORD}, headers=spoofing)) == (
        429, "login_rate_limited")
    operator = {"X-Forwarded-For": "192.0.2.10"}
    assert (await client.post("/api/login", json={"password": PASSWORD}, headers=operator)).status == 200


async def test_failed_logins_are_forgotten_once_many_addresses_have_failed(monkeypatch):
    monkeypatch.setattr(admin_auth, "TRACKED_ADDRESSES", 2)
    now = [0.0]
    auth = admin_auth.AdminAuth(hash_password(PASSWORD), "token", clock=lambda: now[0])
    app = web.Application()
    app[TRUSTED_PROXIES] = TrustedProxies(("127.0.0.1",))

    async def fail_from(address: str) -> None:
        request = make_mocked_request("POST", "/api/login", headers={"X-Forwarded-For": address}, app=app).clone(
            remote="127.0.0.1")  # behind a reverse proxy on this machine
        with pytest.raises(APIError):
            await auth.login(request, "wrong")

    try:
        for address in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            await fail_from(address)
        assert len(auth._failures) == 3  # all within the window: each still counts
        now[0] = admin_auth.LOGIN_WINDOW_S + 1
        await fail_from("198.51.100.4")
        assert list(auth._failures) == ["198.51.100.4"]
    finally:
        auth.close()


async def test_a_new_password_ends_every_session(client):
    await set_password(client)
    csrf = await login(client, REMOTE)
    resp = await client.post("/api/admin/password", json={"password": PASSWORD + "!"},
                             headers={**REMOTE, "X-CSRF-Token": csrf})
    assert resp.status == 200
    assert await code(await client.get("/api/keys", headers=REMOTE)) == (401, "admin_login_required")


async def test_short_passwords_are_refused(client):
    assert await code(await client.post("/api/admin/password", json={"password": "short"})) == (400, "invalid_value")


async def set_with_cli(settings) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codexlb", "admin", "set-password", "--password-stdin", "--port", str(settings.port),
        "--data-dir", str(settings.data_dir), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=child_env())
    out, err = await asyncio.wait_for(proc.communicate(PASSWORD.encode() + b"\n"), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_cli_sets_the_password_in_the_data_dir(settings):
    assert "data dir" in await set_with_cli(dataclasses.replace(settings, port=9))
    store = await Store.open_for(settings)
    try:
        assert verify_password(PASSWORD, await store.admin_password())
    finally:
        await store.close()


async def test_cli_sets_the_password_on_the_running_server(settings):
    app = create_app(dataclasses.replace(settings, port=0))
    async with serving(settings, app) as port:
        assert "running server" in await set_with_cli(dataclasses.replace(settings, port=int(port)))
        assert app[ADMIN].password_hash is not None and verify_password(PASSWORD, app[ADMIN].password_hash)


async def test_a_mistyped_field_is_refused_by_name(client):
    resp = await client.post("/api/admin/password", json={"password": PASSWORD, "confirm": PASSWORD})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == "confirm" and "confirm" in body["error"]["message"]

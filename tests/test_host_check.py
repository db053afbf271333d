"""DNS rebinding: the dashboard and the admin API answer only to names that are this server's; the proxy
routes answer whatever the Host, under their own rule (`codexlb.handlers.client_auth`)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from codexlb.services import KEYS
from tests.keys.conftest import keyed_app

EVIL = "evil.example"
ADMIN_READS = ("/api/keys", "/api/accounts", "/api/session", "/api/live", "/metrics", "/", "/dashboard/app.js")


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(keyed_app(settings))


def rebound(client, name: str = EVIL) -> dict[str, str]:
    """What a browser sends once a page on `name` has had that name resolve to 127.0.0.1."""
    origin = f"http://{name}:{client.port}"
    return {"Host": f"{name}:{client.port}", "Origin": origin, "Sec-Fetch-Site": "same-origin"}


async def refused(resp, name: str = EVIL) -> None:
    assert resp.status == 421, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "host_not_allowed" and error["type"] == "invalid_request_error"
    assert repr(name) in error["message"]
    assert all(how in error["message"] for how in ("allowed_hosts", "CODEXLB_ALLOWED_HOSTS", "--allowed-hosts"))


async def raw_status(client, request: bytes) -> bytes:
    """A request sent as written: client libraries add a Host and tidy paths."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(request)
        status = await reader.readline()
    finally:
        writer.close()
    return status.split()[1]


async def test_a_rebound_page_cannot_create_a_key(client):
    # The curl: no admin password yet, so before this check it answered 201 with the key.
    resp = await client.post("/api/keys", json={"name": "x"}, headers=rebound(client))
    await refused(resp)
    assert await client.app[KEYS].list() == []


@pytest.mark.parametrize("path", ADMIN_READS)
async def test_a_rebound_page_reads_nothing(client, path):
    await refused(await client.get(path, headers=rebound(client)))


@pytest.mark.parametrize("path", ["/v1/../api/keys", "/health/%2e%2e/api/keys", "/api/codex/../keys"])
async def test_a_proxy_prefix_does_not_lead_elsewhere(client, path):
    # The Host rule skips the proxy and health paths by prefix: the router must not take one elsewhere
    # (no route: 404; on a proxy prefix with no key yet, the Host is refused there: 421).
    assert await raw_status(client, f"GET {path} HTTP/1.1\r\nHost: {EVIL}\r\n\r\n".encode()) in (b"404", b"421")


async def test_the_host_is_checked_before_anything_else(client):
    # Not even whether an admin password is set, or that an account exists, comes out.
    resp = await client.post("/api/login", json={"password": "guess"}, headers=rebound(client))
    await refused(resp)
    resp = await client.delete("/api/accounts/nobody", headers={**rebound(client), "x-test-remote": "203.0.113.7"})
    await refused(resp)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "127.0.0.1", "127.1.2.3", "[::1]", "10.1.2.3",
                                  "[2001:db8::1]"])
@pytest.mark.parametrize("port", [True, False])
async def test_localhost_and_ip_literals_are_answered(client, host, port):
    # A page cannot rebind an address, only a name: any IP literal is safe to answer.
    headers = {"Host": f"{host}:{client.port}" if port else host}
    assert (await client.get("/api/keys", headers=headers)).status == 200


async def test_a_request_without_host_is_no_browser(client):
    # HTTP/1.0 tools may leave Host out; browsers never do.
    assert await raw_status(client, b"GET /api/keys HTTP/1.0\r\n\r\n") == b"200"


@pytest.fixture
async def named(aiohttp_client, settings):
    """A server the operator reaches as lb.example.com (a reverse proxy) and under every *.lan.example."""
    settings = dataclasses.replace(settings, allowed_hosts=("lb.example.com", "*.lan.example"))
    return await aiohttp_client(keyed_app(settings))


@pytest.mark.parametrize("host", ["lb.example.com", "LB.Example.Com:443", "lb.example.com.", "box.lan.example",
                                  "a.b.lan.example:8443"])
async def test_names_the_operator_allows_are_answered(named, host):
    resp = await named.post("/api/keys", json={"name": "x"}, headers={**rebound(named), "Host": host})
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("host", [EVIL, "lan.example", "lb.example.com.evil.example", "xlb.example.com",
                                  "evil-lan.example"])
async def test_other_names_are_still_refused(named, host):
    await refused(await named.get("/api/keys", headers={"Host": host}), host)


async def test_the_listen_address_is_answered_by_its_name(aiohttp_client, settings):
    app = keyed_app(dataclasses.replace(settings, host="codexlb.internal", allow_unauthenticated=True))
    client = await aiohttp_client(app)
    assert (await client.get("/api/keys", headers={"Host": f"codexlb.internal:{client.port}"})).status == 200
    await refused(await client.get("/api/keys", headers=rebound(client)))


async def test_without_keys_a_rebound_page_cannot_use_the_proxy_routes(client):
    # No key yet, so this machine is served without one: a page whose name rebound to 127.0.0.1 would
    # spend the pool from the operator's browser and read the answers (it was served: 200).
    await refused(await client.get("/v1/__whoami", headers=rebound(client)))
    await refused(await client.post("/v1/responses", json={"model": "m", "input": "hi"}, headers=rebound(client)))
    assert (await client.get("/v1/__whoami", headers={"Host": f"localhost:{client.port}"})).status == 200


async def test_with_a_key_the_proxy_routes_answer_any_host(client):
    key, record = await client.app[KEYS].create("laptop")
    resp = await client.get("/v1/__whoami", headers={**rebound(client), "Authorization": f"Bearer {key}"})
    assert resp.status == 200 and (await resp.json())["key_id"] == record.id
    resp = await client.get("/backend-api/__whoami", headers=rebound(client))
    assert resp.status == 401  # the key rule, not the Host rule
    assert (await client.get("/health/live", headers=rebound(client))).status == 200

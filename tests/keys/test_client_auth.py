"""The proxy routes on a real app: who gets in with which key, and what everyone else is told."""

from __future__ import annotations

import dataclasses

import pytest

from codexlb.services import KEYS
from tests.keys.conftest import GUARDED, keyed_app

REMOTE = {"x-test-remote": "203.0.113.7"}


def refused(body: dict) -> None:
    """The exact 401 shape OpenAI clients know."""
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key" and error["param"] is None
    assert "sk-clb-" not in error["message"]


@pytest.mark.parametrize("path", GUARDED)
async def test_no_keys_serves_loopback_clients(client, path):
    resp = await client.get(path)
    assert resp.status == 200 and await resp.json() == {"key_id": None}


@pytest.mark.parametrize("path", GUARDED)
async def test_no_keys_refuses_remote_clients(client, path):
    resp = await client.get(path, headers=REMOTE)
    assert resp.status == 401
    body = await resp.json()
    refused(body)
    assert "no API keys" in body["error"]["message"] and "codexlb keys create" in body["error"]["message"]


@pytest.mark.parametrize("header", [{"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7"},
                                    {"X-Real-IP": "203.0.113.7"}, {"CF-Connecting-IP": "203.0.113.7"}])
async def test_no_keys_refuses_clients_a_local_reverse_proxy_forwards(client, header):
    # nginx, Caddy or cloudflared on this machine connect from 127.0.0.1 on behalf of anyone.
    resp = await client.get("/v1/__whoami", headers=header)
    assert resp.status == 401
    body = await resp.json()
    refused(body)
    assert f"came through a proxy ({next(iter(header))})" in body["error"]["message"]


async def test_allow_unauthenticated_serves_remote_clients_while_no_key_exists(aiohttp_client, settings):
    app = keyed_app(dataclasses.replace(settings, allow_unauthenticated=True))
    client = await aiohttp_client(app)
    assert (await client.get("/v1/__whoami", headers=REMOTE)).status == 200
    await app[KEYS].create("now-keys-rule")
    resp = await client.get("/v1/__whoami", headers=REMOTE)
    assert resp.status == 401
    refused(await resp.json())


@pytest.mark.parametrize("path", GUARDED)
async def test_with_keys_a_missing_wrong_or_revoked_key_is_refused(client, app, path):
    key, _ = await app[KEYS].create("laptop")
    revoked, _ = await app[KEYS].create("old")
    await app[KEYS].revoke("old")
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"x-api-key": wrong},
                    {"Authorization": f"Bearer {revoked}"}, {"x-api-key": revoked},
                    {"Authorization": key},                   # no scheme
                    {"Authorization": f"Basic {key}"},
                    {"Authorization": "Bearer "}, {"Authorization": "Bearer sk-other-provider-key"}):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401, headers
        body = await resp.json()
        refused(body)
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers.get("x-request-id")


async def test_with_keys_loopback_needs_a_key_too(client, app):
    await app[KEYS].create("laptop")
    resp = await client.get("/v1/__whoami")
    assert resp.status == 401
    assert (await resp.json())["error"]["message"].startswith("No API key provided.")


@pytest.mark.parametrize("path", GUARDED)
async def test_a_valid_key_is_served_as_bearer_or_x_api_key(client, app, path):
    key, record = await app[KEYS].create("laptop")
    for headers in ({"Authorization": f"Bearer {key}"}, {"authorization": f"bearer {key}"}, {"x-api-key": key},
                    {"Authorization": "Bearer sk-not-ours", "x-api-key": key}, {**REMOTE, "x-api-key": key}):
        resp = await client.get(path, headers=headers)
        assert resp.status == 200, headers
        assert await resp.json() == {"key_id": record.id}


async def test_revoke_through_the_admin_api_takes_effect_on_the_next_request(client):
    created = await (await client.post("/api/keys", json={"name": "ci"})).json()
    kept = await (await client.post("/api/keys", json={"name": "laptop"})).json()
    headers = {**REMOTE, "Authorization": f"Bearer {created['key']}"}
    assert (await client.get("/v1/__whoami", headers=headers)).status == 200
    assert (await client.delete("/api/keys/ci")).status == 200
    resp = await client.get("/v1/__whoami", headers=headers)
    assert resp.status == 401
    refused(await resp.json())
    assert (await client.get("/v1/__whoami", headers={"x-api-key": kept["key"]})).status == 200
    # The last key gone: back to serving this machine only, so a remote client with the old key is still out.
    assert (await client.delete(f"/api/keys/{kept['api_key']['id']}")).status == 200
    assert (await client.get("/v1/__whoami", headers={**REMOTE, "x-api-key": kept["key"]})).status == 401
    assert (await client.get("/v1/__whoami")).status == 200


async def test_health_and_admin_routes_are_not_guarded(client, app):
    await app[KEYS].create("laptop")
    assert (await client.get("/health/live")).status == 200
    assert (await client.get("/health/ready")).status == 200
    assert (await client.get("/health/live", headers=REMOTE)).status == 200
    assert (await client.get("/api/accounts")).status == 200
    assert (await client.get("/api/keys")).status == 200
    # The admin API keeps its own rule: loopback only, key or not.
    for path in ("/api/accounts", "/api/keys"):
        resp = await client.get(path, headers=REMOTE)
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "admin_forbidden"
    # Unknown routes outside the proxy prefixes stay plain 404s.
    assert (await client.get("/nope")).status == 404

"""`/api/keys` on the real app: the key is in one response, the one that creates it."""

from __future__ import annotations

import pytest

from codexlb.services import KEYS

REMOTE = {"x-test-remote": "198.51.100.4"}


async def test_create_list_revoke(client, app):
    resp = await client.post("/api/keys", json={"name": "laptop", "max_concurrency": 2})
    assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
    created = await resp.json()
    key = created["key"]
    view = created["api_key"]
    assert view["name"] == "laptop" and view["max_concurrency"] == 2 and view["status"] == "active"
    assert view["prefix"] == key[:11] and key not in str(view)
    assert set(view) == {"id", "name", "prefix", "status", "created_at", "last_used_at", "revoked_at",
                         "max_concurrency", "rpm", "tokens_5h", "tokens_day", "tokens_week", "models", "expires_at",
                         "note", "use"}
    assert app[KEYS].verify(key) is not None

    listed = await client.get("/api/keys")
    text = await listed.text()
    assert key not in text and key[11:] not in text
    assert [k["id"] for k in (await listed.json())["keys"]] == [view["id"]]

    unnamed = await client.post("/api/keys")
    assert unnamed.status == 201 and (await unnamed.json())["api_key"]["name"] == "key-1"

    gone = await client.delete(f"/api/keys/{view['id']}")
    assert gone.status == 200 and (await gone.json())["api_key"]["status"] == "revoked"
    again = await client.delete("/api/keys/laptop")
    assert again.status == 400 and "already revoked" in (await again.json())["error"]["message"]
    missing = await client.delete("/api/keys/nobody")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(("body", "code"), [
    (b"{nope", "invalid_json"),
    (b"[]", "invalid_type"),
    (b'{"name": 7}', "invalid_type"),
    (b'{"name": "has space"}', "invalid_value"),
    (b'{"max_concurrency": 0}', "invalid_value"),
    (b'{"max_concurrency": "3"}', "invalid_value"),
    (b'{"rpm": "abc"}', "invalid_value"),
    (b'{"rpmm": 3}', "unknown_parameter"),
    (b'{"name": "k", "max_concurency": 2}', "unknown_parameter"),
])
async def test_bad_creates_are_refused(client, body, code):
    resp = await client.post("/api/keys", data=body)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == code
    assert (await (await client.get("/api/keys")).json())["keys"] == []


async def test_remote_clients_cannot_manage_keys(client, app):
    for method, path in (("GET", "/api/keys"), ("POST", "/api/keys"), ("DELETE", "/api/keys/x")):
        resp = await client.request(method, path, headers=REMOTE)
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "admin_forbidden"
    assert not app[KEYS].has_keys

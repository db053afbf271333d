"""`/api/accounts` on the real app: what the dashboard and a running server's CLI use."""

from __future__ import annotations

import orjson
import pytest



async def test_import_list_pause_resume_remove(client, sim):
    auth = sim.backend.accounts[0].auth_json()
    resp = await client.post("/api/accounts", data=orjson.dumps({**auth, "alias": "work"}))
    assert resp.status == 201
    created = await resp.json()
    assert created["outcome"] == "added" and created["account"]["alias"] == "work"
    assert "access_token" not in str(created) and auth["tokens"]["access_token"] not in await resp.text()
    again = await client.post("/api/accounts", data=orjson.dumps(auth))
    assert again.status == 200 and (await again.json())["outcome"] == "kept"

    listed = await (await client.get("/api/accounts")).json()
    assert [a["alias"] for a in listed["accounts"]] == ["work"]
    paused = await client.post("/api/accounts/work/pause")
    assert (await paused.json())["account"]["status"] == "paused"
    resumed = await client.post("/api/accounts/1/resume")
    assert (await resumed.json())["account"]["status"] == "active"
    twice = await client.post("/api/accounts/work/resume")
    assert twice.status == 400 and (await twice.json())["error"]["message"] == "account 'work' is active, not paused"
    gone = await client.delete(f"/api/accounts/{sim.backend.accounts[0].account_id}")
    assert gone.status == 200
    assert (await (await client.get("/api/accounts")).json())["accounts"] == []
    missing = await client.delete("/api/accounts/work")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(("payload", "status", "code"), [
    (b"{nope", 400, "invalid_json"),
    (b"[]", 400, "invalid_value"),
    (b'{"tokens": {"access_token": "a.b.c", "refresh_token": "r", "id_token": "i"}}', 400, "invalid_value"),
    (b'{"tokens": {"access_token": 1}}', 400, "invalid_value"),
    (b"x" * (1024 * 1024 + 10), 413, "payload_too_large"),
])
async def test_bad_imports_are_refused(client, payload, status, code):
    resp = await client.post("/api/accounts", data=payload)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert (await (await client.get("/api/accounts")).json())["accounts"] == []

"""`/api/accounts` on the real app: what the dashboard and a running server's CLI use."""

from __future__ import annotations

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from codexlb.api.accounts import require_admin
from codexlb.errors import APIError


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


class Peer:
    def __init__(self, address: str) -> None:
        self.address = address

    def get_extra_info(self, name, default=None):
        return (self.address, 40000) if name == "peername" else default


@pytest.mark.parametrize("address", ["203.0.113.7", "10.0.0.2", "::ffff:8.8.8.8"])
def test_admin_api_refuses_remote_clients(address):
    with pytest.raises(APIError) as refused:
        require_admin(make_mocked_request("GET", "/api/accounts", transport=Peer(address)))
    assert refused.value.status == 403 and refused.value.code == "admin_forbidden"


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.0.1", "::1"])
def test_admin_api_serves_loopback(address):
    require_admin(make_mocked_request("GET", "/api/accounts", transport=Peer(address)))

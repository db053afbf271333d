"""The ledger's admin API over rows in the store (either engine): per-conversation summaries with their filters,
one conversation's requests, totals per key and per account, the 404 and the operator-only guard."""

from __future__ import annotations

import time

import pytest

from codexlb.services import KEYS, STORE
from codexlb.store import UsageRecord
from tests.keys.conftest import keyed_app

REMOTE = {"x-test-remote": "203.0.113.7"}
NOW = time.time()


def row(ts: float, conversation: str | None, **over) -> UsageRecord:
    fields = dict(ts=ts, account_id="acct-a", api_key_id=None, route="/backend-api/codex/responses",
                  model="gpt-5.5", status=200, error_code=None, input_tokens=100, cached_tokens=60, output_tokens=10,
                  reasoning_tokens=4, duration_ms=3.0, conversation=conversation, turn_id="t1", transport="ws",
                  client_bytes=200, client_items=1, upstream_bytes=200, upstream_items=1, recoveries=0,
                  recovery_kinds=None, recovery_bytes=0, unanchored_bytes=1200)
    return UsageRecord(**{**fields, **over})


@pytest.fixture
async def client(aiohttp_client, settings):
    client = await aiohttp_client(keyed_app(settings))
    _, alice = await client.app[KEYS].create("alice")
    _, bob = await client.app[KEYS].create("bob")
    store = client.app[STORE]
    for record in (
        row(NOW - 50, "conv-a", api_key_id=alice.id, turn_id="t1"),
        row(NOW - 40, "conv-a", api_key_id=alice.id, turn_id="t1", unanchored_bytes=150),  # saves nothing
        row(NOW - 30, "conv-a", api_key_id=alice.id, turn_id="t2", account_id="acct-b", recoveries=2,
            recovery_kinds="reconnect,rebuild", recovery_bytes=900, upstream_bytes=1100, upstream_items=5),
        row(NOW - 20, "conv-b", api_key_id=bob.id, turn_id=None, unanchored_bytes=None),
        row(NOW - 10, None, api_key_id=bob.id),  # no conversation: in the totals only
        row(NOW - 3 * 86400, "conv-old", api_key_id=alice.id),  # out of the default range
        row(NOW - 3 * 86400 + 1, "cache/with a slash", api_key_id=alice.id),
    ):
        store.record_usage(record)
    await store.flush_usage()
    client.keys = {"alice": alice.id, "bob": bob.id}
    return client


async def get(client, path: str, status: int = 200, **kwargs):
    resp = await client.get(path, **kwargs)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_conversations_newest_first_with_their_sums(client):
    body = await get(client, "/api/conversations")
    assert [c["conversation"] for c in body["conversations"]] == ["conv-b", "conv-a"]
    a = body["conversations"][1]
    assert a == {
        "conversation": "conv-a", "api_key_id": client.keys["alice"], "api_key_name": "alice",
        "account_id": "acct-b", "account_alias": None,  # the latest request's account (not in the roster)
        "first_seen": pytest.approx(NOW - 50), "last_seen": pytest.approx(NOW - 30), "turns": 2, "requests": 3,
        "input_tokens": 300, "cached_tokens": 180, "output_tokens": 30, "reasoning_tokens": 12,
        "client_bytes": 600, "upstream_bytes": 1500, "unanchored_bytes": 2550, "saved_bytes": 1100,
        "recoveries": 2, "recovery_bytes": 900}
    b = body["conversations"][0]
    assert (b["turns"], b["saved_bytes"], b["unanchored_bytes"]) == (0, 0, 0)  # unknown history saves nothing


async def test_conversation_filters(client):
    for key in ("alice", client.keys["alice"]):
        body = await get(client, f"/api/conversations?key={key}")
        assert [c["conversation"] for c in body["conversations"]] == ["conv-a"]
    body = await get(client, f"/api/conversations?since={NOW - 4 * 86400}&limit=2")
    assert [c["conversation"] for c in body["conversations"]] == ["conv-b", "conv-a"]
    body = await get(client, f"/api/conversations?since={NOW - 4 * 86400}&until={NOW - 35}")
    assert [(c["conversation"], c["requests"]) for c in body["conversations"]] == [
        ("conv-a", 2), ("cache/with a slash", 1), ("conv-old", 1)]
    error = await get(client, "/api/conversations?key=nobody", 404)
    assert error["error"]["code"] == "not_found"
    for query in ("since=yesterday", "limit=0", "limit=501", f"since={NOW}&until={NOW - 1}", "until=-5"):
        error = await get(client, f"/api/conversations?{query}", 400)
        assert error["error"]["code"] == "invalid_value"


async def test_one_conversation_oldest_first(client):
    body = await get(client, "/api/conversations/conv-a")
    assert body["conversation"]["requests"] == 3
    requests = body["requests"]
    assert [r["ts"] for r in requests] == sorted(r["ts"] for r in requests)
    assert [r["saved_bytes"] for r in requests] == [1000, 0, 100]  # the recovery sent more upstream: it saved less
    assert requests[2]["recovery_kinds"] == "reconnect,rebuild" and requests[2]["account_id"] == "acct-b"
    assert set(requests[0]) == {
        "id", "ts", "turn_id", "transport", "status", "error_code", "model", "account_id", "input_tokens",
        "cached_tokens", "output_tokens", "reasoning_tokens", "client_bytes", "client_items", "upstream_bytes",
        "upstream_items", "recoveries", "recovery_kinds", "recovery_bytes", "unanchored_bytes", "saved_bytes"}
    error = await get(client, "/api/conversations/conv-nope", 404)
    assert error["error"]["code"] == "not_found"
    body = await get(client, "/api/conversations/cache%2Fwith%20a%20slash")
    assert body["conversation"]["conversation"] == "cache/with a slash" and len(body["requests"]) == 1


async def test_usage_totals_per_key_and_account(client):
    body = await get(client, "/api/usage")
    assert body["until"] - body["since"] == pytest.approx(86400)
    keys = {k["api_key_name"]: k for k in body["keys"]}
    assert keys["alice"] == {"api_key_id": client.keys["alice"], "api_key_name": "alice", "requests": 3,
                             "input_tokens": 300, "cached_tokens": 180, "output_tokens": 30, "reasoning_tokens": 12,
                             "saved_bytes": 1100, "recoveries": 2, "recovery_bytes": 900}
    assert (keys["bob"]["requests"], keys["bob"]["saved_bytes"]) == (2, 1000)
    accounts = {a["account_id"]: a for a in body["accounts"]}
    assert (accounts["acct-a"]["requests"], accounts["acct-b"]["requests"]) == (4, 1)
    assert set(accounts["acct-a"]) == {"account_id", "account_alias", "requests", "input_tokens", "cached_tokens",
                                       "output_tokens", "reasoning_tokens", "saved_bytes", "recoveries",
                                       "recovery_bytes"}
    older = await get(client, f"/api/usage?since={NOW - 4 * 86400}&until={NOW - 86400}")
    assert [(k["api_key_name"], k["requests"]) for k in older["keys"]] == [("alice", 2)]


@pytest.mark.parametrize("path", ["/api/conversations", "/api/conversations/conv-a", "/api/usage"])
async def test_ledger_endpoints_are_admin_only(client, path):
    resp = await client.get(path, headers=REMOTE)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "admin_forbidden"

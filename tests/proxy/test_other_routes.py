"""Models, usage, compaction and accounting of rejected requests."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest

from codexlb.handlers import proxy as routes
from codexlb.services import STORE
from codexlb.upstream.state import UPSTREAM
from tests.proxy.conftest import start_proxy
from tests.simclient import body, user


async def test_codex_models_are_the_upstream_catalog_cached(proxy, http):
    async with http.get(f"{proxy.codex_base_url}/models?client_version=0.169.0") as resp:
        assert resp.status == 200
        catalog = await resp.json()
    assert "gpt-5.5" in [m["slug"] for m in catalog["models"]]
    proxy.sim.backend.accounts[0].revoked = True
    for account in proxy.sim.backend.accounts:
        account.revoked = True
    async with http.get(f"{proxy.url}/v1/models") as resp:
        assert resp.status == 200  # served from the cache: upstream would refuse every token now
        assert any(m["id"] == "gpt-5.5" for m in (await resp.json())["data"])


@pytest.fixture
async def silent_upstream():
    """An upstream that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/backend-api"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("upstream", ["silent", "refusing"])
async def test_models_from_an_upstream_that_does_not_answer_are_a_bounded_502(proxy, http, monkeypatch,
                                                                              silent_upstream, upstream):
    monkeypatch.setattr(routes, "MODELS_TIMEOUT_S", 0.3)
    base = silent_upstream if upstream == "silent" else "http://127.0.0.1:9/backend-api"
    up = proxy.app[UPSTREAM]
    up.settings = dataclasses.replace(up.settings, upstream_base_url=base)
    async with asyncio.timeout(5):
        async with http.get(f"{proxy.url}/v1/models") as resp:
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "upstream_unavailable"


async def test_concurrent_models_requests_with_a_cold_cache_make_one_upstream_call(proxy, http):
    async def models() -> int:
        async with http.get(f"{proxy.url}/v1/models") as resp:
            await resp.read()
            return resp.status

    assert await asyncio.gather(*(models() for _ in range(8))) == [200] * 8
    assert proxy.sim.backend.catalog_requests == 1


async def test_pool_usage_view(aiohttp_server, settings, sim, http):
    # Over HTTP each answer carries the account's usage headers (a bridged conversation gets them once
    # per upstream socket, so the view would move only with the usage poller).
    proxy = await start_proxy(aiohttp_server, settings, sim, http_bridge=False)
    for account in proxy.sim.backend.accounts:
        account.primary.limit_tokens = 100_000
    for _ in range(3):
        # One conversation, one account: its later answers carry the usage of the earlier ones.
        async with http.post(f"{proxy.codex_base_url}/responses", json=body(user("x" * 4000)),
                             headers={"session_id": "s"}) as resp:
            await resp.read()
    async with http.get(f"{proxy.url}/api/codex/usage") as resp:
        assert resp.status == 200
        usage = await resp.json()
    limits = usage["rate_limit"]
    assert limits["allowed"] is True and usage["accounts"] == {"total": 3, "usable": 3}
    assert limits["primary_window"]["limit_window_seconds"] == 300 * 60
    assert 0 < limits["primary_window"]["used_percent"] < 10


async def test_compaction_goes_upstream_as_a_trigger_item(proxy, http):
    async with http.post(f"{proxy.codex_base_url}/responses/compact", json=body(user("long history"))) as resp:
        assert resp.status == 200
        result = await resp.json()
    assert result["object"] == "response.compaction" and result["output"]
    record = proxy.sim.backend.records[-1]
    assert record.n_input == 2  # the history plus the compaction_trigger item


async def test_rejected_requests_are_counted(proxy, http):
    async with http.post(f"{proxy.codex_base_url}/responses", data=b"{nope") as resp:
        assert resp.status == 400
    async with http.post(f"{proxy.url}/v1/chat/completions", data=orjson.dumps({"model": "gpt-5.5"})) as resp:
        assert resp.status == 400
    store = proxy.app[STORE]
    await store.flush_usage()
    rows = await store.usage_rows()
    assert [(r[4], r[6], r[7]) for r in rows] == [
        ("/backend-api/codex/responses", 400, "invalid_json"), ("/v1/chat/completions", 400, "invalid_value")]

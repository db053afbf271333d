"""`/metrics`: parses as Prometheus text, and its figures move with real traffic."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from codexlb.services import KEYS, STORE
from tests.keys.conftest import keyed_app
from tests.proxy.conftest import start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import add_fault, body, user, ws_turn


async def scrape(http, proxy) -> dict[tuple[str, tuple], float]:
    async with http.get(f"{proxy.url}/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


async def test_metrics_move_with_traffic(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    before = await scrape(http, proxy)
    assert total(before, "codexlb_requests_total") == 0
    assert total(before, "codexlb_accounts", status="active") == 3
    for _ in range(3):
        resp, _ = await post(http, proxy, body(user("hi")))
        assert resp.status == 200
    await add_fault(http, sim, action="status", status=400, code="invalid_value", times=1)
    resp, _ = await post(http, proxy, body(user("refused")))
    assert resp.status == 400
    after = await scrape(http, proxy)
    route = "/backend-api/codex/responses"
    assert total(after, "codexlb_requests_total", route=route, status="200") == 3
    assert total(after, "codexlb_requests_total", route=route, status="400") == 1
    assert total(after, "codexlb_request_ttfb_seconds_count", route=route) == 3
    assert total(after, "codexlb_request_duration_seconds_count", route=route) == 4
    assert total(after, "codexlb_admission_admitted_total", gate="inflight") == 4
    assert total(after, "codexlb_admission_in_use", gate="inflight") == 0
    assert ("codexlb_bridge_sessions", ()) in after


async def test_metrics_are_for_this_machine_only(aiohttp_client, settings):
    client = await aiohttp_client(keyed_app(settings))
    assert (await client.get("/metrics")).status == 200
    resp = await client.get("/metrics", headers={"x-test-remote": "203.0.113.9"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "admin_forbidden"


async def test_a_metrics_token_lets_a_remote_prometheus_scrape_and_nothing_else(aiohttp_client, settings):
    client = await aiohttp_client(keyed_app(dataclasses.replace(settings, metrics_token="scrape-me")))
    remote = {"x-test-remote": "203.0.113.9"}
    assert (await client.get("/metrics", headers={**remote, "Authorization": "Bearer scrape-me"})).status == 200
    assert (await client.get("/metrics", headers={**remote, "Authorization": "Bearer wrong"})).status == 403
    # Not ASCII: hmac.compare_digest refused to compare it (a 500).
    assert (await client.get("/metrics", headers={**remote, "Authorization": "Bearer \u00e9"})).status == 403
    assert (await client.get("/api/accounts", headers={**remote, "Authorization": "Bearer scrape-me"})).status == 403


async def test_tokens_by_key_and_bytes_saved(aiohttp_server, settings, sim, http):
    """Tokens as upstream reported them, by the key's name and kind; the bytes anchoring saved (a WebSocket
    client's anchored turns: what resending its history would have cost)."""
    proxy = await start_proxy(aiohttp_server, settings, sim)
    await proxy.app[KEYS].create("laptop")
    key = {"Authorization": f"Bearer {(await proxy.app[KEYS].create('ci'))[0]}"}
    async with http.ws_connect(f"{proxy.codex_base_url}/responses", headers=key) as ws:
        first = (await ws_turn(ws, body(user("one"))))[-1]
        second = (await ws_turn(ws, body(user("two"), previous_response_id=first["response"]["id"])))[-1]
    resp, _ = await post(http, proxy, body(user("three")), key)
    assert resp.status == 200 and second["type"] == "response.completed"
    await proxy.app[STORE].flush_usage()
    after = await scrape(http, proxy)
    usages = [r["usage"] for r in sim.backend.records_view()]
    for kind, field in (("input", "input_tokens"), ("output", "output_tokens")):
        assert total(after, "codexlb_key_tokens_total", key="ci", kind=kind) == sum(u[field] for u in usages) > 0
    assert total(after, "codexlb_key_tokens_total", key="ci", kind="cached") == sum(
        u["input_tokens_details"]["cached_tokens"] for u in usages)
    assert total(after, "codexlb_key_tokens_total", key="laptop") == 0
    async with http.get(f"{proxy.url}/api/conversations?key=ci") as resp:
        assert (await resp.json())["conversations"] == []  # no session id, no prompt_cache_key
    saved = total(after, "codexlb_bytes_saved_total", key="ci")
    assert saved == total(after, "codexlb_bytes_saved_total") > 0
    async with http.get(f"{proxy.url}/api/usage") as resp:
        [ci] = [k for k in (await resp.json())["keys"] if k["api_key_name"] == "ci"]
    assert ci["saved_bytes"] == saved and ci["requests"] == 3

"""Per-key limits on the real app in front of the sim, over real sockets: each refuses exactly past its bound,
with its status, code and Retry-After, lets nothing reach upstream, and admits again when its window moves (the
limits' clock is moved by the test)."""

from __future__ import annotations

import datetime
import time

import orjson
import pytest

from codexlb.key_limits.enforce import LIMITS_KEY
from codexlb.key_limits.meter import window_end, window_start
from codexlb.services import GATES, KEYS
from tests.proxy.conftest import start_proxy
from tests.test_metrics import scrape, total
from tests.simclient import MODEL, body, user

# Wednesday 2026-12-09, 10:20:10 UTC: 10 s into a minute, 20 min into a 5-hour block (10:00), mid-day, mid-week.
T0 = 1796811610.0


def _later(days: int) -> tuple[str, float]:
    """An expiry `days` from now (settings refuse one in the past), as ISO-8601 and as epoch seconds."""
    at = (int(time.time()) // 86400 + days) * 86400.0
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), at


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def keyed(aiohttp_server, settings, sim):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    clock = proxy.app[LIMITS_KEY].clock = Clock(T0)
    return proxy, clock


async def _key(proxy, **fields) -> str:
    key, _ = await proxy.app[KEYS].create("team", fields)
    return key


async def _post(http, proxy, key: str, *, model: str = MODEL, path: str = "/v1/responses"):
    async with http.post(f"{proxy.url}{path}", json=body(user("hi"), model=model, stream=True),
                         headers={"Authorization": f"Bearer {key}"}) as resp:
        raw = await resp.read()
        return resp.status, dict(resp.headers), (orjson.loads(raw) if resp.content_type == "application/json" else raw)


def _sent(sim) -> int:
    return len(sim.backend.records)


async def test_rpm_refuses_the_request_past_the_limit_until_the_minute_turns(keyed, http, sim):
    proxy, clock = keyed
    key = await _key(proxy, rpm=3)
    for _ in range(3):
        assert (await _post(http, proxy, key))[0] == 200
    status, headers, error = await _post(http, proxy, key)
    assert status == 429 and headers["Retry-After"] == "50"
    assert error["error"]["code"] == "key_rate_limited" and error["error"]["type"] == "rate_limit_error"
    assert error["error"]["limit"] == "rpm" and error["error"]["resets_in_seconds"] == 50
    assert "3 requests per minute" in error["error"]["message"]
    assert _sent(sim) == 3  # nothing reached upstream
    clock.now = window_end("rpm", T0) - 0.001
    assert (await _post(http, proxy, key))[0] == 429
    clock.now = window_end("rpm", T0)
    assert (await _post(http, proxy, key))[0] == 200
    assert _sent(sim) == 4


async def test_rpm_counts_websocket_requests_frame_by_frame(keyed, http, sim):
    proxy, _ = keyed
    key = await _key(proxy, rpm=2)
    async with http.ws_connect(f"{proxy.codex_base_url}/responses",
                               headers={"Authorization": f"Bearer {key}"}) as ws:
        frames = []
        for _ in range(3):
            await ws.send_str(orjson.dumps({"type": "response.create", **body(user("hi"))}).decode())
            while True:
                event = orjson.loads((await ws.receive(timeout=10)).data)
                if event["type"] in ("response.completed", "error"):
                    frames.append(event)
                    break
    assert [f["type"] for f in frames] == ["response.completed", "response.completed", "error"]
    refusal = frames[2]
    assert refusal["status"] == 429 and refusal["error"]["code"] == "key_rate_limited"
    assert refusal["headers"] == {"retry-after": "50"}
    assert _sent(sim) == 2


@pytest.mark.parametrize("kind", ["tokens_5h", "tokens_day", "tokens_week"])
async def test_a_token_budget_refuses_once_spent_until_its_window_moves(keyed, http, sim, kind):
    proxy, clock = keyed
    assert (await _post(http, proxy, await _key(proxy)))[0] == 200  # what one such request costs
    usage = sim.backend.records[-1].usage
    cost = usage["input_tokens"] + usage["output_tokens"]
    await proxy.app[KEYS].revoke("team")
    key = await _key(proxy, **{kind: 2 * cost + 1})
    for _ in range(3):  # 0, then cost, then 2 x cost spent: each still under the budget when it starts
        assert (await _post(http, proxy, key))[0] == 200
    status, headers, error = await _post(http, proxy, key)
    wait = int(window_end(kind, T0) - T0)
    assert status == 429 and headers["Retry-After"] == str(wait) and wait > 60
    # A long wait: typed as the one 429 the Codex CLI does not retry.
    assert error["error"]["code"] == "key_budget_exhausted" and error["error"]["type"] == "usage_limit_reached"
    assert error["error"]["limit"] == kind and error["error"]["resets_at"] == int(window_end(kind, T0))
    assert _sent(sim) == 4
    clock.now = window_end(kind, T0)
    assert (await _post(http, proxy, key))[0] == 200


async def test_a_budget_that_resets_within_a_minute_is_a_plain_rate_limit(keyed, http, sim):
    proxy, clock = keyed
    key = await _key(proxy, tokens_5h=1)
    assert (await _post(http, proxy, key))[0] == 200
    clock.now = window_end("tokens_5h", T0) - 30
    status, headers, error = await _post(http, proxy, key)
    assert status == 429 and headers["Retry-After"] == "30" and error["error"]["type"] == "rate_limit_error"


async def test_models_not_allowed_are_refused_with_403(keyed, http, sim):
    proxy, _ = keyed
    key = await _key(proxy, models=["gpt-5*", "o4-mini"])
    assert (await _post(http, proxy, key, model=MODEL))[0] == 200
    status, _, error = await _post(http, proxy, key, model="o3")
    assert status == 403 and error["error"]["code"] == "model_not_allowed" and error["error"]["param"] == "model"
    assert _sent(sim) == 1


@pytest.mark.parametrize(("path", "status"), [("/v1/responses", 401), ("/backend-api/codex/responses", 400)])
async def test_an_expired_key_is_refused(keyed, http, sim, path, status):
    proxy, clock = keyed
    key = await _key(proxy)
    iso, at = _later(30)
    await proxy.app[KEYS].update("team", {"expires_at": iso})
    clock.now = at - 0.001
    assert (await _post(http, proxy, key, path=path))[0] == 200
    clock.now = at
    got, _, error = await _post(http, proxy, key, path=path)
    assert got == status and error["error"]["code"] == "api_key_expired"
    assert iso in error["error"]["message"]
    assert _sent(sim) == 1


async def test_a_change_applies_from_the_next_request(keyed, http, sim):
    proxy, _ = keyed
    key = await _key(proxy)
    assert (await _post(http, proxy, key))[0] == 200
    await proxy.app[KEYS].update("team", {"models": ["o4-*"]})
    assert (await _post(http, proxy, key))[0] == 403
    await proxy.app[KEYS].update("team", {"models": None})
    assert (await _post(http, proxy, key))[0] == 200


async def test_a_restarted_process_remembers_the_window(aiohttp_server, settings, sim, http):
    """The spend lives in the database: a new process (same data dir) goes on from it, not from zero."""
    first = await start_proxy(aiohttp_server, settings, sim)
    first.app[LIMITS_KEY].clock = Clock(T0)
    key = await _key(first, rpm=2)
    for _ in range(2):
        assert (await _post(http, first, key))[0] == 200
    await first.app[LIMITS_KEY].flush()
    second = await start_proxy(aiohttp_server, settings, sim, accounts=0)
    second.app[LIMITS_KEY].clock = Clock(T0 + 5)
    assert (await _post(http, second, key))[0] == 429


@pytest.mark.parametrize(("fields", "message"), [
    ({"rpm": -1}, "at least 1"),
    ({"rpm": "ten"}, "whole number"),
    ({"tokens_day": 10**12 + 1}, "more than"),
    ({"models": ["gpt-5[abc"]}, "unbalanced brackets"),
    ({"models": ["gpt 5"]}, "not a model name or glob"),
    ({"models": []}, "non-empty list"),
    ({"expires_at": "2020-01-01T00:00:00Z"}, "in the past"),
    ({"expires_at": "next tuesday"}, "not an ISO-8601 time"),
    ({"rpm": 5, "tokens_week": 0}, "at least 1"),
])
async def test_bad_settings_are_one_clear_error_and_change_nothing(keyed, http, fields, message):
    proxy, _ = keyed
    await _key(proxy, rpm=7)
    async with http.patch(f"{proxy.url}/api/keys/team", json=fields) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_value" and message in error["message"]
    async with http.get(f"{proxy.url}/api/keys") as resp:
        view = (await resp.json())["keys"][0]
    assert view["rpm"] == 7 and view["tokens_week"] is None and view["models"] is None and view["expires_at"] is None


async def test_the_api_sets_clears_and_shows_use(keyed, http):
    proxy, _ = keyed
    key = await _key(proxy)
    iso, at = _later(60)
    async with http.patch(f"{proxy.url}/api/keys/team", json={
            "rpm": 10, "tokens_day": 1000, "models": ["gpt-5*"], "expires_at": iso, "note": "CI runners"}) as resp:
        assert resp.status == 200
        view = (await resp.json())["api_key"]
    assert view["rpm"] == 10 and view["models"] == ["gpt-5*"] and view["note"] == "CI runners"
    assert view["expires_at"] == at
    assert (await _post(http, proxy, key))[0] == 200
    async with http.get(f"{proxy.url}/api/keys") as resp:
        use = (await resp.json())["keys"][0]["use"]
    assert use["rpm"] == {"used": 1, "limit": 10, "resets_at": window_end("rpm", T0)}
    assert 0 < use["tokens_day"]["used"] < 1000 and use["tokens_day"]["resets_at"] == window_end("tokens_day", T0)
    assert set(use) == {"rpm", "tokens_day"}
    async with http.patch(f"{proxy.url}/api/keys/team", json={"rpm": None, "note": None}) as resp:
        view = (await resp.json())["api_key"]
    assert view["rpm"] is None and view["note"] is None and view["tokens_day"] == 1000


def test_windows_are_the_documented_ones():
    assert window_start("rpm", T0) == T0 - 10
    assert window_start("tokens_5h", T0) == T0 - 20 * 60 - 10  # blocks from midnight UTC: 10:00
    assert window_start("tokens_day", T0) == 1796774400.0       # 2026-12-09T00:00:00Z
    assert window_start("tokens_week", T0) == 1796601600.0      # Monday 2026-12-07T00:00:00Z
    assert window_end("tokens_week", T0) - window_start("tokens_week", T0) == 7 * 86400
    evening = 1796774400.0 + 21 * 3600  # 21:00 UTC: the day's last block, 20:00 to midnight
    assert window_start("tokens_5h", evening) == 1796774400.0 + 20 * 3600
    assert window_end("tokens_5h", evening) == 1796774400.0 + 86400


async def test_requests_without_a_key_are_not_limited(keyed, http, sim):
    proxy, _ = keyed
    async with http.post(f"{proxy.url}/v1/responses", json=body(user("hi"), stream=True)) as resp:
        assert resp.status == 200


async def test_refusals_are_counted_by_key_and_limit_on_metrics(keyed, http):
    proxy, _ = keyed
    key = await _key(proxy, rpm=1, models=["gpt-5*"])
    assert (await _post(http, proxy, key))[0] == 200
    assert (await _post(http, proxy, key))[0] == 429
    assert (await _post(http, proxy, key, model="o3"))[0] == 403
    samples = await scrape(http, proxy)
    assert total(samples, "codexlb_key_rejections_total", key="team", limit="rpm") == 1
    assert total(samples, "codexlb_key_rejections_total", key="team", limit="model") == 1


async def test_a_changed_concurrency_limit_applies_to_the_next_request(keyed, http, sim):
    proxy, _ = keyed
    key = await _key(proxy, max_concurrency=1)
    assert (await _post(http, proxy, key))[0] == 200
    await proxy.app[KEYS].update("team", {"max_concurrency": 3})
    assert (await _post(http, proxy, key))[0] == 200
    gate = next(g for g in proxy.app[GATES].all() if g.name == "key:team")
    assert gate.capacity == 3

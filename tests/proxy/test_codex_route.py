"""POST /backend-api/codex/responses through codexlb to the sim, over real sockets."""

from __future__ import annotations

import dataclasses
import gc
import time
import tracemalloc

import orjson
import pytest

from codexlb.account import Status
from codexlb.services import KEYS
from codexlb.upstream.state import UPSTREAM
from tests.proxy.conftest import start_proxy
from tests.simclient import add_fault, body, parse_sse, user

TEXT_KINDS_HEAD = ["response.created", "response.in_progress", "response.output_item.added"]


async def post(http, proxy, payload, headers=None):
    data = payload if isinstance(payload, (bytes, str)) else orjson.dumps(payload)
    async with http.post(f"{proxy.codex_base_url}/responses", data=data,
                         headers={"Content-Type": "application/json", **(headers or {})}) as resp:
        raw = await resp.read()
        events = parse_sse(raw) if resp.content_type == "text/event-stream" else orjson.loads(raw)
        return resp, events


async def test_stream_is_relayed_whole(proxy, http):
    resp, events = await post(http, proxy, body(user("hello proxy")))
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    kinds = [e["type"] for e in events]
    assert kinds[:3] == TEXT_KINDS_HEAD and kinds[-1] == "response.completed"
    assert "You said: hello proxy" in events[-1]["response"]["output"][0]["content"][0]["text"]
    assert resp.headers["x-codex-primary-window-minutes"] == "300"
    assert resp.headers["x-codex-turn-state"].startswith("ts_")
    [record] = proxy.sim.backend.records
    assert record.outcome == "completed"
    assert record.response_id == events[-1]["response"]["id"]


async def test_client_credentials_and_forwarding_headers_do_not_cross(proxy, http):
    # Through a reverse proxy (X-Forwarded-For), so with a key of ours; the other Bearer is someone else's.
    key, _ = await proxy.app[KEYS].create("behind-nginx")
    await post(http, proxy, body(user("hi")), headers={
        "x-api-key": key, "Authorization": "Bearer sk-client-secret", "Cookie": "session=1",
        "X-Forwarded-For": "1.2.3.4", "session_id": "sess-1", "originator": "codex_exec",
        "x-codex-turn-metadata": '{"turn_id":"t1"}', "chatgpt-account-id": "acct-evil"})
    headers = proxy.sim.backend.records[-1].headers
    account = proxy.sim.backend.accounts
    assert headers["authorization"] in {f"Bearer {a.access_token}" for a in account}
    assert headers["chatgpt-account-id"] in {a.account_id for a in account}
    for dropped in ("cookie", "x-forwarded-for", "x-api-key"):
        assert dropped not in headers
    assert headers["session_id"] == "sess-1" and headers["originator"] == "codex_exec"
    assert headers["x-codex-turn-metadata"] == '{"turn_id":"t1"}'


async def test_store_and_stream_are_forced(proxy, http):
    resp, events = await post(http, proxy, {"model": "gpt-5.5", "input": [user("x")], "store": True})
    assert resp.status == 200 and events[-1]["type"] == "response.completed"


@pytest.mark.parametrize("fault", [
    {"action": "status", "status": 500},
    {"action": "status", "status": 502},
    {"action": "status", "status": 503, "code": "server_is_overloaded"},
    {"action": "status", "status": 429, "retry_after": 30},
    {"action": "close", "after_events": 0},
    {"action": "failed", "after_events": 0, "code": "server_error"},
])
async def test_failover_before_the_first_byte(proxy, http, fault):
    first = proxy.sim.backend.accounts[0].account_id
    await add_fault(http, proxy.sim, account=first, times=None, **fault)
    for _ in range(4):
        resp, events = await post(http, proxy, body(user("hi")))
        assert resp.status == 200
        assert [e["type"] for e in events][:3] == TEXT_KINDS_HEAD and events[-1]["type"] == "response.completed"
    completed = [r for r in proxy.sim.backend.records if r.outcome == "completed"]
    assert len(completed) == 4 and all(r.account_id != first for r in completed)
    assert [a.inflight for a in proxy.roster.all()] == [0, 0, 0]


async def test_401_refreshes_and_retries_the_same_account(aiohttp_server, settings, sim_one, http):
    proxy = await start_proxy(aiohttp_server, settings, sim_one)
    account = proxy.roster.all()[0]
    old_refresh = account.tokens.refresh_token
    async with http.post(f"{sim_one.url}/__sim/accounts/1/expire") as resp:
        assert resp.status == 200
    resp, events = await post(http, proxy, body(user("hi")))
    assert resp.status == 200 and events[-1]["type"] == "response.completed"
    assert account.tokens.refresh_token != old_refresh
    # The 401 is answered before the sim records a request; the one record is the retry that worked.
    assert [r.status for r in sim_one.backend.records] == [200]


async def test_upstream_connection_is_reused_when_the_body_ends_after_the_terminal_event(proxy, http):
    # The end of the chunked body (its last, empty chunk) comes 30 ms after response.completed, as it may
    # over the internet; a connection given back before it would be closed, one new connection per request.
    await add_fault(http, proxy.sim, action="delay", end_ms=30, times=None)
    for n in range(4):
        resp, events = await post(http, proxy, body(user(f"turn {n}")))
        assert resp.status == 200 and events[-1]["type"] == "response.completed"
    peers = {record.peer for record in proxy.sim.backend.records}
    assert len(proxy.sim.backend.records) == 4 and len(peers) == 1, peers


async def test_an_upstream_error_body_is_read_whole_and_its_connection_reused(proxy, http):
    # The 429's body comes in two writes 30 ms apart: read as one, it would lose the code that marks
    # the account out of quota, and a connection given back before the body's end is closed.
    await add_fault(http, proxy.sim, action="status", status=429, code="usage_limit_reached")
    await add_fault(http, proxy.sim, action="delay", end_ms=30)
    resp, events = await post(http, proxy, body(user("hi")))
    assert resp.status == 200 and events[-1]["type"] == "response.completed"
    refused, served = proxy.sim.backend.records
    assert refused.status == 429 and served.outcome == "completed"
    assert proxy.roster.by_id(refused.account_id).status is Status.QUOTA_EXCEEDED
    assert refused.peer == served.peer


async def test_failure_after_the_first_byte_ends_with_response_failed(proxy, http):
    # Events spaced as a real backend spaces them, so the first ones are read before the cut.
    await add_fault(http, proxy.sim, action="delay", between_events_ms=20, times=None)
    await add_fault(http, proxy.sim, action="close", after_events=4, times=None)
    resp, events = await post(http, proxy, body(user("hi")))
    assert resp.status == 200
    # What arrived before the cut is relayed as it was (the last events may share the cut's packet
    # and be lost with it), then a terminal event says what happened.
    relayed = [e["type"] for e in events[:-1]]
    assert 1 <= len(relayed) <= 4 and relayed == [*TEXT_KINDS_HEAD, "response.content_part.added"][:len(relayed)]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "stream_incomplete"
    assert events[-1]["response"]["id"] == events[0]["response"]["id"]
    assert len(proxy.sim.backend.records) == 1  # nothing was replayed


async def test_stream_without_terminal_becomes_stream_incomplete(proxy, http):
    await add_fault(http, proxy.sim, action="end_without_terminal", after_events=5, times=None)
    _, events = await post(http, proxy, body(user("hi")))
    assert len(events) == 6 and events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "stream_incomplete"


async def test_upstream_failed_mid_stream_is_passed_through(proxy, http):
    await add_fault(http, proxy.sim, action="failed", after_events=3, code="server_is_overloaded", times=None)
    _, events = await post(http, proxy, body(user("hi")))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_is_overloaded"


async def test_keepalives_while_the_first_event_is_slow(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, keepalive_s=0.2)
    await add_fault(http, sim, action="delay", first_byte_ms=700)
    resp, events = await post(http, proxy, body(user("hi")))
    kinds = [e["type"] for e in events]
    keepalives = kinds.count("codex.keepalive")
    assert keepalives >= 2 and kinds[:keepalives] == ["codex.keepalive"] * keepalives
    assert kinds[keepalives] == "response.created" and kinds[-1] == "response.completed"


async def test_every_account_out_of_quota_reaches_the_client_as_usage_limit(proxy, http):
    for account in proxy.sim.backend.accounts:
        account.primary.used_tokens = account.primary.limit_tokens
    resp, body_ = await post(http, proxy, body(user("hi")))
    assert resp.status == 429
    error = body_["error"]
    assert (error["type"], error["code"]) == ("usage_limit_reached", "usage_limit_reached")
    assert 0 < error["resets_in_seconds"] <= 300 * 60 and error["resets_at"] > time.time()
    assert all(a.status is Status.QUOTA_EXCEEDED for a in proxy.roster.all())


async def test_no_accounts_is_400(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=0)
    resp, error = await post(http, proxy, body(user("hi")))
    assert resp.status == 400 and error["error"]["code"] == "no_accounts"
    assert error["error"]["type"] == "invalid_request_error"


async def test_upstream_down_is_a_retriable_502(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim)
    up = proxy.app[UPSTREAM]
    up.settings = dataclasses.replace(up.settings, upstream_base_url="http://127.0.0.1:9/backend-api")
    resp, error = await post(http, proxy, body(user("hi")))
    assert resp.status == 502 and error["error"]["code"] == "upstream_unavailable"
    assert "3 attempt(s)" in error["error"]["message"]


@pytest.mark.parametrize(("payload", "code"), [
    (b"{not json", "invalid_json"),
    (b'{"model": "gpt-5.5", "input": "\xff\xfe"}', "invalid_json"),
    (b"[1]", "invalid_type"),
    (b'{"input": []}', "missing_required_parameter"),
    (b'{"model": "gpt-5.5"}', "missing_required_parameter"),
    (b'{"model": 5, "input": []}', "invalid_type"),
    (b'{"model": "gpt-5.5", "input": 5}', "invalid_type"),
    (b'{"model": "gpt-5.5", "input": [], "tools": {}}', "invalid_type"),
])
async def test_bad_input_never_reaches_upstream(proxy, http, payload, code):
    resp, error = await post(http, proxy, payload)
    assert resp.status == 400 and error["error"]["code"] == code
    assert proxy.sim.backend.records == type(proxy.sim.backend.records)()


async def test_too_large_is_400_for_the_codex_cli_and_413_for_v1(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, max_body_mb=0.01)
    big = orjson.dumps(body(user("x" * 20_000)))
    resp, error = await post(http, proxy, big)
    assert resp.status == 400 and error["error"]["code"] == "payload_too_large"
    async with http.post(f"{proxy.url}/v1/responses", data=big, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413 and (await r.json())["error"]["code"] == "payload_too_large"
    assert not proxy.sim.backend.records


async def test_previous_response_id_goes_back_to_its_account(proxy, http):
    _, first = await post(http, proxy, body(user("one")))
    anchor = first[-1]["response"]["id"]
    owner = proxy.sim.backend.records[-1].account_id
    state = proxy.sim.backend.records[-1].turn_state
    for _ in range(5):
        resp, events = await post(http, proxy, body(user("two"), previous_response_id=anchor),
                                  headers={"x-codex-turn-state": state})
        assert resp.status == 200 and events[-1]["type"] == "response.completed"
        assert proxy.sim.backend.records[-1].account_id == owner


async def test_session_stays_on_its_account(proxy, http):
    for _ in range(6):
        await post(http, proxy, body(user("hi")), headers={"session_id": "s-42"})
    assert len({r.account_id for r in proxy.sim.backend.records}) == 1


async def test_usage_is_accounted(proxy, http):
    from codexlb.services import STORE

    _, events = await post(http, proxy, body(user("count me")))
    await proxy.app[STORE].flush_usage()
    [row] = await proxy.app[STORE].usage_rows()
    usage = events[-1]["response"]["usage"]
    assert row[2] == proxy.sim.backend.records[-1].account_id
    assert row[4] == "/backend-api/codex/responses" and row[5] == "gpt-5.5" and row[6] == 200
    assert row[8] == usage["input_tokens"] and row[10] == usage["output_tokens"]
    duration_ms, ttfb_ms = row[12], row[13]
    assert 0 < ttfb_ms <= duration_ms


async def test_a_client_that_hangs_up_mid_stream_frees_its_account(proxy, http):
    import asyncio

    await add_fault(http, proxy.sim, action="stall", after_events=3, times=None)
    resp = await http.post(f"{proxy.codex_base_url}/responses", json=body(user("hi")))
    assert resp.status == 200
    await resp.content.readuntil(b"\n\n")  # the stream is running: an account is leased
    assert sum(a.inflight for a in proxy.roster.all()) == 1
    resp.close()
    async with asyncio.timeout(10):
        while sum(a.inflight for a in proxy.roster.all()):
            await asyncio.sleep(0.01)


async def test_an_unknown_anchor_is_retriable_twice_then_the_canonical_400_once(proxy, http):
    """An SDK client's own previous_response_id that upstream does not know: never a retry loop."""
    payload = body(user("go on"), previous_response_id="resp_unknown")
    statuses = []
    for _ in range(4):
        async with http.post(f"{proxy.url}/v1/responses", json=payload) as resp:
            error = (await resp.json())["error"]
            statuses.append((resp.status, error["code"]))
    assert statuses == [(502, "upstream_unavailable"), (502, "upstream_unavailable"),
                        (400, "previous_response_not_found"), (502, "upstream_unavailable")]


async def test_the_last_account_needing_a_new_login_mid_request_is_the_pools_400(aiohttp_server, settings, sim_one,
                                                                                 http):
    """Upstream refuses the token and the refresh is refused for good: the client learns what to do (a new
    login), not a retriable 502 that the Codex CLI would retry for ~24 s."""
    proxy = await start_proxy(aiohttp_server, settings, sim_one)
    async with http.post(f"{sim_one.url}/__sim/accounts/1/expire") as resp:
        assert resp.status == 200
    sim_one.backend.refresh(sim_one.backend.accounts[0].refresh_token)  # rotated elsewhere: ours is spent
    resp, error = await post(http, proxy, body(user("hi")))
    assert resp.status == 400 and error["error"]["code"] == "no_accounts", error
    assert "codexlb accounts login" in error["error"]["message"]


async def test_an_open_stream_does_not_hold_its_request_input(proxy, http):
    """A stream may last minutes, and its input (the whole history of an unanchored turn) is most of what a
    request takes: once upstream has it, codexlb lets it go. Measured where codexlb parsed it."""
    await add_fault(http, proxy.sim, action="delay", between_events_ms=30, times=None)
    big = "history " * 250_000  # 2 MB of input
    tracemalloc.start()
    try:
        async with http.post(f"{proxy.codex_base_url}/responses", data=orjson.dumps(body(user(big))),
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")  # the first event: the stream is open
            gc.collect()
            held = sum(stat.size for stat in tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*/codexlb/request_checks.py")]).statistics("filename"))
            await resp.read()
    finally:
        tracemalloc.stop()
    assert held < len(big) // 10, f"{held} bytes parsed from the request are still held by its open stream"


async def test_an_upstream_gone_silent_mid_stream_ends_it_as_a_timeout(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, upstream_idle_timeout_s=0.3)
    await add_fault(http, proxy.sim, action="stall", after_events=3, times=1)
    started = time.monotonic()
    resp, events = await post(http, proxy, body(user("hi")))
    assert resp.status == 200 and [e["type"] for e in events[:3]] == TEXT_KINDS_HEAD
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5


async def test_a_stream_longer_than_the_silence_bound_is_not_cut_while_events_come(aiohttp_server, settings, sim,
                                                                                   http):
    """The bound is on the silence between events, not on the stream: events 100 ms apart for over a second,
    with a bound of 0.3 s (a timer that is not moved on as events come cuts it)."""
    proxy = await start_proxy(aiohttp_server, settings, sim, upstream_idle_timeout_s=0.3)
    await add_fault(http, proxy.sim, action="delay", between_events_ms=100, times=1)
    started = time.monotonic()
    resp, events = await post(http, proxy, body(user("a few words to make the answer last")))
    assert resp.status == 200 and events[-1]["type"] == "response.completed"
    assert time.monotonic() - started > 1.0

"""Admission control seen from a client: real requests through codexlb to the sim, over real sockets.

Synchronisation is on observable state only: the sim's faults hold streams open (`stall`) or slow them
(`delay`), and `until` waits, bounded, for the gates to show what a step needs (a waiter queued, a slot
back). Nothing here sleeps for a while and hopes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp
import orjson
import pytest

from codexlb.admission.gates import Gates
from codexlb.app import create_app
from codexlb.services import GATES, KEYS, ROSTER
from tests.accounts.conftest import login_of
from tests.keys.conftest import remote_from_header
from tests.proxy.conftest import Proxy, start_proxy
from tests.simclient import add_fault, body, parse_sse, user

GATE_FIELDS = {"capacity", "in_use", "waiting", "admitted", "rejected"}
REMOTE = {"x-test-remote": "198.51.100.4"}


# --- helpers (test_leaks imports these) -----------------------------------------------------------

async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0,
                show: Callable[[], Any] | None = None) -> None:
    """Wait, yielding to the loop, until `predicate()` holds; fail after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}" + (f": {show()}" if show else "")) from None


def gates_of(proxy: Proxy) -> Gates:
    return proxy.app[GATES]


def idle(proxy: Proxy) -> bool:
    """Every gate empty and every account without a stream."""
    return (all(g.in_use == 0 and g.waiting == 0 for g in gates_of(proxy).all())
            and all(a.inflight == 0 for a in proxy.roster.all()))


async def until_idle(proxy: Proxy, timeout: float = 5.0) -> None:
    await until(lambda: idle(proxy), "every gate and account to be idle", timeout,
                show=lambda: (gates_of(proxy).snapshot(), [a.inflight for a in proxy.roster.all()]))


async def admission(http: aiohttp.ClientSession, proxy: Proxy, headers: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    async with http.get(f"{proxy.url}/api/admission", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def assert_all_gates_idle(http: aiohttp.ClientSession, proxy: Proxy) -> dict[str, Any]:
    """What `/api/admission` says once the state settled: nothing in use, nobody waiting."""
    await until_idle(proxy)
    snapshot = (await admission(http, proxy))["gates"]
    busy = {name: g for name, g in snapshot.items() if g["in_use"] or g["waiting"]}
    assert not busy, busy
    assert [a.inflight for a in proxy.roster.all()] == [0] * len(proxy.roster.all())
    return snapshot


async def sim_requests(http: aiohttp.ClientSession, sim: Any) -> list[dict[str, Any]]:
    async with http.get(f"{sim.url}/__sim/requests") as resp:
        assert resp.status == 200
        return (await resp.json())["requests"]


def codex_url(proxy: Proxy) -> str:
    return f"{proxy.url}/backend-api/codex/responses"


async def post(http: aiohttp.ClientSession, url: str, payload: Any, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], Any]:
    """A whole exchange: status, headers, and the SSE events or the JSON body."""
    async with http.post(url, data=orjson.dumps(payload),
                         headers={"Content-Type": "application/json", **(headers or {})}) as resp:
        raw = await resp.read()
        if resp.content_type != "text/event-stream":
            parsed = orjson.loads(raw)
        else:  # chat completions streams carry `data:` lines only: left raw
            parsed = parse_sse(raw) if raw.startswith(b"event: ") else raw
        return resp.status, dict(resp.headers), parsed


def assert_full_stream(status: int, events: Any, text: str) -> None:
    assert status == 200, events
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert f"You said: {text}" in events[-1]["response"]["output"][0]["content"][0]["text"]


def assert_overloaded(status: int, headers: dict[str, str], payload: Any, *, code: str, names: str) -> None:
    assert status == 429, payload
    error = payload["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == code, error
    assert names in error["message"], error["message"]
    retry_after = headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, retry_after


@dataclass
class Held:
    """A stream the sim holds open (a `stall` fault): its first event arrived, then nothing."""

    resp: aiohttp.ClientResponse
    first: dict[str, Any]

    @property
    def response_id(self) -> str:
        return self.first["response"]["id"]

    def hang_up(self) -> None:
        self.resp.close()


async def hold(http: aiohttp.ClientSession, url: str, text: str = "held", headers: dict[str, str] | None = None
               ) -> Held:
    resp = await http.post(url, data=orjson.dumps(body(user(text))),
                           headers={"Content-Type": "application/json", **(headers or {})})
    try:
        assert resp.status == 200, await resp.text()
        async with asyncio.timeout(5):
            block = await resp.content.readuntil(b"\n\n")
        [first] = parse_sse(block)
        assert first["type"] == "response.created"
    except BaseException:
        resp.close()
        raise
    return Held(resp, first)


async def start_remote_aware(aiohttp_server, settings, sim, **overrides) -> Proxy:
    """`start_proxy`, with the `x-test-remote` header playing a client from another machine."""
    settings = dataclasses.replace(settings, upstream_base_url=sim.upstream_base_url, auth_base_url=sim.url,
                                   **overrides)
    app = create_app(settings)
    app.middlewares.insert(0, remote_from_header)
    server = await aiohttp_server(app)
    for sim_account in sim.backend.accounts:
        await app[ROSTER].add_login(login_of(sim_account))
    return Proxy(str(server.make_url("")).rstrip("/"), app, sim)


# --- 1. a burst three times the capacity -----------------------------------------------------------

async def test_burst_of_three_times_capacity_all_complete(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=4, queue_wait_s=10)
    gates = gates_of(proxy)
    await add_fault(http, sim, action="delay", first_byte_ms=250, times=None)
    upstream_peak = 0

    def watch() -> bool:
        nonlocal upstream_peak
        upstream_peak = max(upstream_peak, sum(r.outcome == "pending" for r in sim.backend.records))
        return False

    texts = [f"burst {i}" for i in range(12)]
    calls = [asyncio.create_task(post(http, codex_url(proxy), body(user(t)))) for t in texts]
    # The line really forms: four streams upstream, eight in line.
    await until(lambda: gates.inflight.in_use == 4 and gates.inflight.waiting == 8, "4 in flight and 8 in line",
                show=gates.snapshot)
    watcher = asyncio.create_task(until(watch, "never", timeout=60))
    results = await asyncio.gather(*calls)
    watcher.cancel()
    for text, (status, _, events) in zip(texts, results):
        assert_full_stream(status, events, text)
    assert 1 <= upstream_peak <= 4, upstream_peak
    snapshot = await assert_all_gates_idle(http, proxy)
    assert snapshot["inflight"] == {"capacity": 4, "in_use": 0, "waiting": 0, "admitted": 12, "rejected": 0}
    accounts = {name: g for name, g in snapshot.items() if name.startswith("account:")}
    assert len(accounts) == 3 and sum(g["admitted"] for g in accounts.values()) == 12
    assert all(g["rejected"] == 0 for g in snapshot.values()), snapshot
    assert len(sim.backend.records) == 12


# --- 2. past the wait, and past the line's length ---------------------------------------------------

async def test_overflow_past_the_wait_gets_429_with_retry_after(aiohttp_server, settings, sim, http):
    capacity = 2
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=capacity, queue_wait_s=0.3)
    gates = gates_of(proxy)
    await add_fault(http, sim, action="stall", after_events=1, times=capacity)
    held = await asyncio.gather(*(hold(http, codex_url(proxy), f"held {i}") for i in range(capacity)))
    assert gates.inflight.in_use == capacity

    async def overflow(i: int) -> tuple[float, tuple[int, dict[str, str], Any]]:
        started = time.monotonic()
        result = await post(http, codex_url(proxy), body(user(f"overflow {i}")))
        return time.monotonic() - started, result

    results = await asyncio.gather(*(overflow(i) for i in range(2 * capacity)))
    for waited, (status, headers, payload) in results:
        assert_overloaded(status, headers, payload, code="proxy_overloaded", names="proxied requests in flight")
        assert "no slot freed within 0.3 s" in payload["error"]["message"]
        assert waited >= 0.25, waited  # they were turned away after their wait, not before
    snapshot = gates.inflight.snapshot()
    assert snapshot == {"capacity": capacity, "in_use": capacity, "waiting": 0, "admitted": capacity,
                        "rejected": 2 * capacity}
    assert len(sim.backend.records) == capacity  # no rejected request went upstream

    for stream in held:
        stream.hang_up()
    snapshot = await assert_all_gates_idle(http, proxy)
    assert snapshot["inflight"]["admitted"] == capacity and snapshot["inflight"]["rejected"] == 2 * capacity
    # The capacity is usable again.
    status, _, events = await post(http, codex_url(proxy), body(user("after")))
    assert_full_stream(status, events, "after")


async def test_past_max_queue_rejected_at_once(aiohttp_server, settings, sim, http):
    line = 2
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=1, max_queue=line, queue_wait_s=5)
    gates = gates_of(proxy)
    await add_fault(http, sim, action="stall", after_events=1, times=1)
    held = await hold(http, codex_url(proxy))
    queued = []
    for i in range(line):
        queued.append(asyncio.create_task(post(http, codex_url(proxy), body(user(f"queued {i}")))))
        await until(lambda: gates.inflight.waiting == i + 1, f"{i + 1} waiting", show=gates.snapshot)
    # Well inside the 5 s wait: the line is full, so these are answered at once.
    async with asyncio.timeout(1.5):
        rejected = await asyncio.gather(*(post(http, codex_url(proxy), body(user(f"extra {i}"))) for i in range(3)))
    for status, headers, payload in rejected:
        assert_overloaded(status, headers, payload, code="proxy_overloaded", names="proxied requests in flight")
        assert "the waiting line is full" in payload["error"]["message"]
    assert gates.inflight.waiting == line and gates.inflight.rejected == 3

    held.hang_up()
    for i, (status, _, events) in enumerate(await asyncio.gather(*queued)):
        assert_full_stream(status, events, f"queued {i}")
    snapshot = await assert_all_gates_idle(http, proxy)
    assert snapshot["inflight"]["admitted"] == 1 + line and snapshot["inflight"]["rejected"] == 3


# --- 3. first come, first served -------------------------------------------------------------------

async def test_waiters_are_served_in_arrival_order(aiohttp_server, settings, sim, http):
    n = 8
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=1, queue_wait_s=10)
    gates = gates_of(proxy)
    await add_fault(http, sim, action="stall", after_events=1, times=1)
    held = await hold(http, codex_url(proxy), headers={"x-fifo": "held"})
    waiters = []
    for i in range(n):
        waiters.append(asyncio.create_task(
            post(http, codex_url(proxy), body(user(f"fifo {i}")), headers={"x-fifo": str(i)})))
        await until(lambda: gates.inflight.waiting == i + 1, f"{i + 1} waiting", show=gates.snapshot)
    assert len(sim.backend.records) == 1  # nobody overtook the held stream
    held.hang_up()
    for i, (status, _, events) in enumerate(await asyncio.gather(*waiters)):
        assert_full_stream(status, events, f"fifo {i}")
    order = [r["headers"].get("x-fifo") for r in sorted(await sim_requests(http, sim), key=lambda r: r["seq"])]
    assert order == ["held", *map(str, range(n))]
    await assert_all_gates_idle(http, proxy)


# --- 4. an API key's concurrency limit ---------------------------------------------------------------

def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_key_limit_makes_the_second_request_wait(aiohttp_server, settings, sim, http):
    # Two global slots: the waiting request of key a must not hold one, or b could not get through.
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=2, queue_wait_s=10)
    gates = gates_of(proxy)
    key_a, _ = await proxy.app[KEYS].create("a", {"max_concurrency": 1})
    key_b, _ = await proxy.app[KEYS].create("b", {"max_concurrency": 1})
    await add_fault(http, sim, action="stall", after_events=1, times=1)
    held = await hold(http, codex_url(proxy), headers=bearer(key_a))
    second = asyncio.create_task(post(http, codex_url(proxy), body(user("a again")), headers=bearer(key_a)))
    key_gate = next(g for g in gates.all() if g.name == "key:a")
    await until(lambda: key_gate.waiting == 1, "a's second request in line", show=gates.snapshot)
    assert gates.inflight.in_use == 1 and gates.inflight.waiting == 0
    # Another key is not held up by a's limit.
    async with asyncio.timeout(3):
        status, _, events = await post(http, codex_url(proxy), body(user("b")), headers=bearer(key_b))
    assert_full_stream(status, events, "b")
    assert not second.done() and key_gate.waiting == 1
    held.hang_up()
    status, _, events = await second
    assert_full_stream(status, events, "a again")
    snapshot = await assert_all_gates_idle(http, proxy)
    assert snapshot["key:a"] == {"capacity": 1, "in_use": 0, "waiting": 0, "admitted": 2, "rejected": 0}
    assert snapshot["key:b"]["admitted"] == 1 and snapshot["inflight"]["admitted"] == 3


async def test_key_limit_rejects_past_the_wait(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, queue_wait_s=0.3)
    key_a, _ = await proxy.app[KEYS].create("a", {"max_concurrency": 1})
    key_b, _ = await proxy.app[KEYS].create("b", {"max_concurrency": 1})
    await add_fault(http, sim, action="stall", after_events=1, times=1)
    held = await hold(http, codex_url(proxy), headers=bearer(key_a))
    status, headers, payload = await post(http, codex_url(proxy), body(user("a again")), headers=bearer(key_a))
    assert_overloaded(status, headers, payload, code="concurrency_limit_exceeded", names="API key a")
    status, _, events = await post(http, codex_url(proxy), body(user("b")), headers=bearer(key_b))
    assert_full_stream(status, events, "b")
    held.hang_up()
    snapshot = await assert_all_gates_idle(http, proxy)
    assert snapshot["key:a"]["rejected"] == 1 and snapshot["key:b"]["rejected"] == 0
    # The rejection happened at the key: the global gate never saw it.
    assert snapshot["inflight"] == {**snapshot["inflight"], "admitted": 2, "rejected": 0}
    status, _, events = await post(http, codex_url(proxy), body(user("a later")), headers=bearer(key_a))
    assert_full_stream(status, events, "a later")


# --- 5. streams per account --------------------------------------------------------------------------

async def test_full_accounts_are_passed_over_and_anchored_requests_wait(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, account_max_streams=1, queue_wait_s=10)
    gates = gates_of(proxy)
    # A finished response, whose state lives on one account (and under one turn state).
    async with http.post(codex_url(proxy), json=body(user("first"))) as resp:
        assert resp.status == 200
        turn_state = resp.headers["x-codex-turn-state"]
        first = parse_sse(await resp.read())
    first_id = first[-1]["response"]["id"]
    [record] = sim.backend.records
    home = record.account_id

    await add_fault(http, sim, action="stall", after_events=1, times=3)
    held = await asyncio.gather(*(hold(http, codex_url(proxy), f"held {i}") for i in range(3)))
    owner = {r.response_id: r.account_id for r in sim.backend.records}
    on = {owner[h.response_id]: h for h in held}
    assert len(on) == 3, owner  # three streams, three accounts
    assert all(a.inflight == 1 for a in proxy.roster.all())
    assert all(g.waiting == 0 and g.rejected == 0 for g in gates.all()), gates.snapshot()

    # Another account frees up: a follow-up still waits for the one with its state.
    elsewhere = next(account for account in on if account != home)
    on[elsewhere].hang_up()
    await until(lambda: next(a for a in proxy.roster.all() if a.id == elsewhere).inflight == 0,
                "the other account's stream to end", show=gates.snapshot)
    follow_up = asyncio.create_task(post(
        http, codex_url(proxy), body(user("follow up"), previous_response_id=first_id),
        headers={"x-codex-turn-state": turn_state}))
    home_gate = next(g for g in gates.all() if g.name.startswith("account:") and g.account.id == home)
    await until(lambda: home_gate.waiting == 1, "the follow-up in line for its account", show=gates.snapshot)
    assert not follow_up.done() and len(sim.backend.records) == 4
    # The free account serves a request with no anchor meanwhile.
    async with asyncio.timeout(3):
        status, _, events = await post(http, codex_url(proxy), body(user("unanchored")))
    assert_full_stream(status, events, "unanchored")
    assert sim.backend.records[-1].account_id == elsewhere
    assert not follow_up.done() and home_gate.waiting == 1

    on[home].hang_up()
    status, _, events = await follow_up
    assert_full_stream(status, events, "follow up")
    record = sim.backend.records[-1]
    assert record.account_id == home and record.previous_response_id == first_id
    for stream in held:
        stream.hang_up()
    await assert_all_gates_idle(http, proxy)


@pytest.mark.parametrize("way", ["bridge", "plain", "websocket"])
async def test_a_placed_conversation_waits_for_its_account_instead_of_moving(aiohttp_server, settings, sim, http, way):
    """Every account's stream slots full, one frees elsewhere: a conversation the pool placed waits for its own
    account (its prompt cache and the reasoning it sealed are there; another account answers that reasoning with
    400 invalid_encrypted_content), over the HTTP bridge, the plain HTTP way and a client WebSocket alike; a
    request of no conversation takes the free slot meanwhile. Past the wait it gets 429, not another account."""
    # A short wait, that the 429 comes soon; no keep-alive before it (that would commit the answer first).
    proxy = await start_proxy(aiohttp_server, settings, sim, account_max_streams=1, queue_wait_s=2,
                              keepalive_s=30, http_bridge=way == "bridge")
    gates = gates_of(proxy)
    conversation = {"session_id": f"conv-{way}"}
    status, _, events = await post(http, codex_url(proxy), body(user("first")), conversation)
    assert_full_stream(status, events, "first")
    home = sim.backend.records[-1].account_id

    await add_fault(http, sim, action="stall", after_events=1, times=3)
    held = await asyncio.gather(*(hold(http, codex_url(proxy), f"held {i}") for i in range(3)))
    on = {r.account_id: h for h in held for r in sim.backend.records if r.response_id == h.response_id}
    assert len(on) == 3 and all(a.inflight == 1 for a in proxy.roster.all())
    elsewhere = next(account for account in on if account != home)
    on[elsewhere].hang_up()
    await until(lambda: next(a for a in proxy.roster.all() if a.id == elsewhere).inflight == 0,
                "the other account's stream to end", show=gates.snapshot)

    async def next_turn() -> str:
        if way != "websocket":
            status, _, events = await post(http, codex_url(proxy), body(user("first"), user("next")), conversation)
            assert_full_stream(status, events, "next")
            return sim.backend.records[-1].account_id
        async with http.ws_connect(codex_url(proxy), headers=conversation) as ws:
            await ws.send_str(orjson.dumps({"type": "response.create", **body(user("next"))}).decode())
            while orjson.loads((await ws.receive()).data)["type"] != "response.completed":
                pass
            return sim.backend.records[-1].account_id

    follow_up = asyncio.create_task(next_turn())
    home_gate = next(g for g in gates.all() if g.name.startswith("account:") and g.account.id == home)
    await until(lambda: home_gate.waiting == 1, "the conversation in line for its account", show=gates.snapshot)
    async with asyncio.timeout(3):  # no conversation: the free account serves it meanwhile
        status, _, events = await post(http, codex_url(proxy), body(user("unplaced")))
    assert_full_stream(status, events, "unplaced")
    assert sim.backend.records[-1].account_id == elsewhere and not follow_up.done()
    on[home].hang_up()
    assert await asyncio.wait_for(follow_up, 5) == home

    # Its account full past the wait: 429 with Retry-After, still not another account.
    blocker = gates.account(next(a for a in proxy.roster.all() if a.id == home)).try_acquire()
    assert blocker is not None
    try:
        if way == "websocket":
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(codex_url(proxy), headers=conversation)
            assert refused.value.status == 429 and "Retry-After" in refused.value.headers
        else:
            status, headers, payload = await post(http, codex_url(proxy), body(user("first"), user("again")),
                                                  conversation)
            assert_overloaded(status, headers, payload, code="proxy_overloaded", names="account")
    finally:
        blocker.release()
    for stream in held:
        stream.hang_up()
    await assert_all_gates_idle(http, proxy)


async def test_waiter_takes_whichever_account_frees_first(aiohttp_server, settings, sim, http):
    """With every account full, a request with no anchor waits in the any-account line; when any account
    frees a slot, that waiter (not a later arrival) gets it."""
    proxy = await start_proxy(aiohttp_server, settings, sim, account_max_streams=1, queue_wait_s=10)
    gates = gates_of(proxy)
    await add_fault(http, sim, action="stall", after_events=1, times=3)
    held = await asyncio.gather(*(hold(http, codex_url(proxy), f"held {i}") for i in range(3)))
    waiter = asyncio.create_task(post(http, codex_url(proxy), body(user("waiting"))))
    await until(lambda: gates.any_account.in_use == 1, "one request in line", show=gates.snapshot)
    # A later arrival lines up behind it instead of taking the slot about to come free.
    later = asyncio.create_task(post(http, codex_url(proxy), body(user("later"))))
    await until(lambda: gates.any_account.waiting == 1, "a second request in line", show=gates.snapshot)
    held[0].hang_up()
    status, _, events = await asyncio.wait_for(waiter, 3)
    assert_full_stream(status, events, "waiting")
    assert not later.done()
    for stream in held[1:]:
        stream.hang_up()
    status, _, events = await asyncio.wait_for(later, 3)
    assert_full_stream(status, events, "later")
    await assert_all_gates_idle(http, proxy)


async def test_every_account_full_past_the_wait_gets_429(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, account_max_streams=1, queue_wait_s=0.3)
    await add_fault(http, sim, action="stall", after_events=1, times=3)
    held = await asyncio.gather(*(hold(http, codex_url(proxy), f"held {i}") for i in range(3)))
    status, headers, payload = await post(http, codex_url(proxy), body(user("no room")))
    assert_overloaded(status, headers, payload, code="proxy_overloaded", names="stream slot on any account")
    assert len(sim.backend.records) == 3
    for stream in held:
        stream.hang_up()
    snapshot = await assert_all_gates_idle(http, proxy)
    assert snapshot["any_account"]["rejected"] == 1
    assert snapshot["inflight"]["rejected"] == 0 and snapshot["inflight"]["admitted"] == 4


# --- every proxied route is gated --------------------------------------------------------------------

ROUTES = [
    ("/v1/responses", {"model": "gpt-5.5", "input": "hi", "stream": False}),
    ("/v1/responses", {"model": "gpt-5.5", "input": "hi", "stream": True}),
    ("/v1/chat/completions", {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("/backend-api/codex/responses/compact", body(user("compact me"))),
    ("/v1/responses/compact", body(user("compact me"))),
]


@pytest.mark.parametrize(("path", "payload"), ROUTES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(ROUTES)])
async def test_every_proxied_route_is_gated(aiohttp_server, settings, sim, http, path, payload):
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=1, queue_wait_s=0.2)
    await add_fault(http, sim, action="stall", after_events=1, times=1)
    held = await hold(http, codex_url(proxy))
    status, headers, answer = await post(http, f"{proxy.url}{path}", payload)
    assert_overloaded(status, headers, answer, code="proxy_overloaded", names="proxied requests in flight")
    held.hang_up()
    await until_idle(proxy)
    status, _, _ = await post(http, f"{proxy.url}{path}", payload)
    assert status == 200
    snapshot = await assert_all_gates_idle(http, proxy)
    assert snapshot["inflight"]["admitted"] == 2 and snapshot["inflight"]["rejected"] == 1


# --- 7. the admission view, and what is never gated ----------------------------------------------------

async def test_admission_view_shape(aiohttp_server, settings, sim, http):
    proxy = await start_remote_aware(aiohttp_server, settings, sim, max_inflight=7, account_max_streams=5,
                                     max_upstream_connects=3, max_refreshes=2)
    before = (await admission(http, proxy))["gates"]
    assert set(before) == {"inflight", "upstream_connects", "refreshes", "any_account"}
    assert before["inflight"] == {"capacity": 7, "in_use": 0, "waiting": 0, "admitted": 0, "rejected": 0}
    assert before["upstream_connects"]["capacity"] == 3 and before["refreshes"]["capacity"] == 2
    key, _ = await proxy.app[KEYS].create("ci", {"max_concurrency": 4})
    await proxy.app[KEYS].create("unlimited")
    status, _, events = await post(http, codex_url(proxy), body(user("hi")), headers=bearer(key))
    assert_full_stream(status, events, "hi")
    after = (await admission(http, proxy))["gates"]
    aliases = {a.alias for a in proxy.roster.all()}
    assert set(after) == {"inflight", "upstream_connects", "refreshes", "any_account", "key:ci", *(f"account:{a}" for a in aliases)}
    for name, gate in after.items():
        assert set(gate) == GATE_FIELDS and all(type(v) is int for v in gate.values()), (name, gate)
    assert after["key:ci"] == {"capacity": 4, "in_use": 0, "waiting": 0, "admitted": 1, "rejected": 0}
    assert {after[f"account:{a}"]["capacity"] for a in aliases} == {5}
    assert sum(after[f"account:{a}"]["admitted"] for a in aliases) == 1

    async with http.get(f"{proxy.url}/api/admission", headers=REMOTE) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "admin_forbidden"


async def test_health_is_never_gated(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=1, max_queue=1, queue_wait_s=10)
    gates = gates_of(proxy)
    await add_fault(http, sim, action="stall", after_events=1, times=1)
    held = await hold(http, codex_url(proxy))
    waiter = asyncio.create_task(post(http, codex_url(proxy), body(user("waiting"))))
    await until(lambda: gates.inflight.waiting == 1, "a waiter", show=gates.snapshot)
    # Full and its line full: a proxied request is turned away, health and the admin view are not.
    async with asyncio.timeout(1):
        status, _, _ = await post(http, codex_url(proxy), body(user("turned away")))
        assert status == 429
        for path in ("/health/live", "/health/ready", "/health/live", "/health/ready"):
            async with http.get(f"{proxy.url}{path}") as resp:
                assert resp.status == 200, path
            async with http.head(f"{proxy.url}{path}") as resp:
                assert resp.status == 200, path
        assert (await admission(http, proxy))["gates"]["inflight"]["waiting"] == 1
    assert gates.inflight.admitted == 1 and not waiter.done()
    held.hang_up()
    status, _, events = await waiter
    assert_full_stream(status, events, "waiting")
    await assert_all_gates_idle(http, proxy)


async def test_a_client_that_hangs_up_in_line_leaves_it(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=1, queue_wait_s=10)
    gates = gates_of(proxy)
    await add_fault(http, sim, action="stall", after_events=1, times=1)
    held = await hold(http, codex_url(proxy))
    leaving = asyncio.create_task(post(http, codex_url(proxy), body(user("leaving"))))
    await until(lambda: gates.inflight.waiting == 1, "a waiter", show=gates.snapshot)
    staying = asyncio.create_task(post(http, codex_url(proxy), body(user("staying"))))
    await until(lambda: gates.inflight.waiting == 2, "two waiters", show=gates.snapshot)
    leaving.cancel()
    await until(lambda: gates.inflight.waiting == 1, "the leaver gone", show=gates.snapshot)
    held.hang_up()
    status, _, events = await staying
    assert_full_stream(status, events, "staying")
    snapshot = await assert_all_gates_idle(http, proxy)
    assert snapshot["inflight"]["admitted"] == 2 and snapshot["inflight"]["rejected"] == 0
    assert len(sim.backend.records) == 2  # the one that left never went upstream


async def test_admission_view_follows_the_roster(aiohttp_server, settings, sim, http):
    """An account renamed (imported again with an alias) or removed shows as it is now."""
    proxy = await start_proxy(aiohttp_server, settings, sim)
    status, _, events = await post(http, codex_url(proxy), body(user("hi")))
    assert_full_stream(status, events, "hi")
    assert {"account:sim1", "account:sim2", "account:sim3"} <= set((await admission(http, proxy))["gates"])
    async with http.delete(f"{proxy.url}/api/accounts/sim3") as resp:
        assert resp.status == 200, await resp.text()
    auth = sim.backend.accounts[0].auth_json()
    async with http.post(f"{proxy.url}/api/accounts", data=orjson.dumps({**auth, "alias": "renamed"})) as resp:
        assert resp.status == 200, await resp.text()
    assert {a.alias for a in proxy.roster.all()} == {"renamed", "sim2"}
    accounts = {name for name in (await admission(http, proxy))["gates"] if name.startswith("account:")}
    assert accounts == {"account:renamed", "account:sim2"}

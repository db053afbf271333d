"""A client WebSocket through codexlb to the sim's Responses WebSocket: the relay, admission at the
handshake, and recovery when the upstream socket is lost (the seed's scenarios)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time

import aiohttp
import pytest

from codexlb import log
from codexlb.bridge.http import SESSIONS
from codexlb.pool.selection import make_strategy
from codexlb.services import GATES, STORE
from codexlb.upstream.state import UPSTREAM
from tests import simclient
from tests.proxy.conftest import Proxy, start_proxy
from tests.simclient import body, handshake_headers, user, ws_turn

PREWARM = {"model": "gpt-5.5", "generate": False, "input": [
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "base"}]}]}


async def add_fault(http: aiohttp.ClientSession, proxy: Proxy, **fault) -> None:
    """A sim fault on its WebSocket transport (unless the fault names another)."""
    await simclient.add_fault(http, proxy.sim, **{"transport": "ws", **fault})


async def connect(http: aiohttp.ClientSession, proxy: Proxy) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(f"{proxy.codex_base_url}/responses",
                                 headers={"session_id": "conv-1", "openai-beta": "responses_websockets=2026-02-06"})


async def settled(proxy: Proxy) -> dict:
    """The gates once every handler has finished (a closed socket's handler ends a moment after the
    client), with no upstream socket left open but (at most) one per HTTP bridge session."""
    async with asyncio.timeout(5):
        while True:
            gates = proxy.app[GATES].snapshot()["gates"]
            if all(g["in_use"] == 0 and g["waiting"] == 0 for g in gates.values()) and (
                    proxy.sim.backend.open_sockets <= len(proxy.app[SESSIONS])):
                return gates
            await asyncio.sleep(0.01)


def terminal(events: list[dict]) -> dict:
    return events[-1]


async def conversation(ws: aiohttp.ClientWebSocketResponse, turns: int = 2) -> list[list[dict]]:
    """Prewarm, then `turns` requests each anchored on the previous response with only a new message."""
    answers = [await ws_turn(ws, PREWARM)]
    for n in range(turns):
        anchor = terminal(answers[-1])["response"]["id"]
        answers.append(await ws_turn(ws, body(user(f"turn {n}"), previous_response_id=anchor)))
    return answers


@pytest.fixture
async def proxy(aiohttp_server, settings, sim):
    return await start_proxy(aiohttp_server, settings, sim, failover_budget_s=10)


async def test_frames_are_relayed_and_the_turn_state_comes_back(proxy, http):
    async with await connect(http, proxy) as ws:
        assert handshake_headers(ws).get("x-codex-turn-state")
        answers = await conversation(ws)
    assert [terminal(a)["type"] for a in answers] == ["response.completed"] * 3
    records = proxy.sim.backend.records_view()
    assert [r["transport"] for r in records] == ["ws"] * 3
    assert [r["previous_response_id"] for r in records[1:]] == [r["response_id"] for r in records[:-1]]
    assert len({r["account_id"] for r in records}) == 1
    gates = await settled(proxy)
    assert gates["inflight"]["admitted"] == 1


async def test_a_client_that_drops_its_connection_is_logged_as_an_upgrade_not_a_failure(proxy, http):
    # `codex exec` ends its WebSocket by exiting: no close frame, the TCP connection just goes.
    stream = io.StringIO()
    log.configure("info", "json", stream)
    try:
        ws = await connect(http, proxy)
        assert terminal(await ws_turn(ws, body(user("hi"))))["type"] == "response.completed"
        ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        async with asyncio.timeout(5):
            while not (lines := [json.loads(line) for line in stream.getvalue().splitlines()
                                 if '"event":"request"' in line]):
                await asyncio.sleep(0.01)
    finally:
        log.configure("info", "json", io.StringIO())
    assert [(line["path"], line["status"]) for line in lines] == [("/backend-api/codex/responses", 101)]


async def test_socket_closed_between_turns_is_reconnected_unseen(proxy, http):
    await add_fault(http, proxy, action="close_after_response", anchored=True, times=1)
    async with await connect(http, proxy) as ws:
        answers = await conversation(ws, turns=3)
    assert [terminal(a)["type"] for a in answers] == ["response.completed"] * 4
    records = proxy.sim.backend.records_view()
    # Same account and turn state on the new socket, so the anchor still resolves there.
    assert [r["outcome"] for r in records] == ["completed"] * 4
    assert len({(r["account_id"], r["turn_state"]) for r in records}) == 1
    await settled(proxy)


def last_id(answers: list[list[dict]]) -> str:
    return terminal(answers[-1])["response"]["id"]


async def test_a_reconnect_refused_with_401_renews_the_token_and_goes_on(proxy, http):
    """The account's token expired while its socket was open; the socket closes between turns and the reconnect is
    refused with a 401: the token is refreshed and the socket reopened on the same account and turn state, unseen."""
    await add_fault(http, proxy, action="close_after_response", anchored=True, times=1)
    async with await connect(http, proxy) as ws:
        answers = [await ws_turn(ws, PREWARM)]
        answers.append(await ws_turn(ws, body(user("turn 0"), previous_response_id=last_id(answers))))
        account_id = proxy.sim.backend.records_view()[0]["account_id"]
        async with http.post(f"{proxy.sim.url}/__sim/accounts/{account_id}/expire") as resp:
            assert resp.status == 200
        answers.append(await ws_turn(ws, body(user("turn 1"), previous_response_id=last_id(answers))))
    assert [terminal(a)["type"] for a in answers] == ["response.completed"] * 3
    records = proxy.sim.backend.records_view()
    assert len({(r["account_id"], r["turn_state"]) for r in records}) == 1
    assert proxy.sim.backend.account(account_id).refreshes == 1
    await settled(proxy)


@pytest.mark.parametrize("after_events", [0, 1])
async def test_socket_lost_before_the_client_saw_a_byte_is_resent(proxy, http, after_events):
    """`close` after 0 events: nothing reached us. After 1 event the client would have it, so only 0
    is invisible; 1 is the mid-stream case and must end in one response.failed, never a 400."""
    await add_fault(http, proxy, action="close", anchored=True, after_events=after_events, times=1)
    async with await connect(http, proxy) as ws:
        answers = await conversation(ws, turns=1)
        follow_up = terminal(answers[-1])
        if after_events == 0:
            assert follow_up["type"] == "response.completed"
            assert [e["type"] for e in answers[-1]].count("response.created") == 1
        else:
            assert follow_up["type"] == "response.failed"
            assert follow_up["response"]["error"]["code"] == "stream_incomplete"
            # The client's retry (full history, as the CLI does) succeeds on a reconnected socket.
            retry = await ws_turn(ws, body(user("base"), user("turn 0")))
            assert terminal(retry)["type"] == "response.completed"
    records = proxy.sim.backend.records_view()
    assert all(r["error_code"] != "previous_response_not_found" for r in records)
    await settled(proxy)
    decision = "ws:resend" if after_events == 0 else "ws:fail:stream_incomplete"
    assert proxy.app[UPSTREAM].recoveries[decision] == 1


async def test_a_handshake_that_cannot_be_admitted_is_an_http_429(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, max_inflight=1, queue_wait_s=0.2)
    async with await connect(http, proxy):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(http, proxy)
    assert refused.value.status == 429
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
    gates = await settled(proxy)
    assert gates["inflight"]["rejected"] == 1
    # In the request log like a refused HTTP request.
    store = proxy.app[STORE]
    await store.flush_usage()
    [logged] = await store.requests({"status": 429}, 10, None)
    assert (logged["route"], logged["error_code"]) == ("/backend-api/codex/responses", "proxy_overloaded")


async def test_no_account_is_an_http_400_at_the_handshake(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=0)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(http, proxy)
    assert refused.value.status == 400
    await settled(proxy)


async def test_a_plain_get_is_told_to_upgrade(proxy, http):
    async with http.get(f"{proxy.codex_base_url}/responses") as resp:
        assert resp.status == 426 and (await resp.json())["error"]["code"] == "upgrade_required"


async def test_a_refused_upstream_handshake_fails_over_to_another_account(proxy, http):
    proxy.pool.strategy = make_strategy("round_robin")  # starts at the lowest account id: the failing one
    failing = min(a.account_id for a in proxy.sim.backend.accounts)
    await add_fault(http, proxy, kind="handshake", action="status", status=500, account=failing, times=None)
    async with await connect(http, proxy) as ws:
        answers = await conversation(ws, turns=1)
    assert [terminal(a)["type"] for a in answers] == ["response.completed"] * 2
    async with http.get(f"{proxy.sim.url}/__sim/faults") as resp:
        assert (await resp.json())["faults"][0]["fired"] == 1
    assert {r["account_id"] for r in proxy.sim.backend.records_view()} != {failing}
    await settled(proxy)


async def test_a_request_refused_before_any_byte_moves_to_another_account(proxy, http):
    """An unanchored request (the prewarm) refused with a 500 frame: the client never sees the refusal;
    the socket moves, and the conversation goes on there anchored."""
    proxy.pool.strategy = make_strategy("round_robin")
    failing = min(a.account_id for a in proxy.sim.backend.accounts)
    await add_fault(http, proxy, action="status", status=500, account=failing, times=None)
    async with await connect(http, proxy) as ws:
        answers = await conversation(ws, turns=2)
    assert [terminal(a)["type"] for a in answers] == ["response.completed"] * 3
    assert all(e["type"] != "error" for a in answers for e in a)
    seen = proxy.sim.backend.records_view()
    assert [(r["account_id"] == failing, r["outcome"]) for r in seen] == [
        (True, "error"), (False, "completed"), (False, "completed"), (False, "completed")]
    assert proxy.app[UPSTREAM].recoveries["ws:move"] == 1
    await settled(proxy)


async def test_an_anchored_request_refused_moves_with_its_history(proxy, http):
    """The transcript knows what the anchor stood for: the request goes to another account whole, and
    the client sees one normal answer."""
    async with await connect(http, proxy) as ws:
        prewarm = await ws_turn(ws, PREWARM)
        home = proxy.sim.backend.records_view()[0]["account_id"]
        await add_fault(http, proxy, action="status", status=500, account=home, anchored=True, times=None)
        events = await ws_turn(ws, body(user("x"), previous_response_id=terminal(prewarm)["response"]["id"]))
        assert terminal(events)["type"] == "response.completed"
        # The conversation goes on from the new answer, anchored, on the new account.
        again = await ws_turn(ws, body(user("y"), previous_response_id=terminal(events)["response"]["id"]))
        assert terminal(again)["type"] == "response.completed"
    refused, moved, follow_up = proxy.sim.backend.records_view()[1:]
    assert (refused["account_id"], refused["outcome"]) == (home, "error")
    assert moved["account_id"] != home and moved["previous_response_id"] is None and moved["n_input"] == 2
    assert follow_up["account_id"] == moved["account_id"] and follow_up["previous_response_id"] == moved["response_id"]
    assert proxy.app[UPSTREAM].recoveries["ws:move"] == 1
    await settled(proxy)


async def test_an_anchored_request_refused_with_no_history_is_passed_on(aiohttp_server, settings, sim, http):
    """With nothing to rebuild from (here: a transcript too small to keep anything), only its account
    could serve it: the refusal goes to the client as it came."""
    proxy = await start_proxy(aiohttp_server, settings, sim, transcript_conversation_max_mb=1e-6)
    async with await connect(http, proxy) as ws:
        prewarm = await ws_turn(ws, PREWARM)
        await add_fault(http, proxy, action="status", status=500, anchored=True, times=1)
        events = await ws_turn(ws, body(user("x"), previous_response_id=terminal(prewarm)["response"]["id"]))
    assert [e["type"] for e in events] == ["error"]
    assert proxy.app[UPSTREAM].recoveries["ws:move"] == 0
    await settled(proxy)


async def test_upstream_state_lost_is_rebuilt_on_the_same_socket(proxy, http):
    async with await connect(http, proxy) as ws:
        answers = await conversation(ws, turns=1)
        await add_fault(http, proxy, action="drop_state", anchored=True, times=1)
        anchor = terminal(answers[-1])["response"]["id"]
        events = await ws_turn(ws, body(user("after the loss"), previous_response_id=anchor))
        assert terminal(events)["type"] == "response.completed"
        assert all(e["type"] != "error" for e in events)
        again = await ws_turn(ws, body(user("and on"), previous_response_id=terminal(events)["response"]["id"]))
        assert terminal(again)["type"] == "response.completed"
    records = proxy.sim.backend.records_view()
    lost, rebuilt, follow_up = records[-3:]
    assert lost["error_code"] == "previous_response_not_found"
    # prewarm input (1) + its output (0) + turn 0 (1) + its output (1) + the new message (1)
    assert rebuilt["previous_response_id"] is None and rebuilt["n_input"] == 4
    assert follow_up["previous_response_id"] == rebuilt["response_id"] and follow_up["n_input"] == 1
    assert len({r["account_id"] for r in records}) == 1
    stats = proxy.app[UPSTREAM].transcripts.stats()
    assert stats["hits"] >= 1 and stats["misses"] == 0
    assert proxy.app[UPSTREAM].recoveries["ws:rebuild"] == 1
    await settled(proxy)


@pytest.mark.parametrize("k", range(16))
async def test_killed_at_event_index(proxy, http, k):
    """Upstream dies after k events of an anchored request: a terminal answer in bounded time, and no
    slot or socket left behind."""
    async with await connect(http, proxy) as ws:
        prewarm = await ws_turn(ws, PREWARM)
        await add_fault(http, proxy, action="close", after_events=k, anchored=True, times=1)
        events = await ws_turn(ws, body(user("x"), previous_response_id=terminal(prewarm)["response"]["id"]),
                               timeout=5)
    assert terminal(events)["type"] == ("response.completed" if k == 0 else "response.failed")
    await settled(proxy)


async def test_socket_lost_before_the_first_byte_of_an_unanchored_request_is_resent(proxy, http):
    await add_fault(http, proxy, action="close", kind="prewarm", after_events=0, times=1)
    async with await connect(http, proxy) as ws:
        answers = await conversation(ws, turns=1)
    assert [terminal(a)["type"] for a in answers] == ["response.completed"] * 2
    assert [r["outcome"] for r in proxy.sim.backend.records_view()] == ["close", "completed", "completed"]
    await settled(proxy)


async def test_an_upstream_silent_mid_response_is_given_up_after_the_bound(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, upstream_idle_timeout_s=0.3)
    await add_fault(http, proxy, action="stall", after_events=3, times=1)
    ws = await connect(http, proxy)
    started = time.monotonic()
    events = await ws_turn(ws, body(user("hi")))
    assert len(events) == 4 and terminal(events)["type"] == "response.failed"
    assert time.monotonic() - started < 5
    # Between responses nothing is bounded: the socket waits for the client's next request.
    answer = await ws_turn(ws, body(user("again")))
    assert terminal(answer)["type"] == "response.completed"
    await ws.close()


async def test_a_response_longer_than_the_silence_bound_is_not_cut_while_events_come(aiohttp_server, settings, sim,
                                                                                     http):
    """Events 100 ms apart for over a second, with a bound of 0.3 s (a timer not moved on as events come cuts it)."""
    proxy = await start_proxy(aiohttp_server, settings, sim, upstream_idle_timeout_s=0.3)
    await add_fault(http, proxy, action="delay", between_events_ms=100, times=1)
    ws = await connect(http, proxy)
    started = time.monotonic()
    events = await ws_turn(ws, body(user("a few words to make the answer last")))
    assert terminal(events)["type"] == "response.completed" and time.monotonic() - started > 1.0
    await ws.close()

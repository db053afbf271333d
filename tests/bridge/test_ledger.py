"""The ledger against what the sim recorded, over each carrier: a multi-turn conversation with a fault that makes
a recovery, and `GET /api/conversations/{id}` must say, per request, the tokens upstream reported, every byte and
item that went upstream (retries and recoveries included), the recoveries' kinds and the bytes they added, and
what the client would have sent had it resent its whole history."""

from __future__ import annotations

import orjson
import pytest

from codexlb.services import STORE
from tests.bridge.test_http_bridge import Conversation, completed
from tests.bridge.test_websocket import PREWARM, settled, terminal
from tests.proxy.conftest import start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import TERMINAL, add_fault, body, user


def tokens(usage: dict) -> tuple[int, int, int, int]:
    return (usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"], usage["output_tokens"],
            usage["output_tokens_details"]["reasoning_tokens"])


def metadata(turn: str) -> dict:
    return {"client_metadata": {"turn_id": turn}}


async def ledger(http, proxy, conversation: str) -> list[dict]:
    await proxy.app[STORE].flush_usage()
    async with http.get(f"{proxy.url}/api/conversations/{conversation}") as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["requests"]


def check_against_sim(requests: list[dict], records: list[dict], groups: list[list[int]]) -> None:
    """Each request against the sim records that were its sends (`groups`: their indexes, the answered one last)."""
    assert len(requests) == len(groups)
    for request, group in zip(requests, groups):
        sends = [records[i] for i in group]
        answered = sends[-1]
        assert answered["outcome"] == "completed", answered
        got = (request["input_tokens"], request["cached_tokens"], request["output_tokens"],
               request["reasoning_tokens"])
        assert got == tokens(answered["usage"])
        assert request["upstream_bytes"] == sum(s["body_bytes"] for s in sends)
        assert request["upstream_items"] == sum(s["n_input"] for s in sends)
        assert request["account_id"] == answered["account_id"] and request["status"] == 200


async def test_websocket_relay_accounts_per_response_with_a_reconnect_and_a_rebuild(aiohttp_server, settings,
                                                                                     sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, failover_budget_s=10)
    sent: list[str] = []

    async def turn(ws, payload: dict) -> list[dict]:
        text = orjson.dumps({"type": "response.create", **payload}).decode()
        sent.append(text)
        await ws.send_str(text)
        events = []
        while not events or events[-1]["type"] not in TERMINAL:
            events.append(orjson.loads((await ws.receive(timeout=10)).data))
        assert events[-1]["type"] == "response.completed", events[-1]
        return events

    async with http.ws_connect(f"{proxy.codex_base_url}/responses",
                               headers={"session_id": "conv-ws", "openai-beta": "responses_websockets=2026-02-06"}) as ws:
        last = terminal(await turn(ws, PREWARM))
        for n in range(5):
            if n == 1:  # the socket goes after this turn's answer: the next one reconnects
                await add_fault(http, sim, transport="ws", action="close_after_response", times=1)
            if n == 3:  # upstream forgets the conversation: this turn is rebuilt from the transcript
                await add_fault(http, sim, transport="ws", action="drop_state", anchored=True, times=1)
            payload = body(user(f"turn {n}"), previous_response_id=last["response"]["id"], **metadata(f"t{n}"))
            last = terminal(await turn(ws, {k: v for k, v in payload.items() if k != "stream"}))
    await settled(proxy)
    records = sim.backend.records_view()
    assert [r["outcome"] for r in records] == ["completed"] * 4 + ["error", "completed", "completed"]
    requests = await ledger(http, proxy, "conv-ws")
    check_against_sim(requests, records, [[0], [1], [2], [3], [4, 5], [6]])
    assert [r["transport"] for r in requests] == ["ws"] * 6
    assert [r["turn_id"] for r in requests] == [None, "t0", "t1", "t2", "t3", "t4"]
    assert [r["client_bytes"] for r in requests] == [len(text) for text in sent]
    assert [r["client_items"] for r in requests] == [1] * 6
    assert [(r["recoveries"], r["recovery_kinds"]) for r in requests] == [
        (0, None), (0, None), (0, None), (1, "reconnect"), (1, "rebuild"), (0, None)]
    # The reconnect sent nothing of its own; the rebuild is the sim's second send of that request.
    assert [r["recovery_bytes"] for r in requests] == [0, 0, 0, 0, records[5]["body_bytes"], 0]
    # Resending the history costs what the rebuild added to the request's input, exactly.
    lost, rebuilt = records[4], records[5]
    history = [r["unanchored_bytes"] - r["client_bytes"] for r in requests]
    assert history[4] == rebuilt["input_bytes"] - lost["input_bytes"] > 0
    # Each turn's history is the one before's, plus that request's items and output.
    assert history[0] == 0 and history == sorted(history) and len(set(history)) == 6
    # Saved: what a whole resend would have sent, less what went upstream. The anchor spared each request its
    # history; the rebuilt one sent it again (and its lost try), so it saved nothing.
    saved = [r["saved_bytes"] for r in requests]
    assert saved == [max(0, r["unanchored_bytes"] - r["upstream_bytes"]) for r in requests]
    assert saved[4] == 0 and all(saved[n] > 0 for n in (1, 2, 3, 5))


async def test_http_bridge_accounts_a_reconnect_and_a_whole_send(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, failover_budget_s=10)
    history: list[dict] = []
    posted: list[int] = []
    for n in range(5):
        if n == 1:
            await add_fault(http, sim, transport="ws", action="close_after_response", times=1)
        if n == 3:
            await add_fault(http, sim, transport="ws", action="drop_state", anchored=True, times=1)
        history.append(user(f"turn {n}"))
        data = orjson.dumps(body(*history, **metadata(f"t{n}")))
        posted.append(len(data))
        resp, events = await post(http, proxy, data, {"session_id": "conv-bridge"})
        assert completed(resp, events)
        history.extend(events[-1]["response"]["output"])
    await settled(proxy)
    records = sim.backend.records_view()
    assert [r["outcome"] for r in records] == ["completed"] * 3 + ["error", "completed", "completed"]
    requests = await ledger(http, proxy, "conv-bridge")
    check_against_sim(requests, records, [[0], [1], [2], [3, 4], [5]])
    assert [r["transport"] for r in requests] == ["bridge"] * 5
    assert [r["turn_id"] for r in requests] == ["t0", "t1", "t2", "t3", "t4"]
    assert [r["client_items"] for r in requests] == [1, 3, 5, 7, 9]
    assert [r["client_bytes"] for r in requests] == posted
    assert [(r["recovery_kinds"], r["recovery_bytes"]) for r in requests] == [
        (None, 0), (None, 0), ("reconnect", 0), ("whole_send", records[4]["body_bytes"]), (None, 0)]
    # The client sent its whole history each time; upstream got only the new items, but for the whole send.
    assert all(r["unanchored_bytes"] == r["client_bytes"] for r in requests)
    saved = [r["saved_bytes"] for r in requests]
    assert saved == [max(0, r["client_bytes"] - r["upstream_bytes"]) for r in requests]
    assert saved[3] == 0 and all(saved[n] > 0 for n in (1, 2, 4))


async def test_plain_http_accounts_a_move_to_another_account(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, failover_budget_s=10, http_bridge=False)
    talk = Conversation(http, proxy, {"session_id": "conv-http"})
    for n in range(3):
        if n == 1:
            await add_fault(http, sim, transport="http", action="status", status=500, times=1)
        assert completed(*await talk.say(f"turn {n}"))
    records = sim.backend.records_view()
    assert [r["outcome"] for r in records] == ["completed", "error", "completed", "completed"]
    assert records[1]["account_id"] != records[2]["account_id"]
    requests = await ledger(http, proxy, "conv-http")
    check_against_sim(requests, records, [[0], [1, 2], [3]])
    assert [r["transport"] for r in requests] == ["http"] * 3
    assert [(r["recovery_kinds"], r["recovery_bytes"]) for r in requests] == [
        (None, 0), ("move", records[2]["body_bytes"]), (None, 0)]
    assert [r["client_bytes"] for r in requests] == [r["body_bytes"] for r in (records[0], records[2], records[3])]


@pytest.mark.parametrize("path", ["/api/conversations", "/api/usage"])
async def test_the_summary_adds_up_the_requests(aiohttp_server, settings, sim, http, path):
    proxy = await start_proxy(aiohttp_server, settings, sim, failover_budget_s=10)
    talk = Conversation(http, proxy, {"session_id": "conv-sum"})
    for n in range(3):
        assert completed(*await talk.say(f"turn {n}"))
    requests = await ledger(http, proxy, "conv-sum")
    async with http.get(f"{proxy.url}{path}") as resp:
        view = await resp.json()
    total = view["conversations"][0] if path == "/api/conversations" else view["accounts"][0]
    assert total["requests"] == 3
    for name in ("input_tokens", "cached_tokens", "output_tokens", "saved_bytes", "recoveries"):
        assert total[name] == sum(r[name] for r in requests)
    assert total["input_tokens"] == sum(tokens(r["usage"])[0] for r in sim.backend.records_view())

"""A conversation whose input carries reasoning its account sealed (`encrypted_content`, which upstream opens
only on the account that produced it) is taken over by another codexlb on the same store (as after a hand-over
or on another replica), which knows its account only from the shared sticky map and has never seen its items.
Its account is full with other streams while the others have room: the request waits for its own account
instead of moving (where upstream would answer 400 `invalid_encrypted_content` and the Codex CLI's turn would
fail), is turned away with 429 + Retry-After when no slot frees within the admission wait (one wait, not one for the
bridge and one for the plain HTTP way after it), and moves, less the sealed items, only when its account is out of
rotation (upstream refuses them there once, and the request goes again without them). Over the plain HTTP way, the HTTP bridge and the
client WebSocket relay (decided at the handshake, from the conversation's keys)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from codexlb.services import GATES, STORE
from codexlb.store import conversations
from tests.admission.test_http_admission import codex_url, post, until
from tests.fleet.conftest import start_fleet
from tests.proxy.conftest import Proxy
from tests.simclient import body, user, ws_turn

SESSION = "conv-sealed-1"
HEADERS = {"session_id": SESSION}
SEALED = {"include": ["reasoning.encrypted_content"]}
WS_HEADERS = {**HEADERS, "openai-beta": "responses_websockets=2026-02-06"}


class Talk:
    """A Codex CLI-like client: whole history with every request, reasoning asked for (so sealed by the
    account that answers); over the plain HTTP way, the bridge, or one client WebSocket per turn."""

    def __init__(self, http: aiohttp.ClientSession, transport: str) -> None:
        self.http, self.transport = http, transport
        self.history: list[dict[str, Any]] = []

    async def say(self, proxy: Proxy, text: str) -> tuple[int, dict[str, str], Any]:
        """Status, headers, and the events (or the error body; over WebSocket, the handshake's refusal)."""
        self.history.append(user(text))
        payload = body(*self.history, **SEALED)
        if self.transport == "ws":
            try:
                async with self.http.ws_connect(f"{proxy.codex_base_url}/responses", headers=WS_HEADERS) as ws:
                    events = await ws_turn(ws, payload)
                status, headers = 200, {}
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status, dict(exc.headers or {}), None
        else:
            status, headers, events = await post(self.http, codex_url(proxy), payload, HEADERS)
        if status == 200 and events[-1]["type"] == "response.completed":
            self.history.extend(events[-1]["response"]["output"])
        return status, headers, events


def sealed(items: list[dict[str, Any]]) -> int:
    return sum(1 for i in items if i.get("type") == "reasoning" and i.get("encrypted_content"))


@pytest.fixture(params=["plain", "bridge", "ws"])
def transport(request) -> str:
    return request.param


async def taken_over(aiohttp_server, settings, sim, database_url, http, transport: str, queue_wait_s: float):
    """The conversation's first turn on replica a; returns (a conversation to go on with, replica b, the
    account the first turn sealed its reasoning on). b shares a's store and has seen nothing of it."""
    a, b = await start_fleet(aiohttp_server, settings, sim, database_url, replicas=2, account_max_streams=1,
                             queue_wait_s=queue_wait_s, failover_budget_s=10, http_bridge=transport != "plain")
    talk = Talk(http, transport)
    status, _, events = await talk.say(a, "one")
    assert status == 200 and events[-1]["type"] == "response.completed", events
    assert sealed(talk.history) == 1
    [record] = sim.backend.records_view()
    home = record["account_id"]

    async def shared() -> bool:
        return bool(await conversations.sticky_rows(b.app[STORE].db, [f"session:{SESSION}"]))

    async with asyncio.timeout(5):
        while not await shared():
            await asyncio.sleep(0.01)
    return talk, b, b.roster.by_id(home)


def held_full(proxy: Proxy, account) -> list:
    """Every stream slot of `account` taken, as other streams would."""
    gate = proxy.app[GATES].account(account)
    slots = [gate.try_acquire() for _ in range(gate.capacity)]
    assert all(slots) and not gate.has_room()
    return slots


async def test_served_on_its_own_account_once_a_slot_frees(aiohttp_server, settings, sim, database_url, http,
                                                            transport):
    talk, b, home = await taken_over(aiohttp_server, settings, sim, database_url, http, transport, queue_wait_s=10)
    gate = b.app[GATES].account(home)
    held = held_full(b, home)
    sent = len(sim.backend.records)
    turn = asyncio.create_task(talk.say(b, "two"))
    try:
        # In line for its own account, while the other two have room; nothing went upstream meanwhile.
        await until(lambda: gate.waiting == 1, "the request in line for its account", show=b.app[GATES].snapshot)
        assert len(sim.backend.records) == sent and not turn.done()
    finally:
        for slot in held:
            slot.release()
    status, _, events = await asyncio.wait_for(turn, 10)
    assert status == 200 and events[-1]["type"] == "response.completed", events
    seen = sim.backend.records_view()[sent:]
    assert [r["account_id"] for r in seen] == [home.id] and seen[0]["outcome"] == "completed", seen


async def test_rejected_with_retry_after_when_no_slot_frees_in_time(aiohttp_server, settings, sim, database_url,
                                                                   http, transport):
    talk, b, home = await taken_over(aiohttp_server, settings, sim, database_url, http, transport, queue_wait_s=0.3)
    held = held_full(b, home)
    sent = len(sim.backend.records)
    try:
        status, headers, answer = await talk.say(b, "two")
    finally:
        for slot in held:
            slot.release()
    assert status == 429, answer
    assert 1 <= int(headers["Retry-After"]) <= 60
    if answer is not None:
        assert answer["error"]["code"] == "proxy_overloaded" and home.alias in answer["error"]["message"], answer
    # Refused once, at its own account, after one admission wait; no other account saw the request.
    assert b.app[GATES].account(home).rejected == 1
    assert len(sim.backend.records) == sent


async def test_moved_without_the_sealed_items_when_its_account_is_paused(aiohttp_server, settings, sim,
                                                                         database_url, http, transport):
    talk, b, home = await taken_over(aiohttp_server, settings, sim, database_url, http, transport, queue_wait_s=10)
    await b.roster.pause(home.id)
    sent = len(sim.backend.records)
    status, _, events = await talk.say(b, "two")
    assert status == 200 and events[-1]["type"] == "response.completed", events
    seen = sim.backend.records_view()[sent:]
    # This replica has no record of who sealed the reasoning: another account refused it, and the request went
    # once more, there, with the whole history less the one item only the paused account can open.
    assert [r["account_id"] != home.id for r in seen] == [True, True], seen
    assert [r["error_code"] for r in seen] == ["invalid_encrypted_content", None], seen
    assert seen[1]["outcome"] == "completed" and seen[1]["n_input"] == 3, seen
    assert seen[1]["previous_response_id"] is None, seen

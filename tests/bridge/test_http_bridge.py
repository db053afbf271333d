"""The HTTP bridge against the sim: a client that resends the whole conversation over HTTP, as the Codex
CLI does, while only new items go upstream; and the seed's scenarios of a lost upstream socket."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
import pytest

from codexlb.app import create_app
from codexlb.bridge.http import SESSIONS, _sse_frame
from codexlb.services import ROSTER
from codexlb.upstream.state import UPSTREAM
from tests.bridge.test_websocket import settled
from tests.accounts.conftest import login_of
from tests.proxy.conftest import Proxy, start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import add_fault, body, user

SESSION = {"session_id": "conv-http-1"}


class Conversation:
    """A client that sends its whole history each time: prior input, the answer's output, new items."""

    def __init__(self, http, proxy: Proxy, headers: dict[str, str] | None = None) -> None:
        self.http, self.proxy, self.headers = http, proxy, headers or SESSION
        self.history: list[dict] = []

    async def say(self, text: str):
        self.history.append(user(text))
        resp, events = await post(self.http, self.proxy, body(*self.history), self.headers)
        if resp.status == 200 and events[-1]["type"] == "response.completed":
            self.history.extend(events[-1]["response"]["output"])
        return resp, events


def records(proxy: Proxy) -> list[dict]:
    return proxy.sim.backend.records_view()


def completed(resp, events) -> bool:
    return resp.status == 200 and [e["type"] for e in events].count("response.completed") == 1 and (
        events[-1]["type"] == "response.completed")


@pytest.fixture
async def proxy(aiohttp_server, settings, sim):
    return await start_proxy(aiohttp_server, settings, sim, failover_budget_s=10)


async def test_whole_history_in_only_new_items_up(proxy, http):
    talk = Conversation(http, proxy)
    for n in range(5):
        assert completed(*await talk.say(f"turn {n}"))
    seen = records(proxy)
    assert [r["transport"] for r in seen] == ["ws"] * 5
    assert seen[0]["previous_response_id"] is None
    # Each later request is anchored on the one before and carries only the new user message.
    assert [r["previous_response_id"] for r in seen[1:]] == [r["response_id"] for r in seen[:-1]]
    assert [r["n_input"] for r in seen[1:]] == [1] * 4
    assert len({(r["account_id"], r["turn_state"]) for r in seen}) == 1
    assert len(proxy.app[SESSIONS]) == 1


async def test_a_changed_history_is_sent_whole(proxy, http):
    talk = Conversation(http, proxy)
    assert completed(*await talk.say("one"))
    talk.history[0] = user("one, edited")  # the client rewrote history: no prefix, no trimming
    assert completed(*await talk.say("two"))
    second = records(proxy)[1]
    assert second["previous_response_id"] is None and second["n_input"] == 3


async def test_closed_between_turns_reconnects_unseen(proxy, http):
    await add_fault(http, proxy.sim, transport="ws", action="close_after_response", times=1)
    talk = Conversation(http, proxy)
    for n in range(3):
        assert completed(*await talk.say(f"turn {n}"))
    seen = records(proxy)
    assert [r["outcome"] for r in seen] == ["completed"] * 3
    # The new socket presents the turn state, so the anchor still resolves there.
    assert seen[1]["previous_response_id"] == seen[0]["response_id"] and seen[1]["n_input"] == 1


async def test_a_reconnect_refused_with_401_renews_the_token_and_keeps_the_session(proxy, http):
    """The token expired while the session's socket was open; it closes between turns and the reconnect is refused
    with a 401: the token is refreshed and the session goes on, anchored, on a new socket (not the plain way)."""
    await add_fault(http, proxy.sim, transport="ws", action="close_after_response", times=1)
    talk = Conversation(http, proxy)
    assert completed(*await talk.say("one"))
    account_id = records(proxy)[0]["account_id"]
    async with http.post(f"{proxy.sim.url}/__sim/accounts/{account_id}/expire") as resp:
        assert resp.status == 200
    assert completed(*await talk.say("two"))
    seen = records(proxy)
    assert [r["transport"] for r in seen] == ["ws", "ws"]
    assert seen[1]["previous_response_id"] == seen[0]["response_id"] and seen[1]["n_input"] == 1
    assert proxy.sim.backend.account(account_id).refreshes == 1


@pytest.mark.parametrize("anchored", [False, True], ids=["first-request", "anchored"])
async def test_lost_before_the_first_byte_is_one_clean_response(proxy, http, anchored):
    talk = Conversation(http, proxy)
    if anchored:
        assert completed(*await talk.say("warm up"))
    await add_fault(http, proxy.sim, transport="ws", action="close", after_events=0, anchored=anchored, times=1)
    resp, events = await talk.say("hello")
    assert completed(resp, events)
    assert [e["type"] for e in events].count("response.created") == 1
    tries = records(proxy)[-2:]
    assert [t["outcome"] for t in tries] == ["close", "completed"]
    await settled(proxy)
    async with http.get(f"{proxy.url}/api/bridge") as resp:
        view = await resp.json()
    assert view["sessions"] == 1 and view["recoveries"] == {"http:resend": 1}
    assert set(view["transcripts"]) == {"responses", "conversations", "bytes", "hits", "misses", "evictions"}


async def test_lost_mid_stream_is_a_retriable_failure_and_the_retry_succeeds(proxy, http):
    talk = Conversation(http, proxy)
    assert completed(*await talk.say("warm up"))
    await add_fault(http, proxy.sim, transport="ws", action="close", after_events=3, times=1)
    resp, events = await post(http, proxy, body(*talk.history, user("cut")), SESSION)
    assert resp.status == 200
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "stream_incomplete"
    # The CLI resends the same body; the session reconnects and answers it.
    talk.history.append(user("cut"))
    resp, events = await post(http, proxy, body(*talk.history), SESSION)
    assert completed(resp, events)
    await settled(proxy)


async def test_state_lost_upstream_never_reaches_the_client_as_400(proxy, http):
    talk = Conversation(http, proxy)
    assert completed(*await talk.say("warm up"))
    await add_fault(http, proxy.sim, transport="ws", action="drop_state", anchored=True, times=1)
    resp, events = await talk.say("after the loss")
    assert completed(resp, events)
    lost, whole = records(proxy)[-2:]
    assert lost["error_code"] == "previous_response_not_found"
    # The proxy held the whole conversation: it sent it without its anchor.
    assert whole["previous_response_id"] is None and whole["n_input"] == 3
    assert completed(*await talk.say("and on"))
    assert records(proxy)[-1]["previous_response_id"] == whole["response_id"]
    recoveries = proxy.app[UPSTREAM].recoveries
    assert recoveries["http:resend_whole"] == 1 and recoveries["http:resend_whole_bytes"] > 100


async def test_killed_at_every_event_index(proxy, http):
    """Upstream dies after k events, for every k: a terminal answer comes in bounded time, never a 400,
    and no slot or socket is left behind."""
    talk = Conversation(http, proxy)
    assert completed(*await talk.say("warm up"))
    n_events = 16  # a short reply's stream
    for k in range(n_events):
        await add_fault(http, proxy.sim, transport="ws", action="close", after_events=k, times=1)
        started = time.monotonic()
        resp, events = await post(http, proxy, body(*talk.history, user(f"k={k}")), SESSION)
        assert time.monotonic() - started < 5
        assert resp.status == 200, events
        last = events[-1]
        if k == 0:
            assert last["type"] == "response.completed"  # nothing had reached the client: resent
        else:
            assert last["type"] in ("response.completed", "response.failed"), last
            if last["type"] == "response.failed":
                assert last["response"]["error"]["code"] == "stream_incomplete"
    assert all(r["error_code"] != "previous_response_not_found" for r in records(proxy))
    await settled(proxy)


async def test_sessions_are_per_conversation_and_per_key(proxy, http):
    for conversation in ("a", "b"):
        talk = Conversation(http, proxy, {"session_id": conversation})
        assert completed(*await talk.say("hi"))
    assert len(proxy.app[SESSIONS]) == 2


async def test_least_recently_used_idle_session_is_let_go(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, bridge_max_sessions=2)
    for conversation in ("a", "b", "c"):
        talk = Conversation(http, proxy, {"session_id": conversation})
        assert completed(*await talk.say("hi"))
    assert len(proxy.app[SESSIONS]) == 2
    await asyncio.wait_for(_until_sockets(proxy, 2), 5)


async def _until_sockets(proxy: Proxy, n: int) -> None:
    while proxy.sim.backend.open_sockets != n:
        await asyncio.sleep(0.01)


async def test_bridge_off_is_plain_http(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, http_bridge=False)
    talk = Conversation(http, proxy)
    assert completed(*await talk.say("one"))
    assert completed(*await talk.say("two"))
    assert [r["transport"] for r in records(proxy)] == ["http", "http"]


async def test_a_session_that_keeps_failing_is_retired_and_replaced(proxy, http):
    talk = Conversation(http, proxy)
    assert completed(*await talk.say("warm up"))
    first = proxy.app[SESSIONS]._by_key.copy()
    # Every request on the socket is lost before its first event: resends run out, the client gets a
    # retriable 502 (never a 400), and after three such requests the session goes.
    await add_fault(http, proxy.sim, transport="ws", action="close", after_events=0, times=None)
    for _ in range(3):
        resp, error = await post(http, proxy, body(*talk.history, user("again")), SESSION)
        assert resp.status == 502 and error["error"]["code"] == "upstream_unavailable", error
    assert len(proxy.app[SESSIONS]) == 0
    async with http.delete(f"{proxy.sim.url}/__sim/faults") as resp:
        assert resp.status == 200
    assert completed(*await talk.say("again"))
    assert len(proxy.app[SESSIONS]) == 1 and proxy.app[SESSIONS]._by_key != first
    await settled(proxy)


async def test_idle_sessions_are_let_go_without_new_traffic(aiohttp_server, settings, sim, http):
    proxy = await start_proxy(aiohttp_server, settings, sim, bridge_idle_ttl_s=0.05)
    talk = Conversation(http, proxy)
    assert completed(*await talk.say("hi"))
    assert len(proxy.app[SESSIONS]) == 1
    await asyncio.wait_for(_until_sockets(proxy, 0), 5)
    assert len(proxy.app[SESSIONS]) == 0


def test_an_upstream_event_with_line_breaks_in_its_json_stays_one_sse_frame():
    for text in (b'{"type": "response.created",\n "response": {}}', b'{"type":"response.created",\r"response":{}}'):
        frame = _sse_frame("response.created", text, orjson.loads(text))
        assert frame.count(b"\n\n") == 1 and frame.endswith(b"\n\n") and b"\r" not in frame
        assert orjson.loads(frame.split(b"data: ", 1)[1]) == {"type": "response.created", "response": {}}
    assert _sse_frame("response.created", b'{"type":"response.created"}', {}) == (
        b'event: response.created\ndata: {"type":"response.created"}\n\n')


async def test_reasoning_another_account_sealed_stays_off_the_sessions_account(aiohttp_server, settings, sim, http):
    """A turn that went the plain way to another account (its session's account failed it before the first
    byte) leaves reasoning only that account can open in the history; the next turn on the session sends it
    anchored, less that reasoning (it reached the session's account, which answered 400
    invalid_encrypted_content: 57 of 69,672 bridged requests in the soak benchmark)."""
    proxy = await start_proxy(aiohttp_server, settings, sim, account_max_streams=1)
    headers = {"session_id": "conv-sealed"}
    history: list[dict] = []

    async def say(text: str) -> str:
        history.append(user(text))
        resp, events = await post(http, proxy, body(*history, include=["reasoning.encrypted_content"]), headers)
        assert completed(resp, events), events
        history.extend(events[-1]["response"]["output"])
        return records(proxy)[-1]["account_id"]

    home = await say("one")
    await add_fault(http, proxy.sim, account=home, transport="ws", action="status", status=500, times=1)
    assert await say("two") != home  # the plain way, on another account
    assert await say("three") == home
    assert records(proxy)[-1]["transport"] == "ws" and records(proxy)[-1]["previous_response_id"] is not None


@pytest.mark.parametrize("bridged", [True, False], ids=["bridge", "plain"])
async def test_reasoning_sealed_by_an_account_this_process_never_saw_is_sent_again_without_it(
        aiohttp_server, settings, sim, http, bridged):
    """A conversation that comes to a process with no record of who sealed its reasoning (a new process after an
    upgrade, or a replica that could not read the shared sticky map) and lands on another account: upstream
    refuses the reasoning (400 invalid_encrypted_content) before the client has a byte; the request goes again,
    once, without it, on the same account, and the turn succeeds (before: the client got the 400)."""
    first = await start_proxy(aiohttp_server, settings, sim)
    history = [user("one")]
    resp, events = await post(http, first, body(*history, include=["reasoning.encrypted_content"]), SESSION)
    assert completed(resp, events), events
    history.extend(events[-1]["response"]["output"])
    assert any(item.get("encrypted_content") for item in history if item.get("type") == "reasoning")
    home = records(first)[-1]["account_id"]

    # A process of its own (its own SQLite store, whatever the suite's engine: no shared map) with only the other
    # accounts.
    app = create_app(dataclasses.replace(settings, data_dir=settings.data_dir / "second", database_url="",
                                         http_bridge=bridged,
                                         upstream_base_url=sim.upstream_base_url, auth_base_url=sim.url))
    server = await aiohttp_server(app)
    for sim_account in sim.backend.accounts:
        if sim_account.account_id != home:
            await app[ROSTER].add_login(login_of(sim_account))
    second = Proxy(str(server.make_url("")).rstrip("/"), app, sim)
    history.append(user("two"))
    resp, events = await post(http, second, body(*history, include=["reasoning.encrypted_content"]), SESSION)
    assert completed(resp, events), events
    refused, retried = records(second)[-2:]
    assert refused["error_code"] == "invalid_encrypted_content" and retried["outcome"] == "completed"
    assert refused["account_id"] == retried["account_id"] != home
    assert app[UPSTREAM].recoveries["http:unsealed"] == 1


async def test_an_upstream_gone_silent_is_given_up_after_its_wait(aiohttp_server, settings, sim, http):
    """Silent before its first event: sent again, unseen; silent after bytes: a retriable failure; then the
    conversation goes on on a fresh socket."""
    proxy = await start_proxy(aiohttp_server, settings, sim, upstream_first_event_timeout_s=0.3,
                              upstream_idle_timeout_s=0.3)
    await add_fault(http, proxy.sim, transport="ws", action="stall", after_events=0, times=1)
    assert completed(*await post(http, proxy, body(user("one")), SESSION))
    assert proxy.app[UPSTREAM].recoveries["http:resend"] == 1
    await add_fault(http, proxy.sim, transport="ws", action="stall", after_events=3, times=1)
    started = time.monotonic()
    resp, events = await post(http, proxy, body(user("two")), SESSION)
    assert resp.status == 200 and len(events) == 4 and events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "stream_incomplete" and time.monotonic() - started < 5
    assert completed(*await post(http, proxy, body(user("three")), SESSION))


async def test_a_stream_longer_than_its_waits_is_not_cut_while_events_keep_coming(aiohttp_server, settings, sim,
                                                                                   http):
    """The waits bound the silence between events, not the stream: events 100 ms apart over a second and more,
    with waits of 0.3 s."""
    proxy = await start_proxy(aiohttp_server, settings, sim, upstream_first_event_timeout_s=0.3,
                              upstream_idle_timeout_s=0.3)
    await add_fault(http, proxy.sim, transport="ws", action="delay", between_events_ms=100, times=1)
    started = time.monotonic()
    resp, events = await post(http, proxy, body(user("a few words to make the answer last")), SESSION)
    assert completed(resp, events) and time.monotonic() - started > 1.0

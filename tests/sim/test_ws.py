"""The sim's Responses WebSocket and the continuation rules of `store: false` state."""

from __future__ import annotations

import aiohttp
import pytest

from tests.simclient import body, handshake_headers, user, ws_connect, ws_turn


def completed_id(events: list[dict]) -> str:
    assert events[-1]["type"] == "response.completed", events[-1]
    return events[-1]["response"]["id"]


def assert_not_found(events: list[dict], anchor: str) -> None:
    assert len(events) == 1
    frame = events[0]
    assert frame["type"] == "error" and frame["status"] == 400
    assert frame["error"]["code"] == "previous_response_not_found"
    assert frame["error"]["param"] == "previous_response_id"
    assert anchor in frame["error"]["message"]


async def test_handshake_headers(sim, http):
    ws = await ws_connect(http, sim)
    state = handshake_headers(ws)["x-codex-turn-state"]
    assert state.startswith("ts_")
    assert "x-codex-primary-used-percent" in handshake_headers(ws)
    await ws.close()
    given = await ws_connect(http, sim, headers={"x-codex-turn-state": state})
    assert handshake_headers(given)["x-codex-turn-state"] == state
    await given.close()


async def test_handshake_with_a_bad_token_is_a_real_401(sim, http):
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(f"{sim.codex_base_url}/responses", headers={"Authorization": "Bearer nope"})
    assert caught.value.status == 401


async def test_prewarm_then_incremental_turns_on_one_socket(sim, http):
    ws = await ws_connect(http, sim)
    prewarm = await ws_turn(ws, body({"type": "message", "role": "developer", "content": "base"}, generate=False))
    assert [e["type"] for e in prewarm] == ["response.created", "response.in_progress", "response.completed"]
    assert prewarm[-1]["response"]["output"] == []
    anchor = completed_id(prewarm)

    turn = await ws_turn(ws, body(user("first"), previous_response_id=anchor))
    assert "You said: first" in turn[-1]["response"]["output"][0]["content"][0]["text"]
    usage = turn[-1]["response"]["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] == prewarm[-1]["response"]["usage"]["total_tokens"]

    follow = await ws_turn(ws, body(user("second"), previous_response_id=completed_id(turn)))
    assert follow[-1]["response"]["previous_response_id"] == completed_id(turn)
    assert follow[-1]["response"]["usage"]["input_tokens"] > usage["input_tokens"]
    await ws.close()

    records = list(sim.backend.records)
    assert [r.kind for r in records] == ["prewarm", "turn", "turn"]
    assert [r.n_input for r in records] == [1, 1, 1]
    assert all(r.transport == "ws" and r.outcome == "completed" for r in records)


async def test_several_responses_in_sequence_without_anchor(sim, http):
    ws = await ws_connect(http, sim)
    ids = [completed_id(await ws_turn(ws, body(user(f"n{i}")))) for i in range(5)]
    assert len(set(ids)) == 5
    await ws.close()


async def test_reconnect_with_turn_state_on_same_account_continues(sim, http):
    ws = await ws_connect(http, sim)
    state = handshake_headers(ws)["x-codex-turn-state"]
    anchor = completed_id(await ws_turn(ws, body(user("hi"))))
    await ws.close()
    again = await ws_connect(http, sim, headers={"x-codex-turn-state": state})
    events = await ws_turn(again, body(user("more"), previous_response_id=anchor))
    assert completed_id(events)
    await again.close()


async def test_reconnect_without_turn_state_loses_the_anchor(sim, http):
    ws = await ws_connect(http, sim)
    anchor = completed_id(await ws_turn(ws, body(user("hi"))))
    await ws.close()
    fresh = await ws_connect(http, sim)
    assert_not_found(await ws_turn(fresh, body(user("more"), previous_response_id=anchor)), anchor)
    # The socket stays usable: the client resends the full history without the anchor.
    assert completed_id(await ws_turn(fresh, body(user("hi"), user("more"))))
    await fresh.close()


async def test_other_account_cannot_continue(sim, http):
    ws = await ws_connect(http, sim, number=1)
    state = handshake_headers(ws)["x-codex-turn-state"]
    anchor = completed_id(await ws_turn(ws, body(user("hi"))))
    other = await ws_connect(http, sim, number=2, headers={"x-codex-turn-state": state})
    assert_not_found(await ws_turn(other, body(user("more"), previous_response_id=anchor)), anchor)
    await ws.close()
    await other.close()


async def test_expired_state_cannot_continue(sim, http):
    ws = await ws_connect(http, sim)
    anchor = completed_id(await ws_turn(ws, body(user("hi"))))
    sim.backend.state.expire_all()
    assert_not_found(await ws_turn(ws, body(user("more"), previous_response_id=anchor)), anchor)
    await ws.close()


async def test_state_ttl_is_the_configured_one(sim):
    assert sim.backend.state.ttl_s == sim.backend.config.state_ttl_s > 0


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type": "response.cancel"}', "invalid_value"),
        ("{nope", "invalid_json"),
        ('{"type": "response.create", "input": []}', "missing_required_parameter"),
        ('{"type": "response.create", "model": "gpt-5.5", "store": true}', "invalid_value"),
    ],
)
async def test_bad_frames_get_error_frames_and_the_socket_lives(sim, http, frame, code):
    ws = await ws_connect(http, sim)
    await ws.send_str(frame)
    error = await ws.receive_json(timeout=10)
    assert error["type"] == "error" and error["status"] == 400 and error["error"]["code"] == code
    assert completed_id(await ws_turn(ws, body(user("still here"))))
    await ws.close()


async def test_binary_frame_is_refused_in_band(sim, http):
    ws = await ws_connect(http, sim)
    await ws.send_bytes(b"\x00\x01")
    error = await ws.receive_json(timeout=10)
    assert error["type"] == "error" and error["status"] == 400
    await ws.close()


async def test_ws_usage_limit_is_an_error_frame(sim, http):
    account = sim.backend.accounts[0]
    ws = await ws_connect(http, sim)
    account.secondary.used_tokens = account.secondary.limit_tokens
    events = await ws_turn(ws, body(user("hi")))
    assert events[0]["type"] == "error" and events[0]["status"] == 429
    assert events[0]["error"]["code"] == "usage_limit_reached"
    assert events[0]["error"]["resets_in_seconds"] > 300 * 60
    await ws.close()

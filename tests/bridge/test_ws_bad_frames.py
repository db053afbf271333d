"""Bad client frames on the Responses WebSocket: each is answered with one `error` event naming what is
wrong, as upstream answers one, nothing goes upstream, and the session goes on: the next turn works
(anchored on the response before) and the client's close gets a close frame back (1000, not 1006)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from codexlb.services import STORE
from tests.bridge.test_websocket import PREWARM, connect, terminal
from tests.proxy.conftest import start_proxy
from tests.simclient import body, user, ws_turn


def create(**fields) -> str:
    return orjson.dumps({"type": "response.create", "model": "gpt-5.5", "input": [user("hi")], **fields}).decode()


# A frame, and the (code, param) of the error event that answers it.
BAD_FRAMES = [
    ("not json", "invalid_json", None),
    ('{"type": "response.create", "model": "gpt-5.5", "input": [], "n": 1e400}', "invalid_json", None),
    ("[1]", "invalid_type", None),
    ('{"type": "nope"}', "invalid_value", "type"),
    ('{"type": 5}', "invalid_value", "type"),
    ('{"type": "response.create", "model": 5}', "invalid_type", "model"),
    ('{"type": "response.create", "input": []}', "missing_required_parameter", "model"),
    (create(input=5), "invalid_type", "input"),
    (create(input=[{"type": "reasoning", "encrypted_content": "x", "id": []}]), "invalid_type", "input[0].id"),
    (create(input=[{"type": "message", "role": "user", "content": [7]}]), "invalid_type", "input[0].content[0]"),
    (create(tools={}), "invalid_type", "tools"),
    (create(previous_response_id="\u0000"), "invalid_value", "previous_response_id"),
    (create(previous_response_id=""), "invalid_value", "previous_response_id"),
    (create(previous_response_id="resp_" + "a" * 300), "invalid_value", "previous_response_id"),
    (create(previous_response_id=[]), "invalid_type", "previous_response_id"),
    (create(text="DEEP").replace('"DEEP"', "[" * 300 + "]" * 300), "invalid_json", None),
    (b"binary", "invalid_value", None),
]


@pytest.fixture
async def proxy(aiohttp_server, settings, sim):
    return await start_proxy(aiohttp_server, settings, sim)


async def receive_event(ws: aiohttp.ClientWebSocketResponse) -> dict:
    message = await ws.receive(timeout=10)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return orjson.loads(message.data)


@pytest.mark.parametrize(("frame", "code", "param"), BAD_FRAMES)
async def test_a_bad_frame_is_one_error_event_and_the_session_goes_on(proxy, http, frame, code, param):
    async with await connect(http, proxy) as ws:
        prewarm = await ws_turn(ws, PREWARM)
        sent = len(proxy.sim.backend.records)
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        event = await receive_event(ws)
        assert event["type"] == "error" and event["status"] == 400
        assert (event["error"]["type"], event["error"]["code"], event["error"]["param"]) == (
            "invalid_request_error", code, param)
        assert len(proxy.sim.backend.records) == sent  # nothing went upstream
        anchor = terminal(prewarm)["response"]["id"]
        turn = await ws_turn(ws, body(user("next"), previous_response_id=anchor))
        assert terminal(turn)["type"] == "response.completed"
        assert await ws.close() is True
    assert ws.close_code == aiohttp.WSCloseCode.OK


async def test_a_refused_frame_is_counted_as_a_400(proxy, http):
    async with await connect(http, proxy) as ws:
        await ws.send_str(create(model=5))
        await receive_event(ws)
    store = proxy.app[STORE]
    await store.flush_usage()
    assert [(r[4], r[6], r[7]) for r in await store.usage_rows()] == [
        ("/backend-api/codex/responses", 400, "invalid_type")]

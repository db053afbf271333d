"""What the HTTP bridge reads of upstream's frames and what it passes on, against an upstream that sends frames
written as a test wants them: every frame reaches the client byte for byte, as its own SSE event, whether the
bridge read it whole or only its type; and what the frames it must read say (the response's id, rate limits,
the output the anchor covers, usage) is noted."""

from __future__ import annotations

import time

import orjson
import pytest
from aiohttp import WSMsgType, web

from codexlb.bridge.http import SESSIONS
from codexlb.upstream.websocket import frame_type
from tests.bridge.test_ledger import ledger
from tests.proxy.conftest import start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import body, user

ITEM = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": "hi", "annotations": []}]}
USAGE = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 7,
         "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 18}
DELTA = b'{"type":"response.output_text.delta","delta":"a"}'
TYPE_FIRST = [
    b'{"type":"response.created","response":{"id":"resp_script","status":"in_progress"}}',
    DELTA,
    b'{"type":"codex.rate_limits","rate_limits":{"primary":{"used_percent":42.0,"window_minutes":300,'
    b'"resets_in_seconds":600}}}',
    # A delta that names a terminal, quoted as JSON and bare, and one that starts a line like a terminal: deltas.
    b'{"type":"response.output_text.delta","delta":"{\\"type\\":\\"response.completed\\"} response.completed"}',
    b'{"type":"response.output_text.delta","delta":"\\n{\\"type\\":\\"response.completed\\"}"}',
    DELTA, DELTA,
    b'{"type":"response.output_item.done","item":' + orjson.dumps(ITEM) + b'}',
    DELTA,
    b'{"type":"response.completed","response":{"id":"resp_script","status":"completed","output":['
    + orjson.dumps(ITEM) + b'],"usage":' + orjson.dumps(USAGE) + b'}}',
]
# Frames not written type first, or with a line break in their JSON: read whole, passed on as written (or, with
# a line break, written again on one line).
ODD = [
    b'{ "type": "response.output_text.delta", "delta": "spaced" }',
    b'{"sequence_number":4,"type":"response.output_text.delta","delta":"type last"}',
    b'{"type":"response.output_\\u0074ext.delta","delta":"escaped type"}',
]
BROKEN = b'{"type":"response.output_text.delta",\n"delta":"broken"}'


def sse(frame: bytes) -> bytes:
    event = orjson.loads(frame)
    return b"event: " + event["type"].encode() + b"\ndata: " + (frame if b"\n" not in frame else orjson.dumps(event)) + (
        b"\n\n")


async def scripted_upstream(aiohttp_server, frames: list[bytes]) -> tuple[str, list[dict]]:
    """An upstream that answers every `response.create` with `frames`; the creates it got."""
    creates: list[dict] = []

    async def responses(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                creates.append(orjson.loads(message.data))
                for frame in frames:
                    await ws.send_frame(frame, WSMsgType.TEXT)
        return ws

    app = web.Application()
    app.router.add_get("/backend-api/codex/responses", responses)
    server = await aiohttp_server(app)
    return str(server.make_url("/backend-api")), creates


@pytest.mark.parametrize("frames", [TYPE_FIRST, TYPE_FIRST[:3] + ODD + TYPE_FIRST[3:], TYPE_FIRST[:3] + [BROKEN] + TYPE_FIRST[3:]],
                         ids=["type first", "odd ones too", "a line break"])
async def test_frames_reach_the_client_as_written_and_what_they_say_is_noted(aiohttp_server, settings, sim, http,
                                                                              frames):
    upstream, creates = await scripted_upstream(aiohttp_server, frames)
    proxy = await start_proxy(aiohttp_server, settings, sim, accounts=1, upstream_base_url=upstream)
    headers = {"Content-Type": "application/json", "session_id": "conv-frames"}
    history = [user("one")]
    async with http.post(f"{proxy.codex_base_url}/responses", data=orjson.dumps(body(*history)),
                         headers=headers) as resp:
        assert resp.status == 200
        assert await resp.read() == b"".join(map(sse, frames))

    account = proxy.roster.all()[0]
    assert account.primary is not None and account.primary.used_percent == 42.0
    assert proxy.pool.sticky.get("resp:resp_script", time.time()) == account.id
    [row] = await ledger(http, proxy, "conv-frames")
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (11, 3, 7, 2)
    # The output went into the anchor: the next turn sends only its new item, on the response.
    history += [ITEM, user("two")]
    resp, events = await post(http, proxy, body(*history), {"session_id": "conv-frames"})
    assert resp.status == 200 and events[-1]["type"] == "response.completed"
    assert creates[1]["previous_response_id"] == "resp_script" and creates[1]["input"] == [user("two")]
    assert len(proxy.app[SESSIONS]) == 1


def test_the_type_is_read_off_the_start_only_where_upstream_writes_it_so():
    assert frame_type(TYPE_FIRST[0]) == b"response.created"
    assert frame_type(TYPE_FIRST[3]) == b"response.output_text.delta"
    for frame in ODD:
        assert frame_type(frame) is None
    assert frame_type(b'{"type":"unterminated') is None
    assert frame_type(b'["type"]') is None

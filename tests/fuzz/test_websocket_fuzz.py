"""The WebSocket route (`GET .../responses` upgraded), fed generated handshakes and frame sequences:
near-valid `response.create` frames with fields mutated, text that is not JSON, JSON that is not an object,
other message types, binary frames. Every frame gets its answer (events up to a terminal one, an `error`
event for a bad frame); the session then goes on, or the server ends it with a close frame and a proper
code; the client's own close is answered with one, also when it comes before the last frame's answer.
Never an abnormal end (1006)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from tests.fuzz import strategies as s
from tests.fuzz.harness import TERMINAL, Stack, assert_openai_error, fuzz_settings

PATHS = ("/backend-api/codex/responses", "/v1/responses")
# A healthy sim answers within milliseconds; a frame left unanswered this long never will be.
ANSWER_TIMEOUT_S = 5.0
# Codes a server may end a session with (RFC 6455 7.4); 1005 and 1006 are never sent, they mean no close frame.
PROPER_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}) | frozenset(
    range(3000, 5000))

creates = s.responses_bodies(type=st.just("response.create") | s.json_values).map(lambda body: {
    k: v for k, v in body.items() if k != "stream"})
frames = s.weighted(
    (4, st.builds(s.dump_json, creates, st.booleans())),
    (1, st.builds(s.dump_json, s.json_values, st.booleans())),
    (1, st.builds(s.dump_json, st.fixed_dictionaries({"type": s.json_values}, optional={"response": s.json_values}),
                  st.booleans())),
    (1, s.texts.map(str.encode)),
    (1, st.binary(max_size=32).map(lambda data: (data,))),  # a tuple: sent as a binary frame
)


async def _send(stack: Stack, ws: aiohttp.ClientWebSocketResponse, frame: bytes | tuple[bytes]) -> None:
    if isinstance(frame, tuple):
        await ws.send_bytes(frame[0])
    else:
        await ws.send_str(stack.anchored(frame).decode())


async def _answer(stack: Stack, ws: aiohttp.ClientWebSocketResponse,
                  frame: Any) -> tuple[list[dict[str, Any]], int | None]:
    """Send one frame; the events that answer it (up to a terminal one), and the server's close code if it
    ended the session instead."""
    await _send(stack, ws, frame)
    events: list[dict[str, Any]] = []
    while True:
        message = await ws.receive(timeout=ANSWER_TIMEOUT_S)
        if message.type is WSMsgType.CLOSE:
            return events, message.data
        assert message.type is WSMsgType.TEXT, f"after {events}: {message.type} {message.data!r}, not a close frame"
        stack.seen(message.data.encode())
        event = orjson.loads(message.data)
        events.append(event)
        if event.get("type") in TERMINAL:
            return events, None


async def _session(stack: Stack, path: str, headers: dict[str, str], sent: list[Any], wait_last: bool) -> None:
    """`wait_last`: read the last frame's answer before closing (else close right after sending it)."""
    try:
        ws = await stack.http.ws_connect(URL(stack.url + path), headers=headers, autoclose=False, max_msg_size=0)
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status < 500, f"handshake answered {exc.status}"
        return
    try:
        for i, frame in enumerate(sent):
            if i == len(sent) - 1 and not wait_last:
                await _send(stack, ws, frame)
                break
            try:
                events, closed = await _answer(stack, ws, frame)
            except TimeoutError:
                raise AssertionError(f"no answer to {frame!r} within {ANSWER_TIMEOUT_S:g} s") from None
            for event in events:
                if event.get("type") == "error":
                    assert_openai_error(event, repr(event))
            if closed is not None:
                assert closed in PROPER_CLOSE, f"the server ended the session with {closed}"
                await ws.close()
                return
        await ws.close()
        assert ws.close_code in PROPER_CLOSE, f"the client's close came back as {ws.close_code}"
    finally:
        if not ws.closed:
            await ws.close()


def test_websocket_sessions(stack):
    since = stack.log.mark()

    @fuzz_settings(300)
    @given(path=st.sampled_from(PATHS), headers=s.client_headers(stack.key),
           sent=st.lists(frames, min_size=1, max_size=4), wait_last=st.booleans())
    def one(path, headers, sent, wait_last):
        stack.run(_session(stack, path, headers, sent, wait_last))

    one()
    stack.assert_healthy(since)

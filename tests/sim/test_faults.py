"""Every fault action of the simulated backend, over HTTP/SSE and WebSocket, its targeting, and the control API.

All traffic goes over real loopback sockets (the `sim` and `http` fixtures). Faults are added through
`POST /__sim/faults` unless a test says it uses the in-process `FaultBook`.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import orjson
import pytest

from codexlb.sim.faults import ACTIONS, Fault
from tests.simclient import TERMINAL, auth_headers, body, post_responses, user, ws_connect, ws_turn

# What the sim streams for `body(user("hi"))`: 16 events, the last one response.completed.
NORMAL_TYPES = (
    ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    + ["response.output_text.delta"] * 8
    + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
       "response.completed"]
)
# How long a test waits to be sure that nothing more arrives (a bound on a negative).
QUIET_S = 0.5


# --- helpers ------------------------------------------------------------------------------------


async def control(http: aiohttp.ClientSession, sim, method: str, path: str, json: Any = None) -> tuple[int, Any]:
    """One `/__sim` control call; returns (status, JSON body)."""
    data = None if json is None else orjson.dumps(json)
    async with http.request(method, f"{sim.url}/__sim{path}", data=data,
                            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def add_fault(http: aiohttp.ClientSession, sim, **spec: Any) -> dict[str, Any]:
    status, created = await control(http, sim, "POST", "/faults", spec)
    assert status == 201, created
    return created


async def fault_view(http: aiohttp.ClientSession, sim, fault_id: str) -> dict[str, Any]:
    status, listing = await control(http, sim, "GET", "/faults")
    assert status == 200
    return next(f for f in listing["faults"] if f["id"] == fault_id)


async def requests_log(http: aiohttp.ClientSession, sim) -> list[dict[str, Any]]:
    status, listing = await control(http, sim, "GET", "/requests")
    assert status == 200
    return listing["requests"]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def openai_error(status: int, code: str | None, message: str, param: str | None = None) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
            429: "rate_limit_error"}.get(status, "server_error")
    return {"message": message, "type": kind, "code": code, "param": param}


def parse_frame(raw: bytes) -> dict[str, Any]:
    event_line, data_line = raw.decode().strip().split("\n")
    event = orjson.loads(data_line.removeprefix("data: "))
    assert event_line == f"event: {event['type']}"
    return event


async def sse_stream(http: aiohttp.ClientSession, sim, payload: dict[str, Any], *, number: int = 1,
                     headers: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]], Exception | None]:
    """POST /responses and read SSE events as they come until the stream ends or breaks.

    Returns (status, events, the exception that broke the stream or None for a clean end)."""
    events: list[dict[str, Any]] = []
    async with http.post(f"{sim.codex_base_url}/responses", data=orjson.dumps(payload),
                         headers={**auth_headers(sim, number), "Content-Type": "application/json",
                                  **(headers or {})}) as resp:
        assert resp.content_type == "text/event-stream"
        try:
            while raw := await resp.content.readuntil(b"\n\n"):
                events.append(parse_frame(raw))
        except aiohttp.ClientPayloadError as exc:
            return resp.status, events, exc
        return resp.status, events, None


async def ws_send(ws: aiohttp.ClientWebSocketResponse, payload: dict[str, Any]) -> None:
    frame = {"type": "response.create", **{k: v for k, v in payload.items() if k != "stream"}}
    await ws.send_str(orjson.dumps(frame).decode())


async def ws_events(ws: aiohttp.ClientWebSocketResponse, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Exactly the next `n` events."""
    events = []
    for _ in range(n):
        message = await ws.receive(timeout=timeout)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        events.append(orjson.loads(message.data))
    return events


async def ws_read(ws: aiohttp.ClientWebSocketResponse, payload: dict[str, Any],
                  timeout: float = 10.0) -> tuple[list[dict[str, Any]], aiohttp.WSMessage | None]:
    """Send one response.create and read up to its terminal event, or up to the first non-text message
    (returned second; None when the response ended with a terminal)."""
    await ws_send(ws, payload)
    events: list[dict[str, Any]] = []
    while True:
        message = await ws.receive(timeout=timeout)
        if message.type is not aiohttp.WSMsgType.TEXT:
            return events, message
        events.append(orjson.loads(message.data))
        if events[-1]["type"] in TERMINAL:
            return events, None


async def ws_completes(http: aiohttp.ClientSession, sim, number: int = 1) -> None:
    """A fresh socket on account `number` serves a full response: the sim is still healthy."""
    ws = await ws_connect(http, sim, number=number)
    try:
        assert types(await ws_turn(ws, body(user("hi")))) == NORMAL_TYPES
    finally:
        await ws.close()


async def http_completes(http: aiohttp.ClientSession, sim, number: int = 1) -> None:
    resp, events = await post_responses(http, sim, body(user("hi")), number=number)
    assert resp.status == 200 and types(events) == NORMAL_TYPES


def anchored(previous: str) -> dict[str, Any]:
    """A follow-up on `previous`, as the Codex CLI sends over WebSocket."""
    return body(user("again"), previous_response_id=previous)


def prewarm() -> dict[str, Any]:
    return body({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "base"}]},
                generate=False)


def metadata(**fields: Any) -> dict[str, Any]:
    """A body's client_metadata carrying `x-codex-turn-metadata`, as the Codex CLI sends it."""
    return {"client_metadata": {"x-codex-turn-metadata": orjson.dumps(fields).decode()}}


def test_the_sim_has_exactly_the_actions_this_file_covers():
    # An action added to the sim needs its tests here.
    assert ACTIONS == ("status", "failed", "close", "end_without_terminal", "stall", "close_after_response",
                       "drop_state", "delay")


# --- status -------------------------------------------------------------------------------------

STATUS_DEFAULTS = [
    (429, "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    (401, "token_invalidated", "Your authentication token has been invalidated."),
    (500, "server_error", "An error occurred while processing your request."),
    (502, "bad_gateway", "Bad gateway."),
    (503, "server_is_overloaded", "Our servers are currently overloaded. Please try again later."),
]


@pytest.mark.parametrize(("status", "code", "message"), STATUS_DEFAULTS)
async def test_status_fault_over_http_answers_that_status_with_an_openai_error(sim, http, status, code, message):
    await add_fault(http, sim, action="status", status=status)
    resp, error = await post_responses(http, sim, body(user("hi")))
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert error == {"error": openai_error(status, code, message)}
    assert "Retry-After" not in resp.headers
    await http_completes(http, sim)  # times=1: the next request is served


async def test_status_fault_over_http_sends_retry_after_when_given(sim, http):
    await add_fault(http, sim, action="status", status=503, retry_after=1)
    resp, error = await post_responses(http, sim, body(user("hi")))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert error["error"]["code"] == "server_is_overloaded"

    await add_fault(http, sim, action="status", status=429, retry_after=2.5)
    resp, error = await post_responses(http, sim, body(user("hi")))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "2.5"
    assert error["error"]["type"] == "rate_limit_error"


async def test_status_fault_uses_the_given_code_and_message(sim, http):
    await add_fault(http, sim, action="status", status=400, code="context_length_exceeded", message="Too long.")
    resp, error = await post_responses(http, sim, body(user("hi")))
    assert resp.status == 400
    assert error == {"error": openai_error(400, "context_length_exceeded", "Too long.")}


@pytest.mark.parametrize(("status", "code", "message"), STATUS_DEFAULTS)
async def test_status_fault_over_ws_sends_an_error_frame_and_the_socket_stays_usable(sim, http, status, code,
                                                                                      message):
    await add_fault(http, sim, action="status", status=status, transport="ws")
    ws = await ws_connect(http, sim)
    try:
        events = await ws_turn(ws, body(user("hi")))
        assert events == [{"type": "error", "status": status, "error": openai_error(status, code, message)}]
        assert not ws.closed
        assert types(await ws_turn(ws, body(user("again")))) == NORMAL_TYPES
    finally:
        await ws.close()


async def test_status_fault_over_ws_carries_retry_after_in_the_frame_headers(sim, http):
    await add_fault(http, sim, action="status", status=429, retry_after=2)
    ws = await ws_connect(http, sim)
    try:
        events = await ws_turn(ws, body(user("hi")))
        assert events == [{
            "type": "error", "status": 429,
            "error": openai_error(429, "rate_limit_exceeded", "Rate limit reached. Please try again later."),
            "headers": {"retry-after": "2"},
        }]
        assert types(await ws_turn(ws, body(user("again")))) == NORMAL_TYPES
    finally:
        await ws.close()


# --- failed -------------------------------------------------------------------------------------


async def test_failed_fault_over_http_ends_the_stream_with_response_failed_after_k_events(sim, http):
    fault = await add_fault(http, sim, action="failed", after_events=3, code="server_is_overloaded",
                            message="Overloaded, try later.")
    status, events, broken = await sse_stream(http, sim, body(user("hi")))
    assert status == 200 and broken is None
    assert types(events) == NORMAL_TYPES[:3] + ["response.failed"]
    failed = events[-1]
    assert failed["sequence_number"] == 3
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["id"] == events[0]["response"]["id"]
    assert failed["response"]["error"] == {"code": "server_is_overloaded", "message": "Overloaded, try later."}
    record = (await requests_log(http, sim))[-1]
    assert (record["outcome"], record["error_code"], record["faults"]) == ("failed", "server_is_overloaded",
                                                                           [fault["id"]])


async def test_failed_fault_defaults_to_server_error(sim, http):
    await add_fault(http, sim, action="failed", after_events=0)
    status, events, broken = await sse_stream(http, sim, body(user("hi")))
    assert broken is None
    assert types(events) == ["response.failed"]
    assert events[0]["response"]["error"] == {"code": "server_error",
                                              "message": "An error occurred while processing your request."}


async def test_failed_fault_past_the_end_replaces_only_the_terminal_event(sim, http):
    await add_fault(http, sim, action="failed", after_events=1000)
    status, events, broken = await sse_stream(http, sim, body(user("hi")))
    assert broken is None
    assert types(events) == NORMAL_TYPES[:-1] + ["response.failed"]


async def test_failed_fault_over_ws_ends_the_response_with_response_failed_and_the_socket_stays_usable(sim, http):
    await add_fault(http, sim, action="failed", after_events=2, code="server_is_overloaded", transport="ws")
    ws = await ws_connect(http, sim)
    try:
        events, ended = await ws_read(ws, body(user("hi")))
        assert ended is None
        assert types(events) == NORMAL_TYPES[:2] + ["response.failed"]
        assert events[-1]["response"]["error"]["code"] == "server_is_overloaded"
        assert types(await ws_turn(ws, body(user("again")))) == NORMAL_TYPES
    finally:
        await ws.close()


# --- close --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 3])
async def test_close_fault_over_http_drops_the_connection_after_k_events(sim, http, k):
    await add_fault(http, sim, action="close", after_events=k)
    status, events, broken = await sse_stream(http, sim, body(user("hi")))
    assert status == 200  # the headers went out before the drop
    assert types(events) == NORMAL_TYPES[:k]
    assert isinstance(broken, aiohttp.ClientPayloadError)
    assert "Not enough data to satisfy transfer length header" in str(broken)
    assert (await requests_log(http, sim))[-1]["outcome"] == "close"
    await http_completes(http, sim)


@pytest.mark.parametrize("k", [0, 2])
async def test_close_fault_over_ws_with_close_code_sends_that_close_frame_after_k_events(sim, http, k):
    await add_fault(http, sim, action="close", after_events=k, close_code=1011)
    ws = await ws_connect(http, sim)
    try:
        events, ended = await ws_read(ws, body(user("hi")))
        assert types(events) == NORMAL_TYPES[:k]
        assert ended is not None and ended.type is aiohttp.WSMsgType.CLOSE and ended.data == 1011
        assert ws.close_code == 1011
        assert ws.exception() is None
    finally:
        await ws.close()
    await ws_completes(http, sim)


@pytest.mark.parametrize("k", [0, 2])
async def test_close_fault_over_ws_without_close_code_drops_tcp_after_k_events(sim, http, k):
    await add_fault(http, sim, action="close", after_events=k)
    ws = await ws_connect(http, sim)
    try:
        events, ended = await ws_read(ws, body(user("hi")))
        assert types(events) == NORMAL_TYPES[:k]
        # No close frame: the client sees the socket end and reports 1006 (abnormal closure).
        assert ended is not None and ended.type is aiohttp.WSMsgType.CLOSED
        assert ws.close_code == 1006
    finally:
        await ws.close()
    assert (await requests_log(http, sim))[-1]["outcome"] == "close"
    await ws_completes(http, sim)


# --- end_without_terminal -----------------------------------------------------------------------


async def test_end_without_terminal_fault_over_http_ends_the_stream_cleanly_after_k_events(sim, http):
    await add_fault(http, sim, action="end_without_terminal", after_events=4)
    status, events, broken = await sse_stream(http, sim, body(user("hi")))
    assert status == 200
    assert broken is None  # a clean end of the chunked body, not a drop
    assert types(events) == NORMAL_TYPES[:4]
    assert (await requests_log(http, sim))[-1]["outcome"] == "end_without_terminal"


async def test_end_without_terminal_fault_over_ws_sends_no_terminal_and_the_socket_stays_usable(sim, http):
    await add_fault(http, sim, action="end_without_terminal", after_events=2)
    ws = await ws_connect(http, sim)
    try:
        await ws_send(ws, body(user("hi")))
        assert types(await ws_events(ws, 2)) == NORMAL_TYPES[:2]
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=QUIET_S)
        # (aiohttp now reports close_code 1006 for this client, but the socket itself is still open.)
        assert types(await ws_turn(ws, body(user("again")))) == NORMAL_TYPES
    finally:
        await ws.close()


# --- stall --------------------------------------------------------------------------------------


async def test_stall_fault_over_http_sends_k_events_then_nothing_and_the_sim_keeps_serving(sim, http):
    await add_fault(http, sim, action="stall", after_events=3)
    async with http.post(f"{sim.codex_base_url}/responses", data=orjson.dumps(body(user("hi"))),
                         headers={**auth_headers(sim), "Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        events = [parse_frame(await resp.content.readuntil(b"\n\n")) for _ in range(3)]
        assert types(events) == NORMAL_TYPES[:3]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(resp.content.readuntil(b"\n\n"), QUIET_S)
        assert not resp.content.at_eof()
    # Leaving the block closed the unfinished connection.
    assert (await requests_log(http, sim))[-1]["outcome"] == "stall"
    await http_completes(http, sim)


async def test_stall_fault_over_ws_sends_k_events_then_nothing_and_the_sim_keeps_serving(sim, http):
    sim.backend.faults.add(Fault("stall", after_events=2))  # in-process, like a test that drives the sim itself
    ws = await ws_connect(http, sim)
    try:
        await ws_send(ws, body(user("hi")))
        assert types(await ws_events(ws, 2)) == NORMAL_TYPES[:2]
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=QUIET_S)
    finally:
        await ws.close()
    await ws_completes(http, sim)


# --- close_after_response -----------------------------------------------------------------------


@pytest.mark.parametrize(("close_code", "ending"), [(4000, aiohttp.WSMsgType.CLOSE), (None, aiohttp.WSMsgType.CLOSED)])
async def test_close_after_response_fault_over_ws_completes_then_closes_the_socket(sim, http, close_code, ending):
    await add_fault(http, sim, action="close_after_response", close_code=close_code)
    ws = await ws_connect(http, sim)
    try:
        assert types(await ws_turn(ws, body(user("hi")))) == NORMAL_TYPES
        message = await ws.receive(timeout=10)
        assert message.type is ending
        assert ws.close_code == (close_code or 1006)
    finally:
        await ws.close()
    assert (await requests_log(http, sim))[-1]["outcome"] == "completed"
    await ws_completes(http, sim)


async def test_close_after_response_fault_over_http_ends_the_body_then_the_connection(sim, http):
    """Read at the socket level: the whole chunked body, its last chunk, then EOF from the server."""
    await add_fault(http, sim, action="close_after_response")
    payload = orjson.dumps(body(user("hi")))
    host, port = sim.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(sim).items())
        writer.write(f"POST /backend-api/codex/responses HTTP/1.1\r\nHost: {host}\r\n{head}"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        raw = await asyncio.wait_for(reader.read(-1), 10)  # until the server drops the connection
    finally:
        writer.close()
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding: chunked" in head
    assert chunked.endswith(b"\r\n0\r\n\r\n")  # the terminating chunk: a complete response
    assert chunked.count(b"event: ") == len(NORMAL_TYPES)
    assert b"event: response.completed\ndata: " in chunked
    assert (await requests_log(http, sim))[-1]["outcome"] == "completed"
    await http_completes(http, sim)


# --- drop_state ---------------------------------------------------------------------------------


async def test_drop_state_fault_makes_an_anchored_ws_request_previous_response_not_found(sim, http):
    ws = await ws_connect(http, sim)
    try:
        first = await ws_turn(ws, body(user("hi")))
        second = await ws_turn(ws, anchored(first[-1]["response"]["id"]))
        assert second[-1]["type"] == "response.completed"  # anchoring works on this socket
        await add_fault(http, sim, action="drop_state", anchored=True)
        previous = second[-1]["response"]["id"]
        events = await ws_turn(ws, anchored(previous))
        assert events == [{"type": "error", "status": 400, "error": openai_error(
            400, "previous_response_not_found", f"Previous response with id '{previous}' not found.",
            "previous_response_id")}]
        # The state really is gone: the fault fired once, the anchor stays broken.
        assert (await ws_turn(ws, anchored(previous)))[-1]["error"]["code"] == "previous_response_not_found"
        assert types(await ws_turn(ws, body(user("hi")))) == NORMAL_TYPES
    finally:
        await ws.close()
    records = await requests_log(http, sim)
    assert [(r["outcome"], r["status"], r["error_code"]) for r in records[-3:]] == [
        ("error", 400, "previous_response_not_found"), ("error", 400, "previous_response_not_found"),
        ("completed", 200, None)]


async def test_drop_state_fault_over_http_answers_400_previous_response_not_found(sim, http):
    resp, events = await post_responses(http, sim, body(user("hi")))
    turn_state = {"x-codex-turn-state": resp.headers["x-codex-turn-state"]}
    previous = events[-1]["response"]["id"]
    await add_fault(http, sim, action="drop_state")
    resp, error = await post_responses(http, sim, anchored(previous), headers=turn_state)
    assert resp.status == 400
    assert error == {"error": openai_error(400, "previous_response_not_found",
                                           f"Previous response with id '{previous}' not found.",
                                           "previous_response_id")}


async def test_drop_state_fault_only_forgets_the_requesting_accounts_state(sim, http):
    ws1, ws2 = await ws_connect(http, sim, number=1), await ws_connect(http, sim, number=2)
    try:
        first1 = (await ws_turn(ws1, body(user("hi"))))[-1]["response"]["id"]
        first2 = (await ws_turn(ws2, body(user("hi"))))[-1]["response"]["id"]
        await add_fault(http, sim, action="drop_state", account="1")
        assert (await ws_turn(ws1, anchored(first1)))[-1]["error"]["code"] == "previous_response_not_found"
        assert (await ws_turn(ws2, anchored(first2)))[-1]["type"] == "response.completed"
    finally:
        await ws1.close()
        await ws2.close()


async def test_control_state_drop_forgets_a_response_so_its_follow_up_is_not_found(sim, http):
    ws = await ws_connect(http, sim)
    try:
        kept = (await ws_turn(ws, body(user("hi"))))[-1]["response"]["id"]
        doomed = (await ws_turn(ws, body(user("hi"))))[-1]["response"]["id"]
        assert await control(http, sim, "POST", "/state/drop", {"response_id": doomed}) == (200, {"dropped": 1})
        assert (await ws_turn(ws, anchored(doomed)))[-1]["error"]["code"] == "previous_response_not_found"
        assert (await ws_turn(ws, anchored(kept)))[-1]["type"] == "response.completed"
        # By account number: everything of account 1 (the two responses left) goes.
        assert await control(http, sim, "POST", "/state/drop", {"account": 1}) == (200, {"dropped": 2})
        assert (await ws_turn(ws, anchored(kept)))[-1]["error"]["code"] == "previous_response_not_found"
    finally:
        await ws.close()
    status, error = await control(http, sim, "POST", "/state/drop", {"account": "9"})
    assert status == 400 and error["error"]["code"] == "invalid_value"


# --- delay --------------------------------------------------------------------------------------


async def test_delay_fault_first_byte_ms_delays_the_first_http_event(sim, http):
    await add_fault(http, sim, action="delay", first_byte_ms=150)
    started = time.monotonic()
    async with http.post(f"{sim.codex_base_url}/responses", data=orjson.dumps(body(user("hi"))),
                         headers={**auth_headers(sim), "Content-Type": "application/json"}) as resp:
        first = parse_frame(await resp.content.readuntil(b"\n\n"))
        waited = time.monotonic() - started
        rest = await resp.read()
    assert first["type"] == "response.created"
    assert waited >= 0.15
    assert rest.count(b"event: ") == len(NORMAL_TYPES) - 1


async def test_delay_fault_between_events_ms_spaces_the_ws_events(sim, http):
    await add_fault(http, sim, action="delay", between_events_ms=20, transport="ws")
    ws = await ws_connect(http, sim)
    try:
        started = time.monotonic()
        events = await ws_turn(ws, body(user("hi")))
        elapsed = time.monotonic() - started
        assert types(events) == NORMAL_TYPES
        assert elapsed >= 0.020 * (len(NORMAL_TYPES) - 1)
    finally:
        await ws.close()


async def test_delay_fault_first_byte_ms_delays_the_first_ws_event(sim, http):
    await add_fault(http, sim, action="delay", first_byte_ms=150)
    ws = await ws_connect(http, sim)
    try:
        started = time.monotonic()
        await ws_send(ws, body(user("hi")))
        first = (await ws_events(ws, 1))[0]
        assert time.monotonic() - started >= 0.15
        assert first["type"] == "response.created"
    finally:
        await ws.close()


async def test_delay_fault_combines_with_a_disruption_on_the_same_request(sim, http):
    delay = await add_fault(http, sim, action="delay", between_events_ms=20)
    failed = await add_fault(http, sim, action="failed", after_events=5)
    started = time.monotonic()
    status, events, broken = await sse_stream(http, sim, body(user("hi")))
    assert time.monotonic() - started >= 0.020 * 4  # at least the four gaps between the first five events
    assert types(events) == NORMAL_TYPES[:5] + ["response.failed"]
    assert (await requests_log(http, sim))[-1]["faults"] == [delay["id"], failed["id"]]


# --- targeting ----------------------------------------------------------------------------------


async def test_account_targeting_by_id_fires_only_for_that_account(sim, http):
    target = sim.backend.accounts[1].account_id
    fault = await add_fault(http, sim, action="status", status=503, account=target, times=None)
    await http_completes(http, sim, number=1)
    await http_completes(http, sim, number=3)
    resp, _ = await post_responses(http, sim, body(user("hi")), number=2)
    assert resp.status == 503
    view = await fault_view(http, sim, fault["id"])
    assert (view["account"], view["matched"], view["fired"]) == (target, 1, 1)


@pytest.mark.parametrize("number", ["3", 3], ids=["string", "json-number"])
async def test_account_targeting_by_number_resolves_to_the_account_id(sim, http, number):
    fault = await add_fault(http, sim, action="status", status=503, account=number)
    assert fault["account"] == sim.backend.accounts[2].account_id
    await http_completes(http, sim, number=1)
    resp, _ = await post_responses(http, sim, body(user("hi")), number=3)
    assert resp.status == 503


async def test_transport_targeting_fires_only_on_that_transport(sim, http):
    await add_fault(http, sim, action="status", status=502, transport="ws", times=None)
    await add_fault(http, sim, action="status", status=500, transport="http", nth=2)
    await http_completes(http, sim)  # the http fault waits for its 2nd match; the ws fault never matches
    ws = await ws_connect(http, sim)
    try:
        assert (await ws_turn(ws, body(user("hi"))))[0]["status"] == 502
    finally:
        await ws.close()
    resp, _ = await post_responses(http, sim, body(user("hi")))
    assert resp.status == 500


@pytest.mark.parametrize("anchored_only", [True, False])
async def test_anchored_targeting_tells_follow_ups_from_fresh_requests(sim, http, anchored_only):
    fault = await add_fault(http, sim, action="status", status=503, anchored=anchored_only, times=None)
    ws = await ws_connect(http, sim)
    try:
        fresh = await ws_turn(ws, body(user("hi")))
        if anchored_only:
            assert fresh[-1]["type"] == "response.completed"
            follow_up = await ws_turn(ws, anchored(fresh[-1]["response"]["id"]))
            assert follow_up[-1]["type"] == "error" and follow_up[-1]["status"] == 503
        else:
            assert fresh == [{"type": "error", "status": 503, "error": openai_error(
                503, "server_is_overloaded", "Our servers are currently overloaded. Please try again later.")}]
            # An anchor (even to an unknown response) is not a fresh request: the fault stays out of it.
            follow_up = await ws_turn(ws, anchored("resp_unknown"))
            assert follow_up[-1]["error"]["code"] == "previous_response_not_found"
    finally:
        await ws.close()
    view = await fault_view(http, sim, fault["id"])
    assert (view["matched"], view["fired"]) == (1, 1)


async def test_kind_prewarm_targets_generate_false_requests(sim, http):
    fault = await add_fault(http, sim, action="failed", kind="prewarm", times=None)
    ws = await ws_connect(http, sim)
    try:
        assert types(await ws_turn(ws, body(user("hi")))) == NORMAL_TYPES
        assert types(await ws_turn(ws, prewarm())) == ["response.failed"]
        await control(http, sim, "DELETE", f"/faults/{fault['id']}")
        # Unfaulted, a prewarm is created, in_progress, completed with no output.
        done = await ws_turn(ws, prewarm())
        assert types(done) == ["response.created", "response.in_progress", "response.completed"]
        assert done[-1]["response"]["output"] == []
    finally:
        await ws.close()
    assert [r["kind"] for r in await requests_log(http, sim)] == ["turn", "prewarm", "prewarm"]


async def test_kind_targeting_reads_request_kind_from_the_turn_metadata(sim, http):
    await add_fault(http, sim, action="status", status=500, kind="compaction")
    await http_completes(http, sim)
    resp, _ = await post_responses(http, sim, body(user("hi"), **metadata(request_kind="compaction")))
    assert resp.status == 500


async def test_turn_id_targeting_fires_only_for_that_turn(sim, http):
    await add_fault(http, sim, action="status", status=500, turn_id="turn-2", times=None)
    resp, _ = await post_responses(http, sim, body(user("hi"), **metadata(turn_id="turn-1")))
    assert resp.status == 200
    resp, _ = await post_responses(http, sim, body(user("hi"), **metadata(turn_id="turn-2")))
    assert resp.status == 500


async def test_nth_skips_the_first_matches(sim, http):
    fault = await add_fault(http, sim, action="status", status=503, nth=3)
    statuses = [(await post_responses(http, sim, body(user("hi"))))[0].status for _ in range(4)]
    assert statuses == [200, 200, 503, 200]
    view = await fault_view(http, sim, fault["id"])
    assert (view["matched"], view["fired"]) == (4, 1)


@pytest.mark.parametrize(("times", "expected"), [
    (1, [503, 200, 200, 200, 200]),
    (2, [503, 503, 200, 200, 200]),
    (0, [200, 200, 200, 200, 200]),
    (None, [503, 503, 503, 503, 503]),
])
async def test_times_limits_how_often_a_fault_fires(sim, http, times, expected):
    fault = await add_fault(http, sim, action="status", status=503, times=times)
    statuses = [(await post_responses(http, sim, body(user("hi"))))[0].status for _ in range(5)]
    assert statuses == expected
    view = await fault_view(http, sim, fault["id"])
    assert (view["times"], view["matched"], view["fired"]) == (times, 5, expected.count(503))


async def test_share_fires_on_the_seeded_share_of_matches(sim, http):
    fault = await add_fault(http, sim, action="status", status=503, share=0.5, times=None)
    statuses = [(await post_responses(http, sim, body(user("hi"))))[0].status for _ in range(40)]
    fired = statuses.count(503)
    assert 0 < fired < 40
    assert statuses.count(200) == 40 - fired
    view = await fault_view(http, sim, fault["id"])
    assert (view["matched"], view["fired"]) == (40, fired)
    # The sim's RNG is seeded (SimConfig.seed = 0): the same draws, the same requests.
    rng = random.Random(sim.backend.config.seed)
    assert statuses == [503 if rng.random() < 0.5 else 200 for _ in range(40)]


async def test_one_disruption_per_request_leaves_a_second_fault_for_the_next_request(sim, http):
    first = await add_fault(http, sim, action="status", status=503)
    second = await add_fault(http, sim, action="status", status=429)
    statuses = [(await post_responses(http, sim, body(user("hi"))))[0].status for _ in range(3)]
    assert statuses == [503, 429, 200]
    assert [(f["matched"], f["fired"]) for f in [await fault_view(http, sim, first["id"]),
                                                 await fault_view(http, sim, second["id"])]] == [(3, 1), (3, 1)]


async def test_a_fault_added_in_process_fires_like_one_added_over_http(sim, http):
    fault = sim.backend.faults.add(Fault("status", status=502, transport="ws"))
    assert fault.id == "f1"
    ws = await ws_connect(http, sim)
    try:
        assert [e["status"] for e in await ws_turn(ws, body(user("hi")))] == [502]
    finally:
        await ws.close()
    view = await fault_view(http, sim, "f1")
    assert (view["action"], view["status"], view["matched"], view["fired"]) == ("status", 502, 1, 1)
    assert (fault.matched, fault.fired) == (1, 1)


# --- control API --------------------------------------------------------------------------------


async def test_control_post_fault_returns_201_with_the_whole_fault_and_its_id(sim, http):
    status, created = await control(http, sim, "POST", "/faults", {"action": "failed", "code": "server_is_overloaded"})
    assert status == 201
    assert created == {
        "action": "failed", "account": None, "transport": None, "anchored": None, "kind": None, "turn_id": None,
        "nth": 1, "times": 1, "share": 1.0, "status": 500, "code": "server_is_overloaded", "message": None,
        "retry_after": None, "after_events": 0, "close_code": None, "first_byte_ms": 0.0, "between_events_ms": 0.0, "end_ms": 0.0,
        "id": "f1", "matched": 0, "fired": 0,
    }
    assert (await add_fault(http, sim, action="delay"))["id"] == "f2"


async def test_control_get_faults_lists_them_with_matched_and_fired_counters(sim, http):
    await add_fault(http, sim, action="status", status=503, transport="ws")
    await add_fault(http, sim, action="delay", first_byte_ms=1, times=None)
    await http_completes(http, sim)
    await http_completes(http, sim)
    status, listing = await control(http, sim, "GET", "/faults")
    assert status == 200
    assert [(f["id"], f["action"], f["matched"], f["fired"]) for f in listing["faults"]] == [
        ("f1", "status", 0, 0), ("f2", "delay", 2, 2)]


async def test_control_delete_fault_by_id_removes_only_that_fault(sim, http):
    doomed = await add_fault(http, sim, action="status", status=503)
    kept = await add_fault(http, sim, action="delay")
    assert await control(http, sim, "DELETE", f"/faults/{doomed['id']}") == (200, {"removed": doomed["id"]})
    assert [f["id"] for f in (await control(http, sim, "GET", "/faults"))[1]["faults"]] == [kept["id"]]
    await http_completes(http, sim)  # the removed 503 no longer fires
    status, error = await control(http, sim, "DELETE", f"/faults/{doomed['id']}")
    assert status == 404
    assert error == {"error": openai_error(404, "not_found", f"No fault {doomed['id']!r}.")}


async def test_control_delete_faults_clears_them_all(sim, http):
    await add_fault(http, sim, action="status", status=503, times=None)
    await add_fault(http, sim, action="close")
    assert await control(http, sim, "DELETE", "/faults") == (200, {"faults": []})
    assert await control(http, sim, "GET", "/faults") == (200, {"faults": []})
    await http_completes(http, sim)


@pytest.mark.parametrize(("spec", "message", "param"), [
    ({"action": "status", "colour": "red"}, "Invalid fault: unknown fault field(s): colour", None),
    ({"action": "explode"}, "Invalid fault: action must be one of " + ", ".join(ACTIONS), None),
    ({"action": "status", "share": 1.5}, "Invalid fault: share must be between 0 and 1", None),
    ({"action": "status", "transport": "grpc"}, "Invalid fault: transport must be http or ws", None),
    ({"action": "status", "status": 200}, "Invalid fault: status must be an HTTP error status", None),
    ({"action": "status", "nth": 0},
     "Invalid fault: nth must be >= 1; times and after_events must not be negative", None),
    ({"action": "delay", "first_byte_ms": "100"}, "Invalid fault: first_byte_ms has the wrong type (str)", None),
    ({"action": "status", "anchored": "yes"}, "Invalid fault: anchored has the wrong type (str)", None),
    ({"action": "status", "retry_after": True}, "Invalid fault: retry_after has the wrong type (bool)", None),
    ({"action": "close", "close_code": 1006},
     "Invalid fault: close_code must be a WebSocket close code a server may send (1000-4999)", None),
    ({"status": 503}, "Invalid fault: Fault.__init__() missing 1 required positional argument: 'action'", None),
    ({"action": "status", "account": "9"}, "No simulated account '9'.", "account"),
    ({"action": "status", "account": "acct-nope"}, "No simulated account 'acct-nope'.", "account"),
])
async def test_control_rejects_an_invalid_fault_with_an_openai_400(sim, http, spec, message, param):
    status, error = await control(http, sim, "POST", "/faults", spec)
    assert status == 400
    assert error == {"error": openai_error(400, "invalid_value", message, param)}
    assert await control(http, sim, "GET", "/faults") == (200, {"faults": []})


async def test_control_rejects_a_fault_body_that_is_not_a_json_object(sim, http):
    async with http.post(f"{sim.url}/__sim/faults", data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_json"
    status, error = await control(http, sim, "POST", "/faults", ["status"])
    assert status == 400 and error["error"]["code"] == "invalid_type"


async def test_control_reset_clears_faults_records_and_state(sim, http):
    ws = await ws_connect(http, sim)
    try:
        previous = (await ws_turn(ws, body(user("hi"))))[-1]["response"]["id"]
        await add_fault(http, sim, action="status", status=503, anchored=False, times=None)
        assert await control(http, sim, "POST", "/reset") == (200, {"reset": True})
        assert await control(http, sim, "GET", "/faults") == (200, {"faults": []})
        assert await requests_log(http, sim) == []
        assert (await ws_turn(ws, anchored(previous)))[-1]["error"]["code"] == "previous_response_not_found"
        assert types(await ws_turn(ws, body(user("hi")))) == NORMAL_TYPES
    finally:
        await ws.close()


async def test_control_requests_records_each_request_and_how_it_ended(sim, http):
    await http_completes(http, sim)
    await add_fault(http, sim, action="status", status=503)
    await post_responses(http, sim, body(user("hi")), number=2)
    await add_fault(http, sim, action="failed", after_events=1, code="server_is_overloaded", transport="ws")
    ws = await ws_connect(http, sim)
    try:
        await ws_turn(ws, body(user("hi")))
    finally:
        await ws.close()
    await add_fault(http, sim, action="close", after_events=2)
    await sse_stream(http, sim, body(user("hi")))

    records = await requests_log(http, sim)
    assert [(r["seq"], r["transport"], r["account_id"], r["outcome"], r["status"], r["error_code"], r["faults"])
            for r in records] == [
        (1, "http", sim.backend.accounts[0].account_id, "completed", 200, None, []),
        (2, "http", sim.backend.accounts[1].account_id, "error", 503, "server_is_overloaded", ["f1"]),
        (3, "ws", sim.backend.accounts[0].account_id, "failed", 200, "server_is_overloaded", ["f2"]),
        (4, "http", sim.backend.accounts[0].account_id, "close", 200, None, ["f3"]),
    ]
    assert records[0]["usage"]["total_tokens"] > 0 and records[1]["usage"] is None
    assert await control(http, sim, "DELETE", "/requests") == (200, {"requests": []})
    assert await requests_log(http, sim) == []


# --- account controls ---------------------------------------------------------------------------


async def test_usage_at_100_percent_answers_429_usage_limit_reached(sim, http):
    status, view = await control(http, sim, "POST", "/accounts/2/usage", {"primary_used_percent": 100})
    assert status == 200 and view["usage"]["rate_limit"]["limit_reached"] is True
    reset_at = view["usage"]["rate_limit"]["primary_window"]["reset_at"]

    resp, error = await post_responses(http, sim, body(user("hi")), number=2)
    assert resp.status == 429
    assert resp.headers["x-codex-primary-used-percent"] == "100.0"
    error = error["error"]
    assert {k: error[k] for k in ("type", "code", "message", "plan_type", "resets_at")} == {
        "type": "usage_limit_reached", "code": "usage_limit_reached", "message": "The usage limit has been reached",
        "plan_type": "plus", "resets_at": reset_at}
    assert 0 < error["resets_in_seconds"] <= 300 * 60
    assert abs(time.time() + error["resets_in_seconds"] - reset_at) <= 2

    ws = await ws_connect(http, sim, number=2)
    try:
        frame = (await ws_turn(ws, body(user("hi"))))[-1]
        assert (frame["type"], frame["status"], frame["error"]["code"]) == ("error", 429, "usage_limit_reached")
    finally:
        await ws.close()
    await http_completes(http, sim, number=1)  # other accounts are unaffected
    await control(http, sim, "POST", "/accounts/2/usage", {"primary_used_percent": 0})
    await http_completes(http, sim, number=2)


async def test_usage_limit_resets_at_is_the_later_exhausted_window(sim, http):
    status, view = await control(http, sim, "POST", f"/accounts/{sim.backend.accounts[0].account_id}/usage",
                                 {"secondary_used_percent": 100})
    assert status == 200
    resp, error = await post_responses(http, sim, body(user("hi")))
    assert resp.status == 429
    assert error["error"]["resets_at"] == view["usage"]["rate_limit"]["secondary_window"]["reset_at"]
    assert error["error"]["resets_in_seconds"] > 300 * 60  # the weekly window, not the 5-hour one


async def test_usage_control_rejects_bad_values_and_unknown_accounts(sim, http):
    status, error = await control(http, sim, "POST", "/accounts/1/usage", {"primary_used_percent": 101})
    assert status == 400
    assert error == {"error": openai_error(400, "invalid_value",
                                           "primary_used_percent must be a number from 0 to 100.")}
    status, error = await control(http, sim, "POST", "/accounts/7/usage", {"primary_used_percent": 100})
    assert status == 404 and error["error"]["code"] == "not_found"


async def test_expire_makes_the_account_token_answer_401_token_expired(sim, http):
    assert (await control(http, sim, "POST", "/accounts/1/expire"))[0] == 200
    resp, error = await post_responses(http, sim, body(user("hi")))
    assert resp.status == 401
    assert error == {"error": openai_error(
        401, "token_expired", "Provided authentication token is expired. Please try signing in again.")}
    with pytest.raises(aiohttp.WSServerHandshakeError) as handshake:
        await ws_connect(http, sim)
    assert handshake.value.status == 401
    await http_completes(http, sim, number=2)


async def test_expire_with_hold_stale_answers_the_old_tokens_401s_after_a_newer_token_is_used(sim, http):
    """A request sent with the old token gets its 401 only after the client's refresh: the first 401 goes out at
    once (so the client refreshes), the others once the new token has been used."""
    account = sim.backend.accounts[0]
    assert (await control(http, sim, "POST", "/accounts/1/expire", {"hold_stale": True}))[0] == 200
    first, error = await post_responses(http, sim, body(user("hi")))
    assert first.status == 401 and error["error"]["code"] == "token_expired"
    late = asyncio.create_task(post_responses(http, sim, body(user("sent with the old token"))))
    async with asyncio.timeout(5):
        while account.held == 0:
            await asyncio.sleep(0.01)
    grant = {"client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token",
             "refresh_token": account.refresh_token}
    async with http.post(f"{sim.url}/oauth/token", json=grant) as resp:
        assert resp.status == 200
    status, accounts = await control(http, sim, "GET", "/accounts")
    assert accounts["accounts"][0]["refreshes"] == 1 and accounts["accounts"][1]["refreshes"] == 0
    assert not late.done()  # refreshed, but the new token is not used yet
    await http_completes(http, sim)
    resp, error = await asyncio.wait_for(late, 5)
    assert resp.status == 401 and error["error"]["code"] == "token_expired"
    status, error = await control(http, sim, "POST", "/accounts/1/expire", {"hold_stale": "yes"})
    assert status == 400 and error["error"]["param"] == "hold_stale"


async def test_revoke_makes_every_token_of_the_account_answer_401(sim, http):
    status, view = await control(http, sim, "POST", "/accounts/3/revoke")
    assert status == 200 and view["revoked"] is True
    resp, error = await post_responses(http, sim, body(user("hi")), number=3)
    assert resp.status == 401
    assert error == {"error": openai_error(
        401, "token_invalidated", "Your authentication token has been invalidated. Please try signing in again.")}
    await http_completes(http, sim, number=1)

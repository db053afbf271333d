"""Small real clients for the simulated upstream: SSE over HTTP and Responses over WebSocket."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from codexlb.sim.running import RunningSim

MODEL = "gpt-5.5"


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def body(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "stream": True, "store": False, "input": list(items), **extra}


def auth_headers(sim: RunningSim, number: int = 1) -> dict[str, str]:
    account = sim.backend.accounts[number - 1]
    return {"Authorization": f"Bearer {account.access_token}", "chatgpt-account-id": account.account_id}


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        event = orjson.loads(lines[1][6:])
        assert event["type"] == lines[0][7:]
        events.append(event)
    return events


async def post_responses(http: aiohttp.ClientSession, sim: RunningSim, payload: Any, *, number: int = 1,
                         headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, Any]:
    """POST /responses; returns the response and its SSE events (or its JSON error body)."""
    data = payload if isinstance(payload, (bytes, str)) else orjson.dumps(payload)
    async with http.post(f"{sim.codex_base_url}/responses", data=data,
                         headers={**auth_headers(sim, number), "Content-Type": "application/json",
                                  **(headers or {})}) as resp:
        raw = await resp.read()
        if resp.content_type == "text/event-stream":
            return resp, parse_sse(raw)
        return resp, orjson.loads(raw)


async def ws_connect(http: aiohttp.ClientSession, sim: RunningSim, *, number: int = 1,
                     headers: dict[str, str] | None = None) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(
        f"{sim.codex_base_url}/responses",
        headers={**auth_headers(sim, number), "openai-beta": "responses_websockets=2026-02-06", **(headers or {})},
    )


TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


async def ws_turn(ws: aiohttp.ClientWebSocketResponse, payload: dict[str, Any],
                  timeout: float = 10.0) -> list[dict[str, Any]]:
    """Send one response.create and read events up to the terminal one (or the socket's end)."""
    frame = {"type": "response.create", **{k: v for k, v in payload.items() if k != "stream"}}
    await ws.send_str(orjson.dumps(frame).decode())
    events: list[dict[str, Any]] = []
    while True:
        message = await ws.receive(timeout=timeout)
        if message.type is not aiohttp.WSMsgType.TEXT:
            return events
        event = orjson.loads(message.data)
        events.append(event)
        if event["type"] in TERMINAL:
            return events


def handshake_headers(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """The 101 response's headers (aiohttp keeps them on the private handshake response)."""
    return ws._response.headers


async def add_fault(http: aiohttp.ClientSession, sim: RunningSim, **fault: Any) -> dict[str, Any]:
    """Script a fault into the sim (`codexlb.sim.faults`); returns it as the sim stored it."""
    async with http.post(f"{sim.url}/__sim/faults", json=fault) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()

"""Slow clients against a real `serve`: a request head or body that never finishes is given up on within its
bound, however many of them there are, while streams and WebSockets that outlast the bound go on."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import orjson
import pytest

from codexlb.app import create_app
from codexlb.services import ROSTER
from tests.accounts.conftest import login_of
from tests.serving import serving
from tests.simclient import add_fault, body, parse_sse, user, ws_turn

HALF_A_HEAD = b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */"


@asynccontextmanager
async def codexlb(settings, sim, **overrides) -> AsyncIterator[str]:
    """`serve` in front of the sim with its accounts imported; yields the base URL."""
    settings = dataclasses.replace(settings, upstream_base_url=sim.upstream_base_url, auth_base_url=sim.url,
                                   **overrides)
    app = create_app(settings)
    async with serving(settings, app) as port:
        for account in sim.backend.accounts:
            await app[ROSTER].add_login(login_of(account))
        yield f"http://127.0.0.1:{port}"


async def connect(url: str, sent: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(sent)
    await writer.drain()
    return reader, writer


async def until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """All the server sends before it closes the connection (a test failure if it keeps it longer)."""
    return await asyncio.wait_for(reader.read(), within)


def timeout_answer(raw: bytes) -> dict:
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), raw[:200]
    return orjson.loads(payload)["error"]


async def test_a_half_sent_head_gets_408_and_is_closed_within_the_bound(settings, sim):
    async with codexlb(settings, sim, header_timeout_s=0.5) as url:
        started = time.monotonic()
        reader, writer = await connect(url, HALF_A_HEAD)
        raw = await until_closed(reader, 5)
        waited = time.monotonic() - started
        writer.close()
    assert timeout_answer(raw)["code"] == "request_timeout"
    assert 0.4 < waited < 3


async def test_a_silent_connection_and_an_idle_keep_alive_one_are_closed_without_a_word(settings, sim):
    async with codexlb(settings, sim, header_timeout_s=0.5) as url:
        silent, silent_writer = await connect(url)
        assert await until_closed(silent, 5) == b""
        # A finished request starts the bound again; with no next request, the connection just ends.
        kept, kept_writer = await connect(url, b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raw = await until_closed(kept, 5)
        silent_writer.close()
        kept_writer.close()
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.count(b"HTTP/1.1") == 1


async def test_500_slowloris_connections_do_not_slow_others_and_are_all_closed_after_the_bound(settings, sim,
                                                                                               http):
    bound = 2.0
    async with codexlb(settings, sim, header_timeout_s=bound) as url:
        opened = time.monotonic()
        loris = [await connect(url, HALF_A_HEAD) for _ in range(500)]
        assert time.monotonic() - opened < bound, "the 500 must be open at once for the rest to mean anything"
        started = time.monotonic()
        async with http.get(f"{url}/health/ready") as health:
            assert health.status == 200
        async with http.post(f"{url}/backend-api/codex/responses", json=body(user("still here"))) as resp:
            raw = await resp.read()
            assert resp.status == 200, raw
            events = parse_sse(raw)
        answered = time.monotonic() - started
        assert events[-1]["type"] == "response.completed"
        answers = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in loris)), bound + 10)
        for _, writer in loris:
            writer.close()
    assert answered < 1.0
    assert all(timeout_answer(raw)["code"] == "request_timeout" for raw in answers)


async def test_streams_and_websockets_that_outlast_the_bound_are_not_cut(settings, sim, http):
    bound = 0.5
    async with codexlb(settings, sim, header_timeout_s=bound) as url:
        # A turn whose events come 0.3 s apart: several bounds long, and streamed to the end.
        await add_fault(http, sim, action="delay", between_events_ms=300)
        started = time.monotonic()
        async with http.post(f"{url}/backend-api/codex/responses", json=body(user("slow turn"))) as resp:
            events = parse_sse(await resp.read())
        assert events[-1]["type"] == "response.completed" and time.monotonic() - started > 3 * bound
        async with http.ws_connect(f"{url}/backend-api/codex/responses",
                                   headers={"openai-beta": "responses_websockets=2026-02-06"}) as ws:
            first = await ws_turn(ws, body(user("one")))
            await asyncio.sleep(3 * bound)  # the session sits idle well past the bound
            second = await ws_turn(ws, body(user("two"), previous_response_id=first[-1]["response"]["id"]))
            assert not ws.closed
    assert first[-1]["type"] == second[-1]["type"] == "response.completed"


@pytest.mark.parametrize("path", ["/backend-api/codex/responses", "/v1/responses", "/api/keys", "/api/login"])
async def test_a_body_that_stops_arriving_gets_408_within_the_bound(settings, sim, path):
    async with codexlb(settings, sim, body_timeout_s=0.5) as url:
        started = time.monotonic()
        reader, writer = await connect(url, (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{\"model\": \"gpt").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        waited = time.monotonic() - started
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        error = orjson.loads(await asyncio.wait_for(reader.readexactly(length), 5))["error"]
        writer.close()
    assert head.startswith(b"HTTP/1.1 408 ") and error["code"] == "request_timeout"
    assert 0.4 < waited < 3

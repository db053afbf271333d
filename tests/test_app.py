"""The application shell: health, OpenAI-shaped errors, request ids."""

from __future__ import annotations

import os

from aiohttp import web

from codexlb.app import create_app
from codexlb.errors import APIError
from codexlb.handlers import health


async def test_health_live_and_ready(client):
    live = await client.get("/health/live")
    assert live.status == 200 and await live.json() == {"status": "live", "pid": os.getpid()}
    ready = await client.get("/health/ready")
    assert ready.status == 200 and await ready.json() == {"status": "ready"}


async def test_ready_is_503_while_draining(client):
    client.app[health.LIFECYCLE].draining = True
    resp = await client.get("/health/ready")
    assert resp.status == 503 and await resp.json() == {"status": "draining"}
    assert (await client.get("/health/live")).status == 200


async def test_unknown_route_is_openai_shaped_404(client):
    resp = await client.get("/v1/nothing-here")
    assert resp.status == 404
    assert await resp.json() == {
        "error": {
            "message": "Unknown route: GET /v1/nothing-here",
            "type": "invalid_request_error",
            "code": "not_found",
            "param": None,
        }
    }


async def test_wrong_method_is_openai_shaped_405(client):
    resp = await client.delete("/health/live")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    body = await resp.json()
    assert body["error"]["code"] == "method_not_allowed"
    assert body["error"]["type"] == "invalid_request_error"


async def test_handler_crash_is_500_without_stack_trace(aiohttp_client, settings):
    async def crash(_request: web.Request) -> web.Response:
        raise RuntimeError("secret internals at line 42")

    app = create_app(settings)
    app.router.add_get("/crash", crash)
    client = await aiohttp_client(app)
    resp = await client.get("/crash")
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["type"] == "server_error"
    assert body["error"]["code"] == "internal_error"
    text = str(body)
    assert "Traceback" not in text and "secret internals" not in text and "RuntimeError" not in text


async def test_api_error_from_handler(aiohttp_client, settings):
    async def limited(_request: web.Request) -> web.Response:
        raise APIError(429, "Pool is busy", code="proxy_overloaded", headers={"Retry-After": "2"})

    app = create_app(settings)
    app.router.add_post("/limited", limited)
    client = await aiohttp_client(app)
    resp = await client.post("/limited")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "2"
    assert await resp.json() == {
        "error": {"message": "Pool is busy", "type": "rate_limit_error", "code": "proxy_overloaded", "param": None}
    }


async def test_request_id_is_echoed_or_made(client):
    given = await client.get("/health/live", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/health/live", headers={"x-request-id": "bad id\twith junk"})
    assert len(made.headers["x-request-id"]) == 32
    assert (await client.get("/nope")).headers["x-request-id"]


async def test_crash_mid_stream_cuts_the_stream_instead_of_writing_a_second_response(aiohttp_client, settings):
    import aiohttp
    import pytest

    async def half_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: response.created\ndata: {}\n\n")
        raise RuntimeError("upstream parser blew up")

    app = create_app(settings)
    app.router.add_get("/half", half_stream)
    client = await aiohttp_client(app)
    resp = await client.get("/half")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()

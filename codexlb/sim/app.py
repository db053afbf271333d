"""The simulated upstream's routes: the ChatGPT backend's, auth.openai.com's (and `oauth`), and `/__sim` control."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.typedefs import Handler

from codexlb.handlers import health, middlewares
from codexlb.sim import control, oauth, responses, validate
from codexlb.sim.backend import BACKEND, Backend, Sink, turn_metadata
from codexlb.sim.errors import SimError, bad_request

# Full Codex histories run to megabytes; upstream's WebSocket frame budget is about 15 MiB.
MAX_BODY = 64 * 1024 * 1024


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _error(exc: SimError, extra_headers: dict[str, str] | None = None) -> web.Response:
    return _json(exc.status, exc.http_body(), {**(extra_headers or {}), **exc.headers})


async def _split_error(request: web.Request, exc: SimError, extra_headers: dict[str, str]) -> web.StreamResponse:
    """The error with its body in two writes, `exc.split_s` apart: a reader must not take the first for all."""
    body = orjson.dumps(exc.http_body())
    response = web.StreamResponse(status=exc.status, headers={
        **extra_headers, **exc.headers, "Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[:len(body) // 2])
    await asyncio.sleep(exc.split_s)
    await response.write(body[len(body) // 2:])
    await response.write_eof()
    return response


class SseSink(Sink):
    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.closed = False
        self.completed = False

    async def send(self, events: list[dict[str, Any]]) -> None:
        await self.response.write(b"".join(map(responses.sse_frame, events)))
        self.completed = events[-1]["type"] == "response.completed"

    async def close(self, code: int | None) -> None:
        self.closed = True
        if self.completed:
            # close_after_response: the HTTP response ends properly; only then does the connection go.
            await self.response.write_eof()
        if self.request.transport is not None:
            # A FIN, not a reset: what was sent arrives, then the stream ends mid-response.
            self.request.transport.close()


class WsSink(Sink):
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.closed = False

    async def send(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            await self.ws.send_frame(orjson.dumps(event), WSMsgType.TEXT)

    async def send_error(self, exc: SimError) -> None:
        await self.send([exc.ws_frame()])

    async def close(self, code: int | None) -> None:
        self.closed = True
        if code is not None:
            await self.ws.close(code=code)
        elif self.request.transport is not None:
            # A FIN, not a reset: what was sent arrives, then the stream ends mid-response.
            self.request.transport.close()


async def responses_http(request: web.Request) -> web.StreamResponse:
    backend = request.app[BACKEND]
    account = None
    peer = request.transport.get_extra_info("peername") if request.transport else None
    try:
        account = await backend.authenticate(request.headers)
        raw = await request.read()
        payload = validate.parse_json(raw)
        items = validate.check_payload(payload, backend.models, http=True)
        turn_state = request.headers.get("x-codex-turn-state") or backend.new_turn_state()
        turn = backend.begin(payload, items, account, transport="http", turn_state=turn_state,
                             metadata=turn_metadata(request.headers, payload), headers=request.headers,
                             peer=f"{peer[0]}:{peer[1]}" if peer else "", body_bytes=len(raw))
    except SimError as exc:
        limits = account.rate_limit_headers(time.time()) if account else {}
        return await _split_error(request, exc, limits) if exc.split_s else _error(exc, limits)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "x-codex-turn-state": turn_state,
        "openai-model": payload["model"],
        **account.rate_limit_headers(time.time()),
    })
    await response.prepare(request)
    sink = SseSink(request, response)
    await turn.play(sink)
    if not sink.closed:
        if turn.plan.end_s:
            await asyncio.sleep(turn.plan.end_s)
        await response.write_eof()
    return response


async def responses_ws(request: web.Request) -> web.StreamResponse:
    backend = request.app[BACKEND]
    account = await backend.authenticate(request.headers)
    await backend.handshake(account)
    turn_state = request.headers.get("x-codex-turn-state") or backend.new_turn_state()
    ws = web.WebSocketResponse(max_msg_size=MAX_BODY)
    ws.headers.update({"x-codex-turn-state": turn_state, **account.rate_limit_headers(time.time())})
    await ws.prepare(request)
    sink = WsSink(request, ws)
    backend.sockets.add(ws)
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                await sink.send_error(bad_request("Only text frames with JSON are accepted.", "invalid_value"))
                continue
            try:
                payload = validate.parse_json(message.data.encode())
                validate.check_ws_frame(payload)
                items = validate.check_payload(payload, backend.models, http=False)
                turn = backend.begin(payload, items, account, transport="ws", turn_state=turn_state,
                                     metadata=turn_metadata(request.headers, payload), headers=request.headers,
                                     body_bytes=len(message.data))
            except SimError as exc:
                await sink.send_error(exc)
                continue
            await turn.play(sink)
            if sink.closed:
                break
    finally:
        backend.sockets.discard(ws)
    return ws


async def models(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    await backend.authenticate(request.headers)
    backend.catalog_requests += 1
    return _json(200, backend.model_catalog())


async def usage(request: web.Request) -> web.Response:
    account = await request.app[BACKEND].authenticate(request.headers)
    request.app[BACKEND].usage_polls[account.account_id] += 1
    return _json(200, account.usage_view(time.time()))


@web.middleware
async def sim_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A SimError raised before a response started is answered in upstream's HTTP shape."""
    try:
        return await handler(request)
    except SimError as exc:
        return _error(exc)


async def oauth_token(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    if request.content_type == "application/x-www-form-urlencoded":
        form: dict[str, Any] = dict(await request.post())
    else:
        form = validate.parse_json(await request.read())
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        account = backend.auth.exchange(form)
    elif grant_type == "refresh_token":
        token = form.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise bad_request("Missing required parameter: 'refresh_token'.", "invalid_request", "refresh_token")
        account = await backend.redeem(token)
    else:
        raise bad_request(f"Unsupported grant type: {grant_type!r}", "unsupported_grant_type", "grant_type")
    return _json(200, {
        "access_token": account.access_token,
        "refresh_token": account.refresh_token,
        "id_token": account.id_token,
        "token_type": "Bearer",
        "expires_in": int(account.access_expires_at - time.time()),
        "scope": "openid profile email offline_access",
    })


async def _going_away(app: web.Application) -> None:
    """On shutdown, close open WebSockets as a server going away does (1001), not by timeout."""
    for ws in list(app[BACKEND].sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


def create_sim_app(backend: Backend) -> web.Application:
    app = web.Application(middlewares=[middlewares.openai_errors, sim_errors], client_max_size=MAX_BODY)
    app[BACKEND] = backend
    app.on_response_prepare.append(middlewares.on_response_prepare)
    app.on_shutdown.append(_going_away)
    app.router.add_post("/backend-api/codex/responses", responses_http)
    app.router.add_get("/backend-api/codex/responses", responses_ws)
    app.router.add_get("/backend-api/codex/models", models)
    app.router.add_get("/backend-api/wham/usage", usage)
    app.router.add_post("/oauth/token", oauth_token)
    oauth.setup(app, backend.auth)
    health.setup(app)
    control.setup(app)
    return app

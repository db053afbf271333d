"""The client WebSocket route: `GET .../responses` with `Upgrade: websocket`.

The handshake is admitted (key and in-flight gates) and the upstream socket opened before the client's
upgrade is answered, so a refusal is a real HTTP status; then `codexlb.bridge.websocket` relays the two
sockets until the client leaves.
"""

from __future__ import annotations

import time
from typing import Sequence

from aiohttp import web

from codexlb.accounting import account_usage
from codexlb.admission.gate import Slot
from codexlb.bridge.websocket import Bridge
from codexlb.errors import APIError
from codexlb.keys import API_KEY
from codexlb.pool.sticky import conversation_keys
from codexlb.services import STORE
from codexlb.upstream.state import UPSTREAM, Outcome, Upstream
from codexlb.upstream.websocket import (
    HEARTBEAT_S,
    MAX_FRAME,
    UpstreamSocket,
    open_socket,
)


async def responses_ws(request: web.Request) -> web.StreamResponse:
    """GET /backend-api/codex/responses and /v1/responses with `Upgrade: websocket`."""
    client = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME)
    if not client.can_prepare(request).ok:
        raise APIError(426, "This route speaks WebSocket (Upgrade: websocket) or POST.", code="upgrade_required",
                       type="invalid_request_error", headers={"Upgrade": "websocket"})
    up = request.app[UPSTREAM]
    handshake, started = Outcome(), time.monotonic()
    try:
        async with up.gates.admitted(request.get(API_KEY)):
            keys = conversation_keys(request.headers, None)
            sock, slot = await open_socket(up, request.headers, keys, handshake)
            await _serve(up, request, client, sock, slot, keys)
    except APIError as exc:
        # A refused upgrade is a request like any other in the log (answered ones are logged per response).
        handshake.status, handshake.error_code = exc.status, exc.code
        account_usage(request.app[STORE], request, handshake, started)
        raise
    return client


async def _serve(up: Upstream, request: web.Request, client: web.WebSocketResponse, sock: UpstreamSocket,
                 slot: Slot, keys: Sequence[str]) -> None:
    """Answer the upgrade (the upstream socket is open) and relay until the client leaves."""
    try:
        if sock.turn_state:
            client.headers["x-codex-turn-state"] = sock.turn_state
        await client.prepare(request)
    except BaseException:
        await sock.ws.close()
        slot.release()
        raise
    await Bridge(up, request.app[STORE], request, client, sock, slot, keys).run()


def setup(app: web.Application) -> None:
    app.router.add_get("/backend-api/codex/responses", responses_ws)
    app.router.add_get("/v1/responses", responses_ws)

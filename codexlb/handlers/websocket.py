"""The client WebSocket route: `GET .../responses` with `Upgrade: websocket`.

The handshake is admitted (key and in-flight gates) and the upstream socket opened before the client's
upgrade is answered, so a refusal is a real HTTP status; then `codexlb.bridge.websocket` relays the two
sockets until the client leaves.

A socket handed over by a process that upgrades (`codexlb.server.conn_handover`) comes in as its upgrade request
replayed, with its state in `RESUMED`: it is admitted as any other, but its 101 is not written again (the client
has it), and its Bridge goes on on the same account. Every relayed socket is in `RELAYS` while it runs, for the
hand-over to find.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from aiohttp import web
from aiohttp._websocket import reader_py
from aiohttp.web_ws import DEFAULT_CHUNK_SIZE

from codexlb.accounting import account_usage
from codexlb.admission.gate import Slot
from codexlb.bridge.websocket import Bridge, Resumed
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

# The relays running, by their connection's protocol; the state of sockets handed over, until their handler runs.
RELAYS = web.AppKey("ws_relays", dict[Any, tuple[Bridge, "ClientSocket"]])
RESUMED = web.AppKey("ws_resumed", dict[Any, Resumed])
# A socket handed over whose account this process cannot serve: the client reconnects (and resends once).
_RESTART = 1012


class ClientSocket(web.WebSocketResponse):
    """The client's WebSocket, in a form another process can go on with.

    No permessage-deflate: with it, the inflater's window would live in the process that read the frames so far,
    and the socket could not be handed over at an upgrade. Frames are read by aiohttp's pure-Python reader,
    whose state (unlike the compiled one's) says whether a frame is partly read (`at_rest`)."""

    def __init__(self, *, resumed: bool) -> None:
        super().__init__(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME, compress=False)
        self._resumed = resumed

    async def _write_headers(self) -> None:
        if not self._resumed:  # a socket handed over: the client had its 101 from the process before
            await super()._write_headers()

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        # aiohttp's own (3.14), with reader_py's classes.
        self._ws_protocol, self._writer = protocol, writer
        self._reset_heartbeat()
        self._reader = reader_py.WebSocketDataQueue(request._protocol, DEFAULT_CHUNK_SIZE, loop=self._loop)
        self._parser = reader_py.WebSocketReader(self._reader, self._max_msg_size, compress=False,
                                                 decode_text=self._decode_text)
        request.protocol.set_parser(self._parser, None if self._heartbeat is None else self._on_data_received)
        request.protocol.keep_alive(False)

    def at_rest(self) -> bool:
        """Nothing read that is not yet a whole message taken by the relay (with reading paused, it stays so)."""
        parser = self._parser
        return (not self._reader._buffer and parser._state == reader_py.READ_HEADER and not parser._tail
                and not parser._partial)


async def responses_ws(request: web.Request) -> web.StreamResponse:
    """GET /backend-api/codex/responses and /v1/responses with `Upgrade: websocket`."""
    resumed = request.app[RESUMED].pop(request.protocol, None)
    client = ClientSocket(resumed=resumed is not None)
    if not client.can_prepare(request).ok:
        raise APIError(426, "This route speaks WebSocket (Upgrade: websocket) or POST.", code="upgrade_required",
                       type="invalid_request_error", headers={"Upgrade": "websocket"})
    up = request.app[UPSTREAM]
    handshake, started = Outcome(transport="ws"), time.monotonic()
    try:
        async with up.gates.admitted(request.get(API_KEY)):
            keys = conversation_keys(request.headers, None)
            if resumed is not None:
                await _resume(up, request, client, resumed, keys)
                return client
            sock, slot = await open_socket(up, request.headers, keys, handshake)
            await _serve(up, request, client, sock, slot, keys)
    except APIError as exc:
        # A refused upgrade is a request like any other in the log (answered ones are logged per response).
        handshake.status, handshake.error_code = exc.status, exc.code
        account_usage(request.app[STORE], request, handshake, started)
        if resumed is None:
            raise
        await client.prepare(request)  # writes nothing: the client is past its handshake
        await client.close(code=_RESTART, message=b"try again")
    return client


async def _resume(up: Upstream, request: web.Request, client: ClientSocket, resumed: Resumed,
                  keys: Sequence[str]) -> None:
    """Go on with a socket handed over, on its account (its stream slot taken as a new socket's is)."""
    account = up.roster.by_id(resumed.account_id)
    if account is None or not account.usable(time.time()):
        raise APIError(503, "The account serving this conversation is gone.", code="upstream_unavailable")
    slot = await up.gates.account(account).acquire()
    try:
        await client.prepare(request)
    except BaseException:
        slot.release()
        raise
    await _relay(request, Bridge(up, request.app[STORE], request, client, None, slot, keys,
                                 resumed=(account, resumed)), client)


async def _serve(up: Upstream, request: web.Request, client: ClientSocket, sock: UpstreamSocket,
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
    await _relay(request, Bridge(up, request.app[STORE], request, client, sock, slot, keys), client)


async def _relay(request: web.Request, bridge: Bridge, client: ClientSocket) -> None:
    relays = request.app[RELAYS]
    relays[request.protocol] = (bridge, client)
    try:
        await bridge.run()
    finally:
        relays.pop(request.protocol, None)


def setup(app: web.Application) -> None:
    app[RELAYS] = {}
    app[RESUMED] = {}
    app.router.add_get("/backend-api/codex/responses", responses_ws)
    app.router.add_get("/v1/responses", responses_ws)

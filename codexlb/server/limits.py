"""The listening socket, and how long a client connection may take to send a request's head.

aiohttp has no bound on that: its keep-alive timer (an hour by default) starts only once a first response is
out (3.14.5 also starts it at the opening; 3.14.0 does not), and nothing bounds a head that arrives byte by byte. So
500 connections that sent half a head, or nothing at all, were held until the file-descriptor limit. aiohttp
offers no setting or hook for it, so each connection gets a `RequestHandler` subclass made here, with one
deadline: the head of the next request is due `header_timeout_s` after the connection opens or after the
previous response is out. A request being handled (a stream of minutes, a WebSocket of hours) is never cut.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

import orjson
from aiohttp import web

from codexlb import log
from codexlb.errors import client_fault, error_body, error_response, fault_reason

_log = log.get("codexlb.server")

BACKLOG = 128

_TIMEOUT_BODY = orjson.dumps(error_body(
    "The request headers did not arrive in time; the connection is closed.", "invalid_request_error",
    "request_timeout"))
# Written raw: no request exists yet for aiohttp to answer.
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class _HeadDeadline(web.RequestHandler):
    """A RequestHandler that closes its connection when the next request's head is overdue."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._deadline: asyncio.TimerHandle | None = None
        self._bytes_since_armed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._bytes_since_armed = True
        super().data_received(data)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._arm()  # the response is out: the next head is due from now

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or a handler it gave up on) is plain text; a
        client of an OpenAI-compatible API reads `{"error": ...}`. aiohttp's own call still logs it (one line
        when the client is at fault: `codexlb.log`) and refuses when a response is already out."""
        super().handle_error(request, status, exc, message)
        fault = client_fault(exc)
        if fault is not None:
            response = error_response(status, f"Malformed request: {fault_reason(fault)}.", code="malformed_request")
        else:
            response = error_response(status, "Internal server error; see the codexlb log.", code="internal_error")
        response.force_close()
        return response

    def at_rest(self) -> bool:
        """Between requests with no byte of the next one read (a connection that can go to another process)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._bytes_since_armed

    def _arm(self) -> None:
        self._disarm()
        self._bytes_since_armed = False
        self._deadline = asyncio.get_running_loop().call_later(self._header_timeout_s, self._overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _overdue(self) -> None:
        self._deadline = None
        # Idle between requests, as aiohttp's own keep-alive timer tells it: `start()` awaits `_waiter` for the
        # next head and for nothing else (the one private name used here, and in `at_rest`; the same in 3.12
        # through 3.14).
        waiter = self._waiter
        if waiter is None or waiter.done() or self.transport is None:
            return  # a request is being handled: its end arms the deadline again
        if self._bytes_since_armed:
            # Part of a head came: say why we give up. Silence on an idle keep-alive connection, where a 408
            # could cross the client's next request and be taken for its answer.
            self.transport.write(_TIMEOUT_RESPONSE)
        peer = self.peername
        _log.debug("request head timed out", remote=peer[0] if isinstance(peer, tuple) else peer,
                   timeout_s=self._header_timeout_s, partial=self._bytes_since_armed)
        self.force_close()


def handlers(runner: web.BaseRunner, *, header_timeout_s: float) -> Callable[[], _HeadDeadline]:
    """The protocol factory for `runner`'s connections: the accepted ones, and those a process that upgrades
    hands over (`conn_handover`)."""
    loop = asyncio.get_running_loop()
    server = runner.server
    assert server is not None, "runner.setup() first"

    def connection() -> _HeadDeadline:
        # No aiohttp access log: codexlb writes its own request line (middlewares.access_log).
        return _HeadDeadline(server, loop=loop, access_log=None, header_timeout_s=header_timeout_s)

    return connection


async def listen(runner: web.BaseRunner, host: str, port: int, *, header_timeout_s: float,
                 sock: socket.socket | None = None) -> asyncio.AbstractServer:
    """Accept connections on host:port, or on `sock` already listening, for `runner` (already set up); the caller
    closes what it returns."""
    loop = asyncio.get_running_loop()
    connection = handlers(runner, header_timeout_s=header_timeout_s)
    # What web.TCPSite would do, but with our handler: TCPSite has no way to choose it.
    if sock is not None:
        return await loop.create_server(connection, sock=sock, backlog=BACKLOG)
    return await loop.create_server(connection, host, port, reuse_address=True, backlog=BACKLOG)

"""At an upgrade, the old process hands its client connections to the new one instead of closing them, so a
client notices nothing: its TCP connection goes on in the new process.

Why not close them: any close of an idle Codex CLI WebSocket (close frame, FIN, reset) makes the CLI open a new
socket and send its whole history, unanchored (README, "Upgrading without downtime"); a connection
handed over at a frame boundary goes on, anchored. The kernel sends no FIN while any process holds the socket.

The channel is a Unix socket pair made before the new process starts (`handover`). Once the new process serves,
the old one hands each connection over as soon as it is at rest: reading paused, nothing of a next request or
frame read, nothing left to write, and for a WebSocket no response under way (`Bridge.at_rest`). A frame on the
channel is a 4-byte length and an orjson header (`kind`: http or ws; a WebSocket's upgrade request and its
`Resumed` state); the connection's descriptor rides with its first byte (SCM_RIGHTS). The new process answers
each with one byte once the connection is in its loop; only then does the old one drop its own descriptor,
without a close frame or FIN. An HTTP connection goes straight into the new server; a WebSocket's upgrade request
is replayed to it (`handlers.websocket`: admitted and counted as any other, its 101 not written again).

Bounded: a connection still busy at `drain_timeout_s` is closed by the drain, as before. A new process that
stops reading, or answers no more, costs `SEND_WAIT_S` once: the connection it may hold is shut down (the client
reconnects rather than hang), and the rest drain here as they would without a successor.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from collections import deque
from typing import Any, Callable

import orjson
from aiohttp import web

from codexlb import log
from codexlb.bridge.websocket import Resumed
from codexlb.handlers.websocket import RELAYS, RESUMED

_log = log.get("codexlb.server")

POLL_S = 0.02  # how often connections not yet at rest are looked at again
# For one connection's frame to go and its answer to come. Generous: a new process still starting under load can
# take seconds to answer, and a connection shut down after the wait may be one it already serves (a response
# cut in flight: seen once in the rolling e2e with a 5 s wait on a busy machine).
SEND_WAIT_S = 15.0
ACK = b"\x06"
_MAX_FDS = 16


class _Broken(Exception):
    """The channel failed; `sent`: the connection's descriptor may be in the new process's hands."""

    def __init__(self, sent: bool) -> None:
        self.sent = sent


async def pass_connections(app: web.Application, server: web.Server, channel: socket.socket) -> bool:
    """Hand each of `server`'s connections over once it is at rest, until none is left: True. False when the
    channel fails (the new process stopped reading it, or died): the connections left stay here."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)
    passed = 0
    try:
        while server.connections:
            for handler in list(server.connections):
                passed += await _pass(loop, app, handler, channel)
            await asyncio.sleep(POLL_S)
    except _Broken as exc:
        _log.warning("upgrade: the new process takes no more connections; the rest drain here",
                     handed_over=passed, left=len(server.connections), dropped=exc.sent)
        return False
    _log.info("upgrade: connections handed over", count=passed)
    return True


async def _pass(loop: asyncio.AbstractEventLoop, app: web.Application, handler: Any,
                channel: socket.socket) -> bool:
    transport = handler.transport
    if transport is None or transport.is_closing() or not transport.is_reading():
        return False  # closing, or held back by aiohttp itself (its buffers are full): not at rest
    transport.pause_reading()  # what is read from here on is the new process's to read
    header = _header(app, handler)
    if header is None or transport.get_write_buffer_size():
        transport.resume_reading()
        return False
    sock = transport.get_extra_info("socket")
    try:
        await _send(loop, channel, orjson.dumps(header), sock.fileno())
    except _Broken as exc:
        if exc.sent:
            sock.shutdown(socket.SHUT_RDWR)  # the client reconnects rather than wait on a process that is stuck
            transport.abort()
        else:
            transport.resume_reading()
        raise
    transport.abort()  # ours closed; the new process holds the connection, so nothing reaches the client
    return True


def _header(app: web.Application, handler: Any) -> dict[str, Any] | None:
    """What goes with the connection, if it is at rest."""
    relay = app[RELAYS].get(handler)
    if relay is None:
        return {"kind": "http"} if handler.at_rest() else None
    bridge, client = relay
    state = bridge.at_rest()
    if state is None or not client.at_rest():
        return None
    request = client._req
    assert request is not None
    return {"kind": "ws", "method": request.method, "path": request.raw_path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "state": state.to_json()}


async def _send(loop: asyncio.AbstractEventLoop, channel: socket.socket, header: bytes, fd: int) -> None:
    frame = len(header).to_bytes(4, "big") + header
    sent = 0
    try:
        async with asyncio.timeout(SEND_WAIT_S):
            while not sent:
                try:
                    sent = socket.send_fds(channel, [frame], [fd])
                except BlockingIOError:
                    await _ready(loop, channel, write=True)
            await loop.sock_sendall(channel, frame[sent:])
            if await loop.sock_recv(channel, 1) != ACK:
                raise ConnectionResetError("the channel closed")
    except (OSError, TimeoutError):
        raise _Broken(sent > 0) from None


async def _ready(loop: asyncio.AbstractEventLoop, channel: socket.socket, *, write: bool) -> None:
    done = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    (loop.add_writer if write else loop.add_reader)(channel, wake)
    try:
        await done
    finally:
        (loop.remove_writer if write else loop.remove_reader)(channel)


async def adopt_connections(app: web.Application, channel: socket.socket,
                            protocol: Callable[[], asyncio.Protocol]) -> None:
    """In the new process: take in each connection the old one hands over, until it closes the channel."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)
    buffer, fds = bytearray(), deque[int]()
    adopted = 0
    try:
        while True:
            await _ready(loop, channel, write=False)
            try:
                data, received, _flags, _addr = socket.recv_fds(channel, 1 << 16, _MAX_FDS)
            except BlockingIOError:
                continue
            fds.extend(received)
            if not data:
                break
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + (size := int.from_bytes(buffer[:4], "big")):
                header = orjson.loads(bytes(buffer[4:4 + size]))
                del buffer[:4 + size]
                try:
                    await _adopt(loop, app, protocol, header, fds.popleft())
                    adopted += 1
                except OSError as exc:  # the client left meanwhile
                    _log.info("upgrade: a connection handed over was gone", error=str(exc))
                await loop.sock_sendall(channel, ACK)
    except OSError as exc:
        _log.warning("upgrade: the connections channel broke", error=str(exc))
    finally:
        for fd in fds:  # a frame cut short: the old process shuts its connection down
            os.close(fd)
        channel.close()
        _log.info("upgrade: connections taken over", count=adopted)


async def _adopt(loop: asyncio.AbstractEventLoop, app: web.Application, protocol: Callable[[], asyncio.Protocol],
                 header: dict[str, Any], fd: int) -> None:
    sock = socket.socket(fileno=fd)
    if header["kind"] == "http":
        factory = protocol
    else:
        handler = protocol()
        app[RESUMED][handler] = Resumed(**header["state"])
        head = "".join([f"{header['method']} {header['path']} HTTP/1.1\r\n",
                        *(f"{name}: {value}\r\n" for name, value in header["headers"]), "\r\n"])
        factory = functools.partial(_Replay, handler, head.encode("latin-1"))
    try:
        await loop.connect_accepted_socket(factory, sock)
    except BaseException:
        sock.close()
        if header["kind"] != "http":
            app[RESUMED].pop(handler, None)
        raise


class _Replay(asyncio.Protocol):
    """Puts the connection's handler in place and gives it the WebSocket's upgrade request first, before any
    byte the client sends next (the transport starts reading only after `connection_made`)."""

    def __init__(self, handler: asyncio.Protocol, head: bytes) -> None:
        self._handler, self._head = handler, head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self._handler)
        self._handler.connection_made(transport)
        self._handler.data_received(self._head)

"""The HTTP bridge: a Codex CLI's HTTP `/responses` request carried over its conversation's upstream
WebSocket (`sessions`), anchored by the proxy itself (`anchor`), relayed back as SSE.

Over HTTP the CLI always sends the whole conversation; on the socket only the new items go up, with
`previous_response_id`. Because the proxy holds the whole request, anything that goes wrong before the
client's first byte can be put right here: a lost socket is reconnected and the request resent
(`codexlb.recovery`), and an anchor upstream no longer knows is dropped and the input sent whole, so a
client never sees `previous_response_not_found` for an anchor it did not send.
"""

from __future__ import annotations

import asyncio
import re
import time
from itertools import chain, repeat
from typing import Any, Iterator, Sequence

import aiohttp
import orjson
from aiohttp import web

from codexlb import log, recovery
from codexlb.bridge.anchor import Anchor, digest
from codexlb.bridge.sessions import MAX_FAILURES, MAX_QUEUED, Inbox, Session, Sessions
from codexlb.errors import APIError
from codexlb.keys import API_KEY
from codexlb.recovery import Action, Phase
from codexlb.relay import CODEX_KEEPALIVE, SSE_HEADERS, KeepAlive, failed_event
from codexlb.transcript import SEALED_REFUSED
from codexlb.upstream.failover import client_error, next_step, refusal
from codexlb.upstream.sse import encode
from codexlb.upstream.state import Outcome, Upstream, observe
from codexlb.upstream.websocket import MUST_READ, frame_type

__all__ = ["SESSIONS", "Sessions", "relay", "session_key"]
SESSIONS = web.AppKey("bridge_sessions", Sessions)
_log = log.get("codexlb.bridge.http")
# Fields of an HTTP body that a WebSocket `response.create` does not carry.
_HTTP_ONLY = ("stream", "background")
# The events the bridge reads (`_Turn._read`) are upstream/websocket's MUST_READ: the response's id, rate limits,
# the output kept for the anchor and the transcript, the terminal's usage or error. The rest (the deltas) pass to
# the client unparsed.
# In frames each put after a line break (none of them holding one): each frame's type, where upstream writes it.
# (Led by a literal, the pattern is searched for, not tried at every byte as `^` with MULTILINE would be.)
_TYPES = re.compile(rb'\n\{"type":"([^"\\\n]*)"')


def _framed(kinds: list[bytes], frames: list[bytes]) -> Iterator[bytes]:
    """The parts of frames' SSE frames, as `_sse_frame` makes them, made without a Python loop."""
    return chain.from_iterable(zip(repeat(b"event: "), kinds, repeat(b"\ndata: "), frames, repeat(b"\n\n")))


def _sse_frame(kind: Any, data: bytes, event: Any) -> bytes:
    """An upstream WebSocket event as an SSE frame: its JSON as upstream wrote it, unless a line break in it
    (JSON allows CR and LF between tokens) would split the frame."""
    if isinstance(kind, str) and b"\n" not in data and b"\r" not in data:
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
    return encode(event)


class _Resend(Exception):
    """Send the request again on this session (before the client's first byte); `whole`: without the
    proxy's anchor, which upstream no longer knows."""

    def __init__(self, whole: bool) -> None:
        super().__init__()
        self.whole = whole


class _Unbridged(Exception):
    """This request cannot go over the session before its first byte: take the plain HTTP way."""


def session_key(request: web.Request, keys: Sequence[str]) -> str | None:
    """A conversation worth a session: the CLI's session id or prompt cache key, per API key."""
    conversation = next((k for k in keys if k.startswith(("session:", "cache:"))), None)
    if conversation is None:
        return None
    api_key = request.get(API_KEY)
    return f"{api_key.id if api_key is not None else '-'}|{conversation}"


class _Turn:
    """One request over a session: what went up, what came back, and whether the client has bytes."""

    def __init__(self, request: web.Request, up: Upstream, session: Session, payload: dict[str, Any],
                 outcome: Outcome) -> None:
        self.request, self.up, self.session, self.outcome = request, up, session, outcome
        self.items: list[Any] = payload["input"]
        self.full = [digest(item) for item in self.items]
        self.base = {k: v for k, v in payload.items() if k not in _HTTP_ONLY}
        self.whole = False  # send without the proxy's anchor
        self.anchored = False
        self.anchored_size = 0  # bytes of the anchored form, while it is the one sent
        self.response: web.StreamResponse | None = None
        self.output: list[Any] = []
        self.sent_at = time.monotonic()
        self.resends = 0
        self.finished = False  # the terminal event went to the client
        self.recovery: str | None = None  # why the next send is made again (the ledger's kind)
        self.sent_items = 0  # items in the last frame made

    def frame(self) -> str:
        anchor = self.session.anchor
        covered = None if self.whole or anchor is None else anchor.delta(self.full)
        self.anchored = covered is not None
        body = dict(self.base)
        items = self.items
        if covered is not None and anchor is not None:
            body["previous_response_id"] = anchor.response_id
            items = body["input"] = self.items[covered:]
        # New items too may hold reasoning another account sealed: a turn that went the plain way elsewhere.
        readable = self.up.owners.readable_by(items, self.session.account.id)
        if readable is not None:
            body["input"] = readable
        text = orjson.dumps({"type": "response.create", **body}).decode()
        self.sent_items = len(body["input"])
        if self.anchored:
            self.anchored_size = len(text)
        elif self.anchored_size:  # the anchor was lost upstream: what sending it whole costs
            added = len(text) - self.anchored_size
            _log.info("bridge anchor lost upstream; sent whole", account=self.session.account.alias,
                      items=len(body["input"]), added_bytes=added)
            self.up.recoveries["http:resend_whole_bytes"] += added
            self.anchored_size = 0
        return text

    async def commit(self) -> web.StreamResponse:
        if self.response is None:
            self.response = web.StreamResponse(headers=SSE_HEADERS)
            await self.response.prepare(self.request)
        return self.response

    async def run(self) -> web.StreamResponse:
        beats = KeepAlive(self.up.settings.keepalive_s, self.commit, CODEX_KEEPALIVE)
        try:
            while True:
                try:
                    return await self._once(beats)
                except _Resend as again:
                    self.whole = self.whole or again.whole
        finally:
            await beats.stop()

    async def _once(self, beats: KeepAlive) -> web.StreamResponse:
        session = self.session
        if session.sock is None:
            await self._lost()
            if self.recovery is None:  # lost between requests: the reconnect itself sends nothing
                self.outcome.recovered("reconnect")
        inbox = session.begin()
        assert session.sock is not None
        text = self.frame()
        self.outcome.sent(session.account.id, len(text), self.sent_items, self.recovery)
        self.recovery = None
        try:
            await session.sock.ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError):
            # Closed under us since the look: the same as losing it now.
            session.drop_socket()
            return await self._recover(Phase.AFTER_BYTES if self.response is not None else Phase.BEFORE_BYTES)
        return await self._relay(inbox, beats)

    async def _relay(self, inbox: Inbox, beats: KeepAlive) -> web.StreamResponse:
        settings = self.up.settings
        response: web.StreamResponse | None = None
        seen = False
        while True:
            frames = await inbox.take(settings.upstream_idle_timeout_s if seen else
                                      settings.upstream_first_event_timeout_s)
            if not frames:  # the socket went, or upstream was silent past the wait
                self.session.drop_socket()
                return await self._recover(Phase.AFTER_BYTES if self.response is not None else Phase.BEFORE_BYTES)
            # What upstream sent meanwhile goes to the client in one write.
            out: list[bytes] = []
            terminal = False
            if not seen:
                seen = True
                frame, terminal = self._read(frames[0], first=True)
                out.append(frame)
                frames = frames[1:]
            if terminal or self._batch(frames, out):
                self.finished = True
                response = response or await beats.stop() or await self.commit()
                await response.write_eof(b"".join(out))
                return response
            response = response or await beats.stop() or await self.commit()
            await response.write(b"".join(out))

    def _batch(self, frames: list[bytes], out: list[bytes]) -> bool:
        """Frames as SSE onto `out`; True when one ended the response (those after it are left). Those the bridge
        does not read are framed in one pass over the batch, in C (a Python loop costed each frame more than
        relaying it); a batch of one or two (a paced stream's), or one with a frame not written type first or
        with a line break, is taken one by one."""
        if len(frames) < 3:
            return self._each(frames, out)
        joined = b"\n".join([b"", *frames])
        kinds = _TYPES.findall(joined)
        if len(kinds) != len(frames) or joined.count(b"\n") != len(frames) or b"\r" in joined:
            return self._each(frames, out)
        start = 0
        for i in () if MUST_READ.isdisjoint(kinds) else [i for i, kind in enumerate(kinds) if kind in MUST_READ]:
            out += _framed(kinds[start:i], frames[start:i])
            frame, terminal = self._read(frames[i], first=False)
            out.append(frame)
            if terminal:
                return True
            start = i + 1
        out += _framed(kinds[start:], frames[start:])
        return False

    def _each(self, frames: list[bytes], out: list[bytes]) -> bool:
        """`_batch`, a frame at a time."""
        for data in frames:
            kind = frame_type(data)
            if kind is not None and kind not in MUST_READ and b"\n" not in data and b"\r" not in data:
                out += (b"event: ", kind, b"\ndata: ", data, b"\n\n")  # as `_sse_frame` would make it
                continue
            frame, terminal = self._read(data, first=False)
            out.append(frame)
            if terminal:
                return True
        return False

    def _read(self, data: bytes, first: bool) -> tuple[bytes, bool]:
        """A frame read whole: what it tells the pool, the accounting and the anchor; its SSE frame, and
        whether it ends the response."""
        event = orjson.loads(data)
        kind = event.get("type") if isinstance(event, dict) else None
        if first:
            if kind in ("error", "response.failed") and self.response is None:
                self._refused(event)
            self.outcome.first_event_at = time.monotonic()
        if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            self.output.append(event["item"])
        terminal = isinstance(kind, str) and observe(self.up, self.session.account, self.outcome, kind, event)
        if terminal:
            if kind == "response.completed" and self.outcome.response_id:
                self.session.anchor = Anchor.after(self.outcome.response_id, self.full, self.output)
                self.session.failures = 0
            elif kind != "response.completed":
                self.outcome.status = 502
        return _sse_frame(kind, data, event), terminal

    def _refused(self, event: dict[str, Any]) -> None:
        """Upstream refused the request before anything reached the client."""
        observe(self.up, self.session.account, self.outcome, str(event.get("type")), event)  # e.g. quota
        failure = refusal(event)
        if failure.error.get("code") == "previous_response_not_found" and self.anchored:
            self.up.recoveries["http:resend_whole"] += 1
            self.recovery = "whole_send"
            raise _Resend(whole=True)
        if failure.code == SEALED_REFUSED and self.up.owners.refused(self.items, self.session.account.id):
            self.up.recoveries["http:unsealed"] += 1
            raise _Resend(whole=self.whole)
        if next_step(failure, refreshed=True) == "answer":
            raise client_error(failure)
        raise _Unbridged

    async def _lost(self) -> None:
        """The session has no socket before the request goes up: reconnect (the client sees nothing)."""
        failure = await self.session.reconnect()
        if failure is not None:
            _log.info("bridge reconnect failed", account=self.session.account.alias, status=failure.status)
            raise _Unbridged

    async def _recover(self, phase: Phase) -> web.StreamResponse:
        decision = recovery.on_socket_lost(phase, self.resends, time.monotonic() - self.sent_at)
        _log.info("bridge socket lost", account=self.session.account.alias, phase=phase.value,
                  decision=decision.reason)
        self.up.recoveries[f"http:{decision.reason}"] += 1
        if decision.action is Action.RESEND:
            self.resends += 1
            self.recovery = "reconnect"
            raise _Resend(whole=False)
        self.outcome.status, self.outcome.error_code = 502, decision.code
        if self.response is None:
            raise APIError(502, "The upstream connection was lost; retry the request.",
                           code=decision.code or "upstream_unavailable", type="server_error")
        await self.response.write(encode(failed_event(self.outcome, decision.code or "stream_incomplete",
                                                      "The upstream connection was lost; retry the request.")))
        self.finished = True
        await self.response.write_eof()
        return self.response


async def relay(request: web.Request, up: Upstream, sessions: Sessions, key: str, payload: dict[str, Any],
                keys: Sequence[str], outcome: Outcome) -> web.StreamResponse | None:
    """The request over its conversation's session; None when it must take the plain HTTP way instead:
    no session to be had, its line is full or slow, or it failed before the client's first byte for a reason
    another account may not have (the request carries the whole conversation, so another account can serve it).
    Raises GateFull (429) when its account's stream slots stay full past the wait."""
    session = await sessions.get(key, request.headers, keys)
    if session is None or session.queued >= MAX_QUEUED:
        return None
    session.queued += 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + up.settings.queue_wait_s  # one bound for the line and the account's slot together
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await session.lock.acquire()
        except TimeoutError:
            return None
        try:
            return await _in_session(request, up, sessions, session, payload, outcome, max(0.0, deadline - loop.time()))
        finally:
            session.lock.release()
    finally:
        session.queued -= 1
        if session.lost and not session.busy:
            await sessions.retire(session)


async def _in_session(request: web.Request, up: Upstream, sessions: Sessions, session: Session,
                      payload: dict[str, Any], outcome: Outcome, wait_s: float) -> web.StreamResponse | None:
    # The conversation waits for its account's slot, as the pool has any placed conversation wait: on another
    # account the reasoning its own sealed cannot be read, and its prompt cache is cold.
    gate = up.gates.account(session.account)
    slot = gate.try_acquire() or await gate.acquire(wait_s)
    outcome.account = session.account
    turn = _Turn(request, up, session, payload, outcome)
    try:
        return await turn.run()
    except _Unbridged:
        outcome.tried.add(session.account.id)
        await _failed(sessions, session, retire=session.sock is None or not session.account.usable(time.time()))
        return None
    except APIError as exc:
        if exc.status >= 500:
            await _failed(sessions, session)
        raise
    finally:
        slot.release()
        session.end()
        if not turn.finished:
            # Whatever upstream still sends for this request would reach the next one: start afresh.
            session.drop_socket()


async def _failed(sessions: Sessions, session: Session, retire: bool = False) -> None:
    """A session whose requests keep failing is retired: the next request starts a fresh one, so a
    conversation never loops on a broken session."""
    session.failures += 1
    if retire or session.failures >= MAX_FAILURES:
        _log.info("bridge session retired", account=session.account.alias, failures=session.failures)
        await sessions.retire(session)

"""A client's Responses WebSocket relayed to an upstream one (the route: `codexlb.handlers.websocket`).

Upstream's frames go to the client as they come. A client's frame is checked first (`check_frame`) and
goes up as checked; a malformed one is answered here with an `error` event, as upstream answers one,
and the session stays open for the next. The handshake is admitted (key and
in-flight gates) and the upstream socket opened before the client's upgrade is answered, so a
refusal is a real HTTP status. One account serves the socket and holds a stream slot for it; only a
request without an anchor that upstream refuses (429, 5xx) before the client saw anything moves it
to another account. A lost upstream socket is recovered as `codexlb.recovery` decides: invisibly
between requests and before the client has a byte of the response, with one `response.failed` after.

At an upgrade the client socket can go on in the new process (`codexlb.server.conn_handover`): `at_rest` says
when nothing of it is under way here, and what the new process needs (`Resumed`); the new process's Bridge starts
as one whose upstream socket was lost between requests, on the same account and turn state, with the transcript
of the conversation so far, so the client's next anchored request is answered as if nothing happened.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from codexlb import log, recovery
from codexlb.account import Account
from codexlb.accounting import account_usage
from codexlb.admission.gate import Slot
from codexlb.errors import APIError
from codexlb.idle_timeout import IdleTimeout
from codexlb.key_limits.enforce import LIMITS_KEY
from codexlb.keys import API_KEY
from codexlb.pool.sticky import MAX_KEY_VALUE, conversation_of, turn_of
from codexlb.recovery import Action, Phase
from codexlb.relay import failed_event
from codexlb.request_checks import check_frame
from codexlb.store import Store
from codexlb.transcript import SEALED_REFUSED, without_account_items
from codexlb.upstream.failover import next_step, refusal
from codexlb.upstream.state import Outcome, Upstream, observe
from codexlb.upstream.websocket import MUST_READ, UpstreamSocket, frame_type, open_socket, reconnect

_log = log.get("codexlb.bridge.ws")
_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


@dataclass(slots=True)
class _InFlight:
    """The client's `response.create` whose response is under way: kept whole, to be sent again."""

    text: str  # what goes upstream: the client's frame, or its rebuilt whole form
    payload: dict[str, Any]  # the client's frame, parsed
    outcome: Outcome
    sent_at: float = field(default_factory=time.monotonic)
    seen: bool = False  # the client has received an event of this response
    resends: int = 0
    rebuilt: bool = False  # `text` is the whole conversation, no longer anchored
    unsealed: bool = False  # sent again without reasoning upstream could not open (once)
    n_items: int = 0  # the items in `text`
    tried: set[str] = field(default_factory=set)  # accounts that refused it (failover)
    output: list[Any] = field(default_factory=list)  # output items, for the transcript
    history: list[Any] | None = None  # the anchor's whole history, once a refusal asked the transcript

    @property
    def previous(self) -> str | None:
        return self.payload.get("previous_response_id")  # checked: a well-formed id or None

    @property
    def anchored(self) -> bool:
        return self.previous is not None and not self.rebuilt

    @property
    def items(self) -> list[Any]:
        return self.payload["input"]


@dataclass(slots=True)
class Resumed:
    """A client socket handed over at an upgrade: where its conversation lives upstream, and its transcript."""

    account_id: str
    turn_state: str | None
    last_response: str | None  # the response the client anchors its next request on
    history: list[Any] | None  # the whole conversation up to it, should upstream have lost it

    def to_json(self) -> dict[str, Any]:
        return {"account_id": self.account_id, "turn_state": self.turn_state, "last_response": self.last_response,
                "history": self.history}


class Bridge:
    def __init__(self, up: Upstream, store: Store, request: web.Request, client: web.WebSocketResponse,
                 sock: UpstreamSocket | None, slot: Slot, keys: Sequence[str], *,
                 resumed: tuple[Account, Resumed] | None = None) -> None:
        """`sock`: the upstream socket; None for a client socket handed over (`resumed`: its account and state),
        whose upstream socket is opened again before its next request."""
        self._up, self._store, self._request, self._client, self._keys = up, store, request, client, keys
        # The transcript's conversation: the client's session, else this socket alone.
        self._conversation = keys[0] if keys else f"socket:{id(self)}"
        self._session = conversation_of(list(keys))  # the ledger's: the session id, else each frame's cache key
        self._sock: UpstreamSocket | None = sock
        self._ready = asyncio.Event()  # set while there is an upstream socket to read
        self._last_response: str | None = None
        if sock is not None:
            self._account, self._turn_state = sock.account, sock.turn_state
            self._ready.set()
        else:
            assert resumed is not None
            self._account, state = resumed
            self._turn_state, self._last_response = state.turn_state, state.last_response
            if state.last_response is not None and state.history is not None:
                up.transcripts.record(self._conversation, state.last_response, None, state.history, [])
        self._slot = slot
        self._inflight: _InFlight | None = None
        self._lock = asyncio.Lock()  # one reconnect at a time; sends wait for it
        self._receiving = False  # waiting for the client's next frame, with nothing of this one left to do

    async def run(self) -> None:
        """Relay until the client leaves; the upstream socket and the account slot are given back however it ends."""
        pump = asyncio.create_task(self._pump())
        try:
            while True:
                self._receiving = True
                try:
                    message = await self._client.receive()
                finally:
                    self._receiving = False
                if message.type is WSMsgType.TEXT:
                    await self._from_client(message.data)
                elif message.type is WSMsgType.BINARY:
                    await self._refuse(APIError(400, "Only text frames with JSON are accepted.",
                                                code="invalid_value"), len(message.data))
                elif message.type in _CLOSED:
                    break
        finally:
            # Everything that must happen is done before the first await: a client that drops its TCP
            # connection cancels this handler again, and a second cancellation cuts a finally short.
            # The pump closes the upstream socket itself; `wait` (unlike `await pump`) lets it finish
            # that even if this handler is cancelled meanwhile.
            pump.cancel()
            self._slot.release()
            if self._inflight is not None:
                self._finish(499, "client_closed")
            await asyncio.wait([pump])

    def at_rest(self) -> Resumed | None:
        """What the new process needs to go on with this client socket, if nothing of it is under way here: no
        request in flight, no upstream reconnect, the read loop waiting for the client's next frame (whether a byte
        of it was read is the client socket's to say: `handlers.websocket.ClientSocket.at_rest`)."""
        if self._inflight is not None or self._lock.locked() or not self._receiving:
            return None
        last = self._last_response
        return Resumed(self._account.id, self._turn_state, last,
                       self._up.transcripts.history(last) if last is not None else None)

    async def _from_client(self, client_text: str) -> None:
        request = self._request
        try:
            payload = check_frame(client_text)
            await request.app[LIMITS_KEY].admit(request.get(API_KEY), payload["model"], request.path)
        except APIError as exc:
            await self._refuse(exc, len(client_text))
            return
        readable = self._up.owners.readable_by(payload["input"], self._account.id)
        if readable is not None:
            # A conversation that moved here still echoes reasoning its old account sealed.
            payload = {**payload, "input": readable}
        # What goes up is what was checked: one JSON text, whatever duplicate keys or spacing the client's had.
        text = orjson.dumps(payload).decode()
        self._inflight = inflight = _InFlight(text, payload, self._outcome(payload, len(client_text)),
                                              n_items=len(payload["input"]))
        async with self._lock:
            if self._sock is None:
                if not await self._reconnect("between requests"):
                    await self._fail("upstream_unavailable", "Upstream could not be reached again; retry.")
                    return
                inflight.outcome.recovered("reconnect")
            sock = self._sock
        assert sock is not None
        inflight.outcome.sent(self._account.id, len(text), inflight.n_items)
        try:
            await sock.ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError):
            pass  # the socket is broken: the pump sees it end and recovers with the request held

    def _outcome(self, payload: dict[str, Any], client_bytes: int) -> Outcome:
        """A response's ledger entry. Had the client sent its whole history instead of anchoring, the request
        would also hold the history its anchor stands for (the transcript knows its size)."""
        previous = payload.get("previous_response_id")
        history = 0 if previous is None else self._up.transcripts.history_bytes(previous)
        conversation = self._session
        if conversation is None and isinstance(payload.get("prompt_cache_key"), str):
            conversation = payload["prompt_cache_key"].strip()[:MAX_KEY_VALUE] or None
        return Outcome(account=self._account, model=payload["model"], transport="ws", conversation=conversation,
                       turn_id=turn_of(payload), client_bytes=client_bytes, client_items=len(payload["input"]),
                       unanchored_bytes=None if history is None else client_bytes + history)

    async def _pump(self) -> None:
        """Read whichever upstream socket is current; when one ends, recover. The upstream socket is
        closed here, by the only task that reads it (a close while another task reads waits for it)."""
        try:
            while not self._client.closed:
                await self._ready.wait()
                sock = self._sock
                if sock is None:
                    self._ready.clear()
                    continue
                await self._relay(sock)
                if self._sock is sock or self._sock is None:
                    await self._lost(sock)
        except (ConnectionError, aiohttp.ClientError) as exc:
            # The client is gone: the handler's read loop ends on its own.
            _log.info("client socket broke", error=type(exc).__name__)
        finally:
            sock, self._sock = self._sock, None
            if sock is not None:
                await sock.ws.close()

    async def _relay(self, sock: UpstreamSocket) -> None:
        """Relay one upstream socket until it ends. Its silence is bounded while a response is under way (one
        timer for the socket, not one per frame), and not between responses."""
        ws = sock.ws
        try:
            async with IdleTimeout(self._up.settings.upstream_idle_timeout_s) as silence:
                while True:
                    if self._inflight is not None:
                        silence.waiting()
                    message = await ws.receive()
                    silence.heard()
                    if message.type is WSMsgType.TEXT:
                        if not await self._from_upstream(message.data):
                            await ws.close()
                            await self._fail_over()
                            return
                    elif message.type is WSMsgType.BINARY:
                        await self._client.send_bytes(message.data)
                    elif message.type in _CLOSED:
                        return
        except TimeoutError:
            await ws.close()

    async def _from_upstream(self, frame: bytes) -> bool:
        """Relay one upstream frame (its text's bytes, passed on as they came); False when, instead, the
        request should move to another account."""
        inflight = self._inflight
        kind = frame_type(frame)
        if inflight is None or (kind is not None and kind not in MUST_READ and inflight.seen):
            await self._client.send_frame(frame, WSMsgType.TEXT)  # a delta: nothing in it to read
            return True
        try:
            data: Any = orjson.loads(frame)
        except orjson.JSONDecodeError:
            data = None
        kind = data.get("type") if isinstance(data, dict) else None
        if not inflight.seen:
            if kind in ("error", "response.failed"):
                if self._unsealed(inflight, data):
                    await self._send(inflight, None)
                    return True
                action = self._refused(inflight, data)
                if action is Action.REBUILD:
                    self._rebuild(inflight, portable=False)
                    await self._send(inflight, "rebuild")
                    return True
                if action is Action.MOVE:
                    return False
            inflight.seen = True
            inflight.outcome.first_event_at = time.monotonic()
        await self._client.send_frame(frame, WSMsgType.TEXT)
        if kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            inflight.output.append(data["item"])
        if isinstance(kind, str) and observe(self._up, self._account, inflight.outcome, kind, data):
            if kind == "response.completed" and inflight.outcome.response_id:
                self._last_response = inflight.outcome.response_id
                self._up.transcripts.record(self._conversation, inflight.outcome.response_id, inflight.previous,
                                            inflight.items, inflight.output)
            status = 200 if kind == "response.completed" else int(data.get("status") or 502)
            self._finish(status, inflight.outcome.error_code)
        return True

    def _unsealed(self, inflight: _InFlight, event: dict[str, Any]) -> bool:
        """Upstream could not open reasoning another account sealed, one this process has no record of (the
        conversation came from another process, or the shared sticky map could not be read): the request is made
        once more, here, without it. True when it was."""
        if inflight.unsealed or refusal(event).code != SEALED_REFUSED:
            return False
        body = orjson.loads(inflight.text)
        items = body["input"]
        if not self._up.owners.refused(items, self._account.id):
            return False
        readable = self._up.owners.readable_by(items, self._account.id) or []
        self._up.recoveries["ws:unsealed"] += 1
        inflight.text, inflight.n_items, inflight.unsealed = orjson.dumps({**body, "input": readable}).decode(), \
            len(readable), True
        return True

    def _refused(self, inflight: _InFlight, event: dict[str, Any]) -> Action:
        """What to do about a refusal the client has not seen (`recovery.on_refusal`)."""
        observe(self._up, self._account, inflight.outcome, str(event.get("type")), event)  # e.g. quota
        failure = refusal(event)
        previous = inflight.previous
        # Looked up once: the rebuild, if it comes to that, uses this very history.
        inflight.history = self._up.transcripts.history(previous) if previous is not None else None
        decision = recovery.on_refusal(
            lost_state=failure.error.get("code") == "previous_response_not_found",
            account_failed=next_step(failure, refreshed=True) == "next",
            anchored=inflight.anchored,
            history_known=inflight.history is not None,
            rebuilt=inflight.rebuilt,
            accounts_left=len(inflight.tried) + 1 < self._up.settings.failover_accounts)
        if decision.action is not Action.PASS:
            self._up.recoveries[f"ws:{decision.reason}"] += 1
        return decision.action

    def _rebuild(self, inflight: _InFlight, *, portable: bool) -> None:
        """Make the request in flight its whole history and no anchor; `portable`: for another account."""
        previous = inflight.previous
        assert previous is not None
        items = [*(inflight.history or []), *inflight.items]
        if portable:
            items = without_account_items(items)
        elif (readable := self._up.owners.readable_by(items, self._account.id)) is not None:
            items = readable
        body = {k: v for k, v in inflight.payload.items() if k != "previous_response_id"}
        text = orjson.dumps({**body, "input": items}).decode()
        inflight.n_items = len(items)
        added = len(text) - len(inflight.text)
        self._up.recoveries["ws:rebuild_bytes"] += added
        _log.info("request rebuilt from the transcript", account=self._account.alias, anchor=previous,
                  items=len(items), added_bytes=added, portable=portable)
        inflight.text, inflight.rebuilt = text, True

    async def _send(self, inflight: _InFlight, recovery: str | None) -> None:
        """Send the request in flight as it now stands (`recovery`: why again, for the ledger)."""
        sock = self._sock
        if sock is None:
            return  # lost meanwhile: the pump's recovery resends the request as it now stands
        inflight.outcome.sent(self._account.id, len(inflight.text), inflight.n_items, recovery)
        try:
            await sock.ws.send_str(inflight.text)
        except (aiohttp.ClientError, ConnectionError):
            pass  # read next, that socket ends too and recovery takes over

    async def _fail_over(self) -> None:
        """Move the socket, and the request in flight, to another account."""
        inflight = self._inflight
        assert inflight is not None
        async with self._lock:
            inflight.tried.add(self._account.id)
            self._sock = None
            try:
                sock, slot = await open_socket(self._up, self._request.headers, self._keys,
                                               Outcome(tried=set(inflight.tried)))
            except APIError as exc:
                await self._fail(exc.code or "upstream_unavailable", exc.message)
                return
            _log.info("request moved to another account", source=self._account.alias, target=sock.account.alias)
            self._slot.release()
            self._slot, self._account, self._turn_state = slot, sock.account, sock.turn_state
            inflight.outcome.account = sock.account
            self._sock = sock
            self._ready.set()
            # A request with an anchor moves with its whole history, less what only the old account can read.
            if inflight.previous:
                self._rebuild(inflight, portable=True)
            await self._send(inflight, None)  # to another account: the ledger counts a move

    async def _lost(self, sock: UpstreamSocket) -> None:
        async with self._lock:
            if self._sock is sock:
                self._sock = None
                self._ready.clear()
            while True:
                inflight = self._inflight
                phase = (Phase.IDLE if inflight is None else Phase.AFTER_BYTES if inflight.seen
                         else Phase.BEFORE_BYTES)
                decision = recovery.on_socket_lost(
                    phase, inflight.resends if inflight else 0,
                    time.monotonic() - inflight.sent_at if inflight else 0.0)
                _log.info("upstream socket lost", account=self._account.alias, phase=phase.value,
                          decision=decision.reason)
                self._up.recoveries[f"ws:{decision.reason}"] += 1
                if decision.action is Action.RECONNECT:
                    return  # the next request reconnects
                if decision.action is Action.FAIL:
                    await self._fail(decision.code or "upstream_unavailable",
                                     "The upstream connection was lost; retry the request.")
                    return
                assert inflight is not None
                inflight.resends += 1
                if await self._reconnect("request in flight") and self._sock is not None:
                    await self._send(inflight, "reconnect")  # if it fails, that socket ends too and comes back here
                    return

    async def _reconnect(self, why: str) -> bool:
        """A new upstream socket on the same account and turn state (the backend holding the conversation)."""
        result = await reconnect(self._up, self._account, self._request.headers, self._turn_state)
        if not isinstance(result, UpstreamSocket):
            _log.info("upstream reconnect failed", account=self._account.alias, why=why, status=result.status,
                      reason=result.reason)
            return False
        self._sock = result
        self._turn_state = result.turn_state or self._turn_state
        self._ready.set()
        _log.info("upstream reconnected", account=self._account.alias, why=why)
        return True

    async def _refuse(self, exc: APIError, client_bytes: int) -> None:
        """A frame upstream would refuse too, answered here as upstream answers it: one `error` event. The
        session stays open; nothing went upstream."""
        try:
            # A wait goes in the frame's `headers`, where the Codex CLI reads it on a socket.
            headers = {k.lower(): v for k, v in exc.headers.items() if k.lower() == "retry-after"}
            await self._client.send_str(orjson.dumps({"type": "error", "status": exc.status, **exc.body(),
                                                      **({"headers": headers} if headers else {})}).decode())
        except (aiohttp.ClientError, ConnectionError):
            pass  # the client is gone: the read loop ends on its own
        outcome = Outcome(account=None, status=exc.status, error_code=exc.code, transport="ws",
                          conversation=self._session, client_bytes=client_bytes)
        account_usage(self._store, self._request, outcome, time.monotonic())

    async def _fail(self, code: str, message: str) -> None:
        inflight = self._inflight
        assert inflight is not None
        await self._client.send_str(orjson.dumps(failed_event(inflight.outcome, code, message)).decode())
        inflight.outcome.error_code = code
        self._finish(502, code)

    def _finish(self, status: int, code: str | None) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        inflight.outcome.status, inflight.outcome.error_code = status, code
        account_usage(self._store, self._request, inflight.outcome, inflight.sent_at)

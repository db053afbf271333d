"""The HTTP bridge's sessions: one long-lived upstream WebSocket per conversation (and API key), with
one reader task, made once however many requests ask at the same time, and let go when idle too long,
when there are too many (least recently used first), or when another replica took the conversation over
(`ownership`)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Coroutine, Mapping, Sequence, TypeVar

import aiohttp
from aiohttp import WSMsgType

from codexlb import log
from codexlb.account import Account
from codexlb.admission.gate import GateFull
from codexlb.bridge.anchor import Anchor
from codexlb.bridge.ownership import Ownership
from codexlb.singleflight import SingleFlight
from codexlb.upstream.failover import Failure
from codexlb.upstream.state import Outcome, Upstream
from codexlb.upstream.websocket import UpstreamSocket, open_socket, reconnect

_log = log.get("codexlb.bridge.sessions")
T = TypeVar("T")
# Requests of one conversation waiting for its socket; more go the plain HTTP way.
MAX_QUEUED = 4
# A session whose requests keep failing is retired; the next request starts a fresh one.
MAX_FAILURES = 3
# How often the sessions are checked against the conversations' owners; those in use are checked together
# after `USED_CHECK_S`, in one query (one per request would cost each bridged request a round trip of CPU).
OWNER_SWEEP_S = 5.0
USED_CHECK_S = 0.1
# Request headers a reconnect presents again (the rest belonged to the request that made the session).
_KEPT = ("session_id", "session-id", "thread-id", "originator", "user-agent", "version", "openai-beta",
         "x-codex-window-id", "x-codex-beta-features", "x-codex-installation-id")


class Inbox:
    """What upstream sends for the request in flight, taken in batches: every frame that came since the last
    take, so frames read off the socket in one go reach the client in one write, for one wake-up of the
    request (a queue would cost each frame its own put and get)."""

    __slots__ = ("_frames", "_waiter", "_deadline", "_timer", "lost")

    def __init__(self) -> None:
        self._frames: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        # One timer for the request's waits, moved on only when it fires (paced streams wait once per event:
        # a timer made and cancelled per wait was a tenth of their cost).
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.lost = False  # the socket ended under the request

    def put(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._wake()

    def lose(self) -> None:
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self, armed: float) -> None:
        self._timer = None
        if self._waiter is None:
            return  # between waits: the next one sets the timer again
        if self._deadline > armed:  # a frame came since it was set: the wait now ends later
            self._timer = asyncio.get_running_loop().call_at(self._deadline, self._expire, self._deadline)
        else:
            self._wake()

    async def take(self, timeout_s: float) -> list[bytes]:
        """The frames that came since the last take, waiting up to `timeout_s` for one; empty when the socket
        was lost or the wait ran out."""
        if not self._frames and not self.lost:
            loop = asyncio.get_running_loop()
            self._deadline = deadline = loop.time() + timeout_s
            if self._timer is None or self._timer.when() > deadline:
                self.close()
                self._timer = loop.call_at(deadline, self._expire, deadline)
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        frames, self._frames = self._frames, []
        return frames

    def close(self) -> None:
        """The request is done with it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Session:
    """One conversation's upstream socket on one account, and the response it may anchor on."""

    def __init__(self, up: Upstream, key: str, sock: UpstreamSocket, headers: Mapping[str, str]) -> None:
        self.up, self.key = up, key
        self.account: Account = sock.account
        self.turn_state = sock.turn_state
        self.headers = {name: value for name, value in headers.items() if name.lower() in _KEPT}
        self.sock: UpstreamSocket | None = None
        self.anchor: Anchor | None = None
        self.lock = asyncio.Lock()
        self.queued = 0
        self.failures = 0
        self.retired = False
        self.epoch: int | None = None  # the ownership it holds (`ownership`), once claimed
        self.lost = False  # another replica took the conversation over: retired once no request uses it
        self.last_used = time.monotonic()
        self._inbox: Inbox | None = None
        self._reader: asyncio.Task[None] | None = None
        self._attach(sock)

    @property
    def busy(self) -> bool:
        return self.queued > 0

    def _attach(self, sock: UpstreamSocket) -> None:
        self.sock = sock
        self.turn_state = sock.turn_state or self.turn_state
        self._reader = asyncio.create_task(self._read(sock), name="codexlb-bridge-reader")

    async def reconnect(self) -> Failure | None:
        """A new socket on the same account and turn state, where the conversation's state lives."""
        result = await reconnect(self.up, self.account, self.headers, self.turn_state)
        if isinstance(result, Failure):
            return result
        self._attach(result)
        return None

    def begin(self) -> Inbox:
        """The inbox of the request about to be sent: every upstream frame until it ends, and whether the
        socket went."""
        if self._inbox is not None:  # a request sent again
            self._inbox.close()
        self._inbox = Inbox()
        if self.sock is None:
            self._inbox.lose()
        return self._inbox

    def end(self) -> None:
        if self._inbox is not None:
            self._inbox.close()
        self._inbox = None
        self.last_used = time.monotonic()

    def drop_socket(self) -> None:
        """Give up on the current socket (it stalled): its reader closes it."""
        self.sock = None
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self, sock: UpstreamSocket) -> None:
        """The only reader of the socket, so it is also the one that closes it."""
        try:
            async for message in sock.ws:
                if message.type is WSMsgType.TEXT and self._inbox is not None:
                    self._inbox.put(message.data)
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            # A socket already replaced (dropped, reconnected) has nothing more to say to anyone.
            if self.sock is sock:
                self.sock = None
                if self._inbox is not None:
                    self._inbox.lose()
            await sock.ws.close()

    async def close(self) -> None:
        self.retired = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])


class Sessions:
    def __init__(self, up: Upstream, max_sessions: int, idle_ttl_s: float,
                 ownership: Ownership | None = None) -> None:
        self._up = up
        self._ownership = ownership
        self._used: dict[str, Session] = {}  # sessions used since the last check of those in use
        self._checks: set[asyncio.Future[Any]] = set()  # owner checks and claims under way
        self._max = max_sessions
        self._ttl = idle_ttl_s
        self._by_key: OrderedDict[str, Session] = OrderedDict()
        self._making: SingleFlight[Session] = SingleFlight()

    def __len__(self) -> int:
        return len(self._by_key)

    async def get(self, key: str, headers: Mapping[str, str], keys: Sequence[str]) -> Session | None:
        """The conversation's session, made if need be; None when none can be had (the caller goes the
        plain HTTP way). Raises GateFull when no stream slot came free for it within the admission wait."""
        session = self._by_key.get(key)
        if session is not None and not session.retired:
            self._by_key.move_to_end(key)
            self._check_soon(session)
            return session
        await self._let_go()
        if len(self._by_key) >= self._max:
            return None
        return await self._making.do(key, lambda: self._make(key, headers, keys))

    async def _make(self, key: str, headers: Mapping[str, str], keys: Sequence[str]) -> Session | None:
        # Claimed while the socket opens, and never waited for: the request goes on whatever the database does.
        claim = self._track(self._ownership.claim(key)) if self._ownership is not None else None
        try:
            sock, slot = await open_socket(self._up, headers, keys, Outcome())
        except GateFull:
            if claim is not None:
                claim.cancel()
            # The wait for a stream slot is spent: the plain HTTP way would wait for the same slots again, and the
            # request would be held twice its bound.
            raise
        except Exception as exc:  # noqa: BLE001 - any failure just means: no bridge for this request
            if claim is not None:
                claim.cancel()  # no socket here: the conversation stays with whoever holds one
            # Say why: an APIError's code and message (e.g. no_accounts), or the exception's own text.
            _log.info("bridge session not made", error=type(exc).__name__, code=getattr(exc, "code", None),
                      reason=str(exc)[:200])
            return None
        slot.release()  # a session holds no stream slot while idle; each request takes one
        session = self._by_key[key] = Session(self._up, key, sock, headers)
        if claim is not None:
            claim.add_done_callback(lambda done: self._claimed(session, done))
        _log.info("bridge session made", account=sock.account.alias, sessions=len(self._by_key))
        return session

    @staticmethod
    def _claimed(session: Session, claim: asyncio.Future[int | None]) -> None:
        if not claim.cancelled():
            session.epoch = claim.result()

    def _check_soon(self, session: Session, after_s: float = USED_CHECK_S) -> None:
        """Whether the session still owns its conversation, found out beside the request that uses it."""
        if self._ownership is None or session.epoch is None:
            return
        if not self._used:
            asyncio.get_running_loop().call_later(after_s, self._check_used)
        self._used[session.key] = session

    def _check_used(self) -> None:
        used, self._used = list(self._used.values()), {}
        self._track(self.check_owners(used))

    def _track(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(work, name="codexlb-bridge-ownership")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        return task

    def on_owner_changed(self, conversation: str) -> None:
        """Another replica claimed this conversation (the change feed says so): check the session now, in one
        query with whatever else the feed said in the same breath."""
        session = self._by_key.get(conversation)
        if session is not None:
            self._check_soon(session, after_s=0)

    async def check_owners(self, sessions: Sequence[Session] | None = None) -> int:
        """Retire the sessions (all, by default) whose conversation another replica has claimed since, in one
        query; a session a request is using goes when that request is done. Returns how many were lost."""
        if self._ownership is None:
            return 0
        held = list(self._by_key.values() if sessions is None else sessions)
        claims = [(s.key, s.epoch) for s in held if s.epoch is not None]
        lost = await self._ownership.lost(claims) if claims else None
        doomed = [s for s in held if lost and s.key in lost]
        for session in doomed:
            _log.info("bridge conversation taken over by another replica; socket closed",
                      account=session.account.alias, busy=session.busy)
            session.lost = True
            if not session.busy:
                await self.retire(session)
        return len(doomed)

    async def retire(self, session: Session) -> None:
        if self._by_key.get(session.key) is session:
            del self._by_key[session.key]
        await session.close()

    async def _let_go(self) -> None:
        """Idle sessions past their time, then, while full, the least recently used idle ones."""
        now = time.monotonic()
        doomed: list[Session] = []
        for session in self._by_key.values():  # least recently used first
            if session.busy:
                continue
            if now - session.last_used <= self._ttl and len(self._by_key) - len(doomed) < self._max:
                break  # the rest were used more recently still
            doomed.append(session)
        for session in doomed:
            await self.retire(session)

    async def sweep(self) -> None:
        """Let idle sessions go on time even when no new conversation comes to trigger it, and those that
        lost their conversation to another replica."""
        every = min(60.0, self._ttl, OWNER_SWEEP_S if self._ownership is not None else 60.0)
        while True:
            await asyncio.sleep(every)
            await self._let_go()
            await self.check_owners()

    async def close(self) -> None:
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
        for session in list(self._by_key.values()):
            await self.retire(session)

"""Opening a Responses stream upstream over HTTP: one call on one account, failed over (`failover`) until
the first event.

The client's first byte is written only after `open_stream` returns, so every failure in here can
still move to another account. What the stream says on its way (response ids, rate limits, usage,
the terminal event) is observed as it goes (`state.observe`), for stickiness and the pool's bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

import aiohttp
import orjson

from codexlb import log
from codexlb.account import Account
from codexlb.admission.gate import Slot
from codexlb.errors import APIError
from codexlb.idle_timeout import IdleTimeout
from codexlb.pool.quota import verdict_for_error, windows_from_headers
from codexlb.recovery import Action
from codexlb.transcript import SEALED_REFUSED
from codexlb.upstream.failover import Failure, event_error, fail_over
from codexlb.upstream.headers import upstream_request_headers
from codexlb.upstream.session import account_headers
from codexlb.upstream.sse import Batch, Frame, FrameSplitter, event_names
from codexlb.upstream.state import TERMINAL, Outcome, Upstream, observe

_log = log.get("codexlb.proxy")
_RATE_LIMITS = event_names("codex.rate_limits")
_ERROR_BODY_LIMIT = 64 * 1024
# Waiting for the end of a body whose terminal event is in: a bound, then the connection is closed instead.
_DRAIN_S, _DRAIN_BYTES = 1.0, 64 * 1024


class StreamBroken(Exception):
    """The upstream stream ended or stalled after the client got its first byte."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Stream:
    """An upstream response whose first frames arrived. Iterate `batches()`, then `close()`."""

    upstream: Upstream
    account: Account
    response: aiohttp.ClientResponse
    splitter: FrameSplitter
    first: Batch
    outcome: Outcome
    slot: Slot
    terminal: str | None = field(default=None)

    @property
    def headers(self) -> Mapping[str, str]:
        return self.response.headers

    async def batches(self) -> AsyncIterator[Batch]:
        """The complete frames of each read, as they come; raises StreamBroken on a cut or a stall."""
        idle_s = self.upstream.settings.upstream_idle_timeout_s
        # Not kept past its relay: a stream is open for minutes, and this one is its largest frames.
        batch, self.first = self.first, Batch(b"")
        try:
            async with IdleTimeout(idle_s) as idle:
                while True:
                    if batch:
                        for frame in self._watched(batch):
                            self._observe(frame)
                        yield batch
                    if self.terminal is not None:
                        return
                    idle.waiting()
                    chunk = await self.response.content.readany()
                    idle.heard()
                    if not chunk:
                        raise StreamBroken("stream_incomplete",
                                           "Upstream closed the stream before the response finished.")
                    batch = self.splitter.feed(chunk)
        except TimeoutError:
            raise StreamBroken("upstream_timeout", f"Upstream sent nothing for {idle_s:g} s.") from None
        except aiohttp.ClientError as exc:
            raise StreamBroken("stream_incomplete", f"Upstream connection broke ({type(exc).__name__}).") from None

    def _watched(self, batch: Batch) -> Iterator[Frame]:
        """The frames worth reading, found without splitting the batch: the stream's first frame
        (response.created), rate-limit events, and the batch's last frame (where a terminal is)."""
        first = batch.first() if self.outcome.response_id is None else None
        if first is not None:
            yield first
        if b"codex.rate_limits" in batch.raw:
            yield from batch.find(_RATE_LIMITS)
        last = batch.last()
        if last is not None and last.event in TERMINAL and last.raw is not (first.raw if first else None):
            yield last

    def _observe(self, frame: Frame) -> None:
        kind = frame.event
        if kind not in TERMINAL and kind not in ("response.created", "codex.rate_limits"):
            return
        try:
            data = frame.data()
        except orjson.JSONDecodeError:
            return
        if observe(self.upstream, self.account, self.outcome, kind, data):
            self.terminal = kind

    async def close(self) -> None:
        """Give back the slot and the connection. After the terminal event the body's end (its last, empty
        chunk) may still be on its way: it is awaited briefly, since a connection released before it is
        closed instead of reused, and the next request would pay for a new (TLS) connection."""
        self.slot.release()
        try:
            if self.terminal is not None and not self.response.content.at_eof():
                await _drain(self.response)
        finally:
            self.response.release()


async def _drain(response: aiohttp.ClientResponse) -> None:
    left = _DRAIN_BYTES
    try:
        async with asyncio.timeout(_DRAIN_S):
            while left > 0 and (chunk := await response.content.readany()):
                left -= len(chunk)
    except (TimeoutError, aiohttp.ClientError):
        pass


async def _read_error(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The error object of a failed answer. Its body is read to the end (up to a bound): one read may
    hold only part of it, and a connection given back before the end is closed instead of reused."""
    raw = bytearray()
    try:
        while len(raw) < _ERROR_BODY_LIMIT and (chunk := await response.content.readany()):
            raw += chunk
        body = orjson.loads(raw)
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
        return {}
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return error
        if isinstance(body.get("detail"), str):
            return {"message": body["detail"]}
    return {}


async def _attempt(up: Upstream, account: Account, slot: Slot, body: bytes, client_headers: Mapping[str, str],
                   outcome: Outcome, deadline: float) -> Stream | Failure:
    """One call on one account, in one of its stream slots: a Stream (which then owns the slot) once the
    first event is in, else why not."""
    settings = up.settings
    response: aiohttp.ClientResponse | None = None
    result: Stream | Failure | None = None
    try:
        token = account.tokens.access_token
        headers = upstream_request_headers(client_headers, account_headers(account, token))
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "text/event-stream"
        first_event_s = max(0.01, min(settings.upstream_first_event_timeout_s, deadline - time.monotonic()))
        async with asyncio.timeout(first_event_s):
            # The session bounds the connect (upstream_connect_timeout_s); the first event, this block.
            response = await up.http.post(up.responses_url, data=body, headers=headers)
            now = time.time()
            up.roster.note_windows(account, windows_from_headers(response.headers, now), now)
            if response.status != 200:
                result = Failure(response.status, await _read_error(response), response.headers, token=token)
                verdict = verdict_for_error(result.status, result.error, result.headers, now)
                if verdict is not None:
                    up.roster.note_verdict(account, verdict)
                return result
            splitter = FrameSplitter()
            batch, first = Batch(b""), None
            while first is None:
                chunk = await response.content.readany()
                if not chunk:
                    result = Failure(0, reason="cut before the first event")
                    return result
                # Comments before the first event are kept: they are relayed with it.
                batch = Batch(batch.raw + splitter.feed(chunk).raw)
                first = batch.first()
        if first.event in ("error", "response.failed"):
            result = Failure(200, event_error(first.data()), {}, reason=first.event)
            return result
        outcome.first_event_at = time.monotonic()
        result = Stream(up, account, response, splitter, batch, outcome, slot)
        return result
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        result = Failure(0, reason="timeout" if isinstance(exc, TimeoutError) else "connect failed")
        return result
    finally:
        # Anything but a live stream gives the connection back here.
        if not isinstance(result, Stream) and response is not None:
            response.release()


async def open_stream(up: Upstream, payload: dict[str, Any], client_headers: Mapping[str, str],
                      keys: Sequence[str], outcome: Outcome) -> Stream:
    """A stream from the first account that gives one (the stream owns the account's slot)."""
    body = orjson.dumps(payload)
    deadline = time.monotonic() + up.settings.failover_budget_s

    def body_for(account: Account) -> bytes:
        # A conversation that moved accounts still echoes reasoning the old one sealed: the new one refuses it.
        readable = up.owners.readable_by(payload["input"], account.id)
        sent = body if readable is None else orjson.dumps({**payload, "input": readable})
        outcome.sent(account.id, len(sent), len(payload["input"] if readable is None else readable))
        return sent

    async def attempt(account: Account, slot: Slot) -> Stream | Failure:
        result = await _attempt(up, account, slot, body_for(account), client_headers, outcome, deadline)
        if (isinstance(result, Failure) and result.code == SEALED_REFUSED
                and up.owners.refused(payload["input"], account.id)):
            up.recoveries["http:unsealed"] += 1  # once, without the reasoning this account cannot open
            result = await _attempt(up, account, slot, body_for(account), client_headers, outcome, deadline)
        return result

    try:
        stream, _slot = await fail_over(up, keys, outcome, attempt)
    except APIError as exc:
        anchor = payload.get("previous_response_id")
        if exc.code != "previous_response_not_found" or not isinstance(anchor, str):
            raise
        decision = up.lost_anchors.answer(anchor)
        _log.info("anchor unknown upstream", anchor=anchor, decision=decision.reason)
        up.recoveries[f"http:lost_anchor:{decision.reason}"] += 1
        if decision.action is Action.PASS:
            raise
        outcome.status, outcome.error_code = 502, decision.code
        raise APIError(502, "Upstream could not find the conversation state this request continues; retry.",
                       code=decision.code, type="server_error") from None
    return stream

"""Getting a stream to the client: keep-alives while the first event is awaited, whole frames as
they arrive, a `response.failed` when it breaks. The handler accounts for it however it ends (`codexlb.accounting`)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

from aiohttp import web

from codexlb.errors import APIError
from codexlb.upstream.headers import client_response_headers
from codexlb.upstream.sse import Batch, encode
from codexlb.upstream.state import Outcome, Upstream
from codexlb.upstream.stream import StreamBroken, open_stream

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CODEX_KEEPALIVE = encode({"type": "codex.keepalive"})
COMMENT_KEEPALIVE = b": keepalive\n\n"


class _SSEResponse(web.StreamResponse):
    # Headers wait for the first body write and leave in the same packet (aiohttp's own web.Response does this).
    _send_headers_immediately = False


def failed_event(outcome: Outcome, code: str, message: str) -> dict[str, Any]:
    response_id = outcome.response_id or f"resp_{uuid.uuid4().hex}"
    return {"type": "response.failed", "response": {
        "id": response_id, "object": "response", "status": "failed", "error": {"code": code, "message": message}}}


class KeepAlive:
    """Keep-alives while the first event is awaited: a timer, and a task only once it fires.

    Most requests get their first event long before `every_s`; they pay for one timer, not a task.
    """

    def __init__(self, every_s: float, commit: Callable[[], Awaitable[web.StreamResponse]], beat: bytes) -> None:
        self._every_s, self._commit, self._beat = every_s, commit, beat
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(every_s, self._start)
        self.response: web.StreamResponse | None = None

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        self.response = await self._commit()
        while not self._stop.is_set():
            await self.response.write(self._beat)
            try:
                await asyncio.wait_for(self._stop.wait(), self._every_s)
            except TimeoutError:
                pass

    async def stop(self) -> web.StreamResponse | None:
        """Stop beating between two writes; the response, if the first beat committed one."""
        self._timer.cancel()
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.response


async def relay_sse(request: web.Request, up: Upstream, payload: dict[str, Any], keys: Sequence[str],
                    outcome: Outcome, *, keepalive: bytes,
                    transform: Callable[[AsyncIterator[Batch]], AsyncIterator[bytes]] | None = None,
                    trailer: bytes = b"",
                    failure: Callable[[Outcome, str, str], bytes] | None = None) -> web.StreamResponse:
    """Relay upstream's stream as SSE; `transform` rewrites frames (chat completions), else verbatim.
    `failure` renders a failure after the first byte (default: a Responses `response.failed` event).
    `payload`'s input is emptied once the stream is open: upstream has it, and it is most of a request's
    memory (a Codex turn's whole history, often 50 KB and more as Python objects) for the minutes the
    stream may last."""
    render_failure = failure or (lambda o, code, message: encode(failed_event(o, code, message)))

    async def commit(headers: Mapping[str, str]) -> web.StreamResponse:
        prepared = _SSEResponse(headers={**SSE_HEADERS, **headers})
        await prepared.prepare(request)
        return prepared

    beats = KeepAlive(up.settings.keepalive_s, lambda: commit({}), keepalive)
    try:
        stream = await open_stream(up, payload, request.headers, keys, outcome)
    except APIError as exc:
        outcome.status, outcome.error_code = exc.status, exc.code
        response = await beats.stop()
        if response is None:
            raise
        await response.write(render_failure(outcome, exc.code or "upstream_unavailable", exc.message))
        await response.write_eof(trailer)
        return response
    except BaseException:
        await beats.stop()
        raise
    payload["input"] = []
    try:
        response = await beats.stop() or await commit(client_response_headers(stream.headers))
        batches = stream.batches()
        chunks = transform(batches) if transform else (batch.raw async for batch in batches)
        try:
            async for chunk in chunks:
                if stream.terminal is None:
                    await response.write(chunk)
                else:  # the last frames and the end of the body in one packet
                    await response.write_eof(chunk + trailer)
        except StreamBroken as exc:
            outcome.status, outcome.error_code = 502, exc.code
            await response.write(render_failure(outcome, exc.code, str(exc)))
        # End the client's response now, not after the handler's bookkeeping (accounting, the log line).
        await response.write_eof(trailer)
    finally:
        await stream.close()
    return response


async def collect(up: Upstream, request: web.Request, payload: dict[str, Any], keys: Sequence[str],
                  outcome: Outcome) -> list[dict[str, Any]]:
    """Every event of a stream, for answers that are not streamed; raises APIError on failure."""
    stream = await open_stream(up, payload, request.headers, keys, outcome)
    events: list[dict[str, Any]] = []
    try:
        async for batch in stream.batches():
            events.extend(frame.data() for frame in batch.frames)
    except StreamBroken as exc:
        outcome.status, outcome.error_code = 502, exc.code
        raise APIError(502, str(exc), code=exc.code, type="server_error") from None
    finally:
        await stream.close()
    return events

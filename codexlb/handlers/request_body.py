"""Reading a client's request body: bounded in size, and in how long it may stall.

aiohttp's `request.read()` waits as long as the client likes: a body that stopped arriving held its handler
(and its admission slot) until the client went away. Every handler that reads a body reads it here.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable

from aiohttp import web

from codexlb.errors import APIError
from codexlb.request_checks import parse_json
from codexlb.services import SETTINGS

# The admin API's bodies are small: aiohttp's default `client_max_size`, which bounded them before.
ADMIN_MAX_BYTES = 1024 * 1024


async def read_body(request: web.Request, max_bytes: int, too_large: Callable[[], APIError]) -> bytearray:
    """The whole body; `too_large()` past `max_bytes` (made only then: this is every request's path), 408 once
    it pauses longer than `body_timeout_s`."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large()
    stall_s = request.app[SETTINGS].body_timeout_s
    loop = asyncio.get_running_loop()
    body = bytearray()
    try:
        # One timer for the whole read, pushed back at each chunk: the bound is on a pause, not on the total.
        async with asyncio.timeout_at(loop.time() + stall_s) as pause:
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > max_bytes:
                    raise too_large()
                pause.reschedule(loop.time() + stall_s)
    except TimeoutError:
        raise APIError(408, f"The request body stopped arriving (nothing came for {stall_s:g} s).",
                       code="request_timeout") from None
    return body


def admin_too_large() -> APIError:
    return APIError(413, "Request body is too large", code="payload_too_large")


async def read_json(request: web.Request, max_bytes: int, *, too_large_status: int) -> dict[str, Any]:
    """The body as a JSON object, or the 4xx the client should get.

    `too_large_status` is 400 for the Codex CLI, which retries a 413 although the payload can never fit.
    """
    return (await read_json_sized(request, max_bytes, too_large_status=too_large_status))[0]


async def read_json_sized(request: web.Request, max_bytes: int, *, too_large_status: int
                          ) -> tuple[dict[str, Any], int]:
    """`read_json`, and the body's size in bytes."""
    body = await read_body(request, max_bytes, functools.partial(_too_large, max_bytes, too_large_status))
    return parse_json(body), len(body)


def _too_large(max_bytes: int, status: int) -> APIError:
    return APIError(status, f"Request body is larger than {max_bytes // (1024 * 1024)} MiB, the most this proxy "
                    "accepts; start a new conversation or compact it.", code="payload_too_large",
                    type="invalid_request_error")

"""What every request passes through: a request id, one log line, and errors in OpenAI shape."""

from __future__ import annotations

import asyncio
import re
import secrets
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from codexlb import errors, log
from codexlb.keys import API_KEY
from codexlb.store import DatabaseUnavailable
from codexlb.trusted_proxies import client_address

_log = log.get("codexlb.request")
REQUEST_ID = web.RequestKey("request_id", str)
# The status of a response whose headers are out (streams and WebSocket upgrades send them early).
PREPARED = web.RequestKey("response_prepared", int)
_CLIENT_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# nginx's code for "client closed the connection before we answered".
CLIENT_CLOSED = 499


def _request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if _CLIENT_ID_OK.match(given) else secrets.token_hex(16)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = _request_id(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        # A WebSocket's answer is its upgrade: a client that later drops the connection just ends the session.
        status = 101 if request.get(PREPARED) == 101 else CLIENT_CLOSED
        raise
    finally:
        _log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            remote=client_address(request),  # behind a trusted proxy: its client
            request_id=request[REQUEST_ID],
            key_id=key.id if (key := request.get(API_KEY)) is not None else None,
        )


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.APIError as exc:
        return exc.response()
    except web.RequestPayloadError:
        # The client's body broke off or is not encoded as its Content-Encoding says.
        return errors.error_response(400, "We could not read the body of your request: it ends early or is not "
                                     "encoded as its Content-Encoding says.", code="invalid_body")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return errors.from_http_exception(request, exc)
    except DatabaseUnavailable:
        # Only what must be written before it answers waits on the database (the admin API's changes).
        return errors.error_response(503, "The database did not answer in time; retry in a few seconds.",
                                     code="database_unavailable", type="server_error",
                                     headers={"Retry-After": "5"})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        _log.exception("unhandled error", method=request.method, path=request.path,
                       request_id=request.get(REQUEST_ID))
        if request.get(PREPARED):
            # Headers and part of a body are out: a second response would corrupt the stream.
            # Re-raising makes aiohttp drop the connection, so the client sees a cut stream.
            raise
        return errors.error_response(
            500, "Internal server error; see the codexlb log for this request id.", code="internal_error"
        )


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Streamed responses send headers early: set the request id here, and note that headers are out."""
    request[PREPARED] = response.status
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers["x-request-id"] = rid

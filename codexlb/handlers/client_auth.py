"""Who may use the proxy routes: a client with a valid API key, or, while no key exists, a client on this machine
that calls it by one of its names (`codexlb.host_check`: a page whose name rebound to 127.0.0.1 is not one).

Only the proxy routes are guarded here. A request that a reverse proxy on this machine forwarded is not this
machine's, though it comes from loopback (`codexlb.loopback.is_local_request`). Health checks stay open (probes
carry no key), and the admin API has its own rule (`codexlb.admin_auth`).
This runs on every proxied request, so it does no I/O: one hash and one dict lookup (`KeyRing.verify`).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from codexlb import host_check
from codexlb.errors import APIError
from codexlb.key_limits.enforce import LIMITS_KEY, expired
from codexlb.keys import API_KEY
from codexlb.loopback import forwarded, is_local_request
from codexlb.services import KEYS, SETTINGS

PROXY_PREFIXES = ("/backend-api/", "/v1/", "/api/codex/")

_HOW = ("Send a codexlb API key as `Authorization: Bearer <key>` or in the `x-api-key` header (make one on "
        "the server with `codexlb keys create`).")
# The Codex CLI's route. The CLI retries a 401 six times (about 7 s) before it shows the message, and stops at
# once on a 400; a key retrying cannot fix gets the 400 there. OpenAI SDKs (`/v1/`) keep their 401.
_CODEX_PREFIX = "/backend-api/codex/"


def _refusal(request: web.Request, message: str) -> APIError:
    if request.path.startswith(_CODEX_PREFIX):
        return APIError(400, message, code="invalid_api_key")
    return APIError(401, message, code="invalid_api_key")


def _presented(request: web.Request) -> tuple[str, ...]:
    """Keys the client offered: a Bearer token and an x-api-key header, either or both."""
    authorization = request.headers.get("Authorization", "")
    bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    return tuple(k for k in (bearer, request.headers.get("x-api-key", "").strip()) if k)


@web.middleware
async def client_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PROXY_PREFIXES):
        return await handler(request)
    ring = request.app[KEYS]
    if not ring.has_keys:
        # No key exists: a page whose name rebound to this address would be served as this machine, and
        # spend the pool from the operator's browser; only this server's names are (`codexlb.host_check`).
        host_check.check(request)
        # This machine only, unless the operator chose to serve everyone.
        if is_local_request(request.remote, request.headers) or request.app[SETTINGS].allow_unauthenticated:
            return await handler(request)
        via = forwarded(request.headers)
        raise _refusal(request, "This codexlb has no API keys, so it serves clients on its own machine only"
                       + (f", and this request came through a proxy ({via})" if via else "") + ". " + _HOW)
    presented = _presented(request)
    record = None
    for key in presented:
        record = ring.verify(key)
        if record is not None:
            break
    if record is None:
        message = "Incorrect API key provided (unknown or revoked). " if presented else "No API key provided. "
        raise _refusal(request, message + _HOW)
    limits = request.app[LIMITS_KEY]
    refusal = expired(record, request.path, limits.clock())
    if refusal is not None:
        limits.rejections[(record.name, "expired")] += 1
        raise refusal
    request[API_KEY] = record
    return await handler(request)

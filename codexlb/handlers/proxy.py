"""The proxy's endpoints: the Codex CLI's (`/backend-api/codex/...`) and the OpenAI SDK's (`/v1/...`)."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web

from codexlb import accounting, relay
from codexlb.account import Status
from codexlb.bridge import http as bridge
from codexlb.bridge.ownership import Ownership
from codexlb.errors import APIError
from codexlb.handlers.request_body import read_json_sized
from codexlb.keys import API_KEY
from codexlb.pool.pool import Pool
from codexlb.pool.sticky import conversation_keys, conversation_of, turn_of
from codexlb.request_checks import check_responses
from codexlb.services import FEED, GATES, HTTP, POOL, REFRESHER, ROSTER, SETTINGS, STORE
from codexlb.singleflight import SingleFlight
from codexlb.store import conversations
from codexlb.transcript import Transcripts
from codexlb.translate import chat
from codexlb.translate.chat import TranslationError, UpstreamFailed
from codexlb.translate.responses_aggregate import aggregate_response
from codexlb.upstream.session import account_headers
from codexlb.upstream.sse import Batch
from codexlb.upstream.state import UPSTREAM, Outcome, Upstream

MODELS_TTL_S = 300.0
MODELS_TIMEOUT_S = 20.0


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _payload(request: web.Request, outcome: Outcome, *, codex_client: bool) -> dict[str, Any]:
    max_bytes = int(request.app[SETTINGS].max_body_mb * 1024 * 1024)
    payload, outcome.client_bytes = await read_json_sized(request, max_bytes,
                                                          too_large_status=400 if codex_client else 413)
    return payload


def _ledger(request: web.Request, outcome: Outcome, payload: dict[str, Any], keys: list[str]) -> None:
    """What the ledger keeps of a plain HTTP request. Its client sent the whole input (unless it anchored on a
    response itself, whose history this proxy does not know): resending the history would have cost nothing more."""
    outcome.transport = "http"
    outcome.conversation, outcome.turn_id = conversation_of(keys), turn_of(payload, request.headers)
    outcome.client_items = len(payload["input"])
    if payload.get("previous_response_id") is None:
        outcome.unanchored_bytes = outcome.client_bytes


def accounted(handler: Callable[[web.Request, Outcome], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Admission (the key's and the global in-flight gate), then one usage record per request, however it
    ends: bad input, rejections and client hang-ups count too."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        outcome, started = Outcome(), time.monotonic()
        try:
            async with request.app[GATES].admitted(request.get(API_KEY)):
                return await handler(request, outcome)
        except APIError as exc:
            outcome.status, outcome.error_code = exc.status, exc.code
            raise
        except BaseException:
            if outcome.status == 200:
                outcome.status, outcome.error_code = 499, "client_closed"
            raise
        finally:
            accounting.account_usage(request.app[STORE], request, outcome, started)

    return wrapped


@accounted
async def codex_responses(request: web.Request, outcome: Outcome) -> web.StreamResponse:
    """POST /backend-api/codex/responses: the Codex CLI with a custom provider."""
    payload = check_responses(await _payload(request, outcome, codex_client=True))
    outcome.model = payload["model"]
    up, keys = request.app[UPSTREAM], conversation_keys(request.headers, payload)
    _ledger(request, outcome, payload, keys)
    key = bridge.session_key(request, keys) if up.settings.http_bridge else None
    if key is not None:
        outcome.transport = "bridge"
        bridged = await bridge.relay(request, up, request.app[bridge.SESSIONS], key, payload, keys, outcome)
        if bridged is not None:
            return bridged
        outcome.transport = "http"
    return await relay.relay_sse(request, up, payload, keys, outcome, keepalive=relay.CODEX_KEEPALIVE)


@accounted
async def v1_responses(request: web.Request, outcome: Outcome) -> web.StreamResponse:
    """POST /v1/responses: the OpenAI SDK; `stream: false` gets one aggregated Response object."""
    raw = await _payload(request, outcome, codex_client=False)
    streamed = raw.get("stream") is True
    payload = check_responses(raw)
    keys = conversation_keys(request.headers, payload)
    _ledger(request, outcome, payload, keys)
    outcome.model = payload["model"]
    if streamed:
        return await relay.relay_sse(request, request.app[UPSTREAM], payload, keys, outcome,
                                     keepalive=relay.COMMENT_KEEPALIVE)
    events = await relay.collect(request.app[UPSTREAM], request, payload, keys, outcome)
    try:
        return _json(aggregate_response(events, payload))
    except UpstreamFailed as exc:
        raise APIError(502, exc.message, code=exc.code, type="server_error") from None


@accounted
async def chat_completions(request: web.Request, outcome: Outcome) -> web.StreamResponse:
    """POST /v1/chat/completions, carried over the Responses API."""
    raw = await _payload(request, outcome, codex_client=False)
    try:
        payload = chat.chat_to_responses(raw)
    except TranslationError as exc:
        raise APIError(400, str(exc), code="invalid_value", param=exc.param) from None
    keys = conversation_keys(request.headers, payload)
    _ledger(request, outcome, payload, keys)
    outcome.model = payload["model"]
    if raw.get("stream") is True:
        translator = chat.ChatStream.for_request(raw)

        async def chunks(batches: AsyncIterator[Batch]) -> AsyncIterator[bytes]:
            async for batch in batches:
                out = []
                for frame in batch.frames:
                    try:
                        out.extend(chat.sse_chunk(c) for c in translator.feed(frame.data()))
                    except UpstreamFailed as exc:
                        out.append(chat.sse_chunk(exc.body()))
                if out:
                    yield b"".join(out)

        return await relay.relay_sse(request, request.app[UPSTREAM], payload, keys, outcome,
                                     keepalive=relay.COMMENT_KEEPALIVE, transform=chunks, trailer=chat.DONE,
                                     failure=_chat_failure)
    events = await relay.collect(request.app[UPSTREAM], request, payload, keys, outcome)
    try:
        return _json(chat.aggregate_chat(events, model=payload["model"]))
    except UpstreamFailed as exc:
        raise APIError(502, exc.message, code=exc.code, type="server_error") from None


def _chat_failure(_outcome: Outcome, code: str, message: str) -> bytes:
    """A chat stream has no response.failed: OpenAI ends it with an error object, then [DONE]."""
    return chat.sse_chunk({"error": {"message": message, "type": "server_error", "code": code, "param": None}})


@accounted
async def compact(request: web.Request, outcome: Outcome) -> web.Response:
    """`/responses/compact`: today's backend compacts on `/responses` with a `compaction_trigger` item."""
    codex_client = request.path.startswith("/backend-api/")
    raw = await _payload(request, outcome, codex_client=codex_client)
    payload = check_responses(raw)
    payload["input"] = [*payload["input"], {"type": "compaction_trigger"}]
    keys = conversation_keys(request.headers, payload)
    _ledger(request, outcome, payload, keys)
    outcome.model = payload["model"]
    events = await relay.collect(request.app[UPSTREAM], request, payload, keys, outcome)
    try:
        response = aggregate_response(events, payload)
    except UpstreamFailed as exc:
        raise APIError(502, exc.message, code=exc.code, type="server_error") from None
    return _json({"id": response.get("id"), "object": "response.compaction", "output": response.get("output", []),
                  "usage": response.get("usage")})


class _ModelCache:
    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.fetched_at = 0.0
        # Clients starting together with the cache cold make one upstream call, not one each.
        self.flights: SingleFlight[dict[str, Any]] = SingleFlight()


MODEL_CACHE = web.AppKey("model_cache", _ModelCache)


async def _catalog(request: web.Request) -> dict[str, Any]:
    cache = request.app[MODEL_CACHE]
    if cache.body is not None and time.monotonic() - cache.fetched_at < MODELS_TTL_S:
        return cache.body
    up, version = request.app[UPSTREAM], request.query.get("client_version", "0.169.0")
    return await cache.flights.do("catalog", lambda: _fetch_catalog(up, request.app[POOL], cache, version))


async def _fetch_catalog(up: Upstream, pool: Pool, cache: _ModelCache, version: str) -> dict[str, Any]:
    """The upstream catalog, or the last one fetched when upstream cannot give it (else a 502)."""
    account = pool.choose(())
    url = up.settings.upstream_base_url.rstrip("/") + "/codex/models"
    failure = "did not answer"
    try:
        async with up.http.get(url, params={"client_version": version}, headers=account_headers(account),
                               timeout=aiohttp.ClientTimeout(total=MODELS_TIMEOUT_S)) as resp:
            if resp.status == 200:
                body = await resp.json(content_type=None)
                cache.body, cache.fetched_at = body, time.monotonic()
                return body
            failure = f"answered {resp.status}"
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    if cache.body is not None:
        return cache.body
    raise APIError(502, f"Upstream model catalog {failure}.", code="upstream_unavailable", type="server_error")


async def codex_models(request: web.Request) -> web.Response:
    return _json(await _catalog(request))


async def v1_models(request: web.Request) -> web.Response:
    catalog = await _catalog(request)
    models = catalog.get("models", []) if isinstance(catalog, dict) else []
    return _json({"object": "list", "data": [
        {"id": m["slug"], "object": "model", "created": 0, "owned_by": "openai"}
        for m in models if isinstance(m, dict) and isinstance(m.get("slug"), str)
    ]})


async def codex_usage(request: web.Request) -> web.Response:
    """The pool as one account in `/wham/usage` shape: used % is the pool's average, resets the earliest."""
    now = time.time()
    accounts = [a for a in request.app[ROSTER].all()
                if a.status not in (Status.PAUSED, Status.REAUTH_REQUIRED, Status.DEACTIVATED)]
    windows = {}
    for name in ("primary", "secondary"):
        known = [getattr(a, name) for a in accounts if getattr(a, name) is not None]
        if not known:
            windows[f"{name}_window"] = None
            continue
        used = sum(w.used_percent for w in known) / len(accounts)
        reset_at = min(w.reset_at for w in known)
        windows[f"{name}_window"] = {"used_percent": round(used, 2), "limit_window_seconds": known[0].window_minutes * 60,
                                     "reset_after_seconds": max(0, int(reset_at - now)), "reset_at": int(reset_at)}
    usable = [a for a in accounts if a.usable(now)]
    return _json({"plan_type": "pro", "rate_limit": {"allowed": bool(usable), "limit_reached": not usable, **windows},
                  "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
                  "accounts": {"total": len(request.app[ROSTER].all()), "usable": len(usable)}})


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    mib = 1024 * 1024
    transcripts = Transcripts(int(settings.transcript_max_mb * mib), int(settings.transcript_conversation_max_mb * mib))
    app[UPSTREAM] = Upstream(settings, app[POOL], app[ROSTER], app[REFRESHER], app[HTTP], app[GATES], transcripts)
    app[MODEL_CACHE] = _ModelCache()
    sessions = app[bridge.SESSIONS] = bridge.Sessions(app[UPSTREAM], settings.bridge_max_sessions,
                                                      settings.bridge_idle_ttl_s,
                                                      Ownership(app[STORE].db, app[STORE].replica))
    # A conversation another replica claimed is let go at once; the sweep catches what the feed missed.
    stop_listening = app[FEED].listen(conversations.OWNER, sessions.on_owner_changed)
    sweeper = asyncio.create_task(sessions.sweep(), name="codexlb-bridge-sweep")
    try:
        yield
    finally:
        stop_listening()
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await sessions.close()
        await app[MODEL_CACHE].flights.close()


def setup(app: web.Application) -> None:
    # After services.services in cleanup_ctx: it needs the pool and the session.
    app.cleanup_ctx.append(_upstream_ctx)
    r = app.router
    r.add_post("/backend-api/codex/responses", codex_responses)
    r.add_post("/v1/responses", v1_responses)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/backend-api/codex/responses/compact", compact)
    r.add_post("/v1/responses/compact", compact)
    r.add_get("/backend-api/codex/models", codex_models)
    r.add_get("/v1/models", v1_models)
    r.add_get("/api/codex/usage", codex_usage)

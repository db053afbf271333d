"""The one accounting point: every proxied request, whatever its route or transport, ends here once, as a
row in the request log (tokens, status, timings, account, API key; and the ledger's figures: conversation, turn,
carrier, bytes and items each way, recoveries) and counts in the metrics registry.
"""

from __future__ import annotations

import time

from aiohttp import web

from codexlb.key_limits.enforce import LIMITS_KEY
from codexlb.keys import API_KEY
from codexlb.metrics import METRICS
from codexlb.store import Store, UsageRecord
from codexlb.store.ledger import saved
from codexlb.upstream.state import Outcome


def account_usage(store: Store, request: web.Request, outcome: Outcome, started: float) -> None:
    usage = outcome.usage or {}
    details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    key = request.get(API_KEY)
    duration_s = time.monotonic() - started
    ttfb_s = None if outcome.first_event_at is None else outcome.first_event_at - started
    input_tokens, cached_tokens = int(usage.get("input_tokens") or 0), int(details.get("cached_tokens") or 0)
    output_tokens = int(usage.get("output_tokens") or 0)
    reasoning_tokens = int(output_details.get("reasoning_tokens") or 0)
    unanchored = outcome.unanchored_bytes
    if key is not None:
        request.app[LIMITS_KEY].charge(key, input_tokens + output_tokens)
    metrics = request.app[METRICS]
    metrics.observe_request(request.path, outcome.status, outcome.account.alias if outcome.account else None,
                            ttfb_s, duration_s)
    metrics.observe_ledger(key.name if key is not None else None, input_tokens, cached_tokens, output_tokens,
                           reasoning_tokens, saved(unanchored, outcome.upstream_bytes))
    kinds = outcome.recovery_kinds
    store.record_usage(UsageRecord(
        ts=time.time(), account_id=outcome.account.id if outcome.account else None,
        api_key_id=key.id if key is not None else None, route=request.path, model=outcome.model,
        status=outcome.status, error_code=outcome.error_code,
        input_tokens=input_tokens, cached_tokens=cached_tokens, output_tokens=output_tokens,
        reasoning_tokens=reasoning_tokens, duration_ms=round(duration_s * 1000, 2),
        ttfb_ms=None if ttfb_s is None else round(ttfb_s * 1000, 2),
        conversation=outcome.conversation, turn_id=outcome.turn_id, transport=outcome.transport,
        client_bytes=outcome.client_bytes, client_items=outcome.client_items, upstream_bytes=outcome.upstream_bytes,
        upstream_items=outcome.upstream_items, recoveries=len(kinds), recovery_kinds=",".join(kinds) or None,
        recovery_bytes=outcome.recovery_bytes, unanchored_bytes=unanchored,
    ))

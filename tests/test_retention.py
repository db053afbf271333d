"""The request log keeps to its age and row limits, pruned in the background off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from codexlb.services import keep_request_log, retention_limits
from codexlb.store import UsageRecord, ledger


def row(ts: float) -> UsageRecord:
    return UsageRecord(ts=ts, account_id="a", api_key_id=None, route="/v1/responses", model="m", status=200,
                       error_code=None)


async def fill(store, stamps) -> None:
    for ts in stamps:
        store.record_usage(row(ts))
    await store.flush_usage()


async def test_old_rows_and_rows_past_the_cap_go(store):
    now = time.time()
    await fill(store, [now - 40 * 86400, now - 31 * 86400] + [now - i for i in range(10, 0, -1)])
    assert await store.prune_usage(now - 30 * 86400, None) == 2
    assert await store.prune_usage(None, 4) == 6
    kept = [r[1] for r in await store.usage_rows()]
    assert kept == [now - 4, now - 3, now - 2, now - 1]  # the newest four


async def test_pruning_runs_in_batches(store):
    await fill(store, [float(i) for i in range(25)])
    assert await store.prune_usage(None, 5, batch=7) == 20
    assert len(await store.usage_rows()) == 5


async def test_the_background_task_holds_the_log_to_its_limits(store, settings):
    settings = dataclasses.replace(settings, request_log_days=1, request_log_max_rows=3)
    now = time.time()
    await fill(store, [now - 2 * 86400] + [now - i for i in range(5, 0, -1)])
    task = asyncio.create_task(keep_request_log(store, settings, interval_s=0.01))
    try:
        async with asyncio.timeout(5):
            while len(await store.usage_rows()) != 3:
                await asyncio.sleep(0.01)
        await fill(store, [now])  # a new row: the next round prunes the oldest again
        async with asyncio.timeout(5):
            while [r[1] for r in await store.usage_rows()] != [now - 2, now - 1, now]:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_zero_means_no_limit(settings):
    assert retention_limits(dataclasses.replace(settings, request_log_days=0, request_log_max_rows=0), 1e9) == (
        None, None)
    assert retention_limits(dataclasses.replace(settings, request_log_days=2, request_log_max_rows=5), 1e9) == (
        1e9 - 2 * 86400, 5)


async def test_no_limits_prune_nothing(store):
    await fill(store, [1.0, 2.0, 3.0])
    assert await store.prune_usage(None, None) == 0 and len(await store.usage_rows()) == 3


async def test_the_ledger_goes_with_the_request_log(store):
    """A conversation's figures are its usage rows: pruned with them, nothing of it is left to read back."""
    now = time.time()
    for ts, conversation in ((now - 40 * 86400, "conv-old"), (now - 40 * 86400 + 1, "conv-both"),
                             (now - 5, "conv-both")):
        store.record_usage(row(ts)._replace(conversation=conversation, client_bytes=10, upstream_bytes=10,
                                         unanchored_bytes=50))
    await store.flush_usage()
    assert await store.prune_usage(now - 30 * 86400, None) == 2
    assert await ledger.conversation(store.db, "conv-old") is None
    summary, requests = await ledger.conversation(store.db, "conv-both")
    assert (summary["requests"], summary["saved_bytes"], [r["ts"] for r in requests]) == (1, 40, [now - 5])
    assert [c["conversation"] for c in await ledger.conversations(store.db, 0, now + 1)] == ["conv-both"]

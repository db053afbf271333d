"""The check every model request passes for its key (each HTTP request, each WebSocket `response.create`), and the
charge of the tokens it used. Nothing that fails here reaches upstream.

The check costs no database call while a key has allowance left (`meter`); the first request of a window and one
that spent the allowance wait for one word with the database, bounded by `CONFIRM_S`. A database that does not
answer in time is not a reason to refuse: the request is decided on what this replica knows.

Refusals, OpenAI-shaped:
- an expired key: 401 `api_key_expired` (400 on the Codex CLI's route, which retries a 401 six times and stops at
  once on a 400: it cannot fix an expired key by retrying);
- a model the key may not use: 403 `model_not_allowed`;
- over a limit: 429 `key_rate_limited` (requests per minute) or `key_budget_exhausted` (tokens), with
  `Retry-After` and the window's reset. A wait longer than `SHORT_WAIT_S` is typed `usage_limit_reached`, the one
  429 the Codex CLI does not retry (it would otherwise wait out `Retry-After` five times over); a shorter one stays
  a `rate_limit_error`, which it retries after `Retry-After`.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import time
from collections import Counter
from typing import Any, Callable

from aiohttp import web

from codexlb import log
from codexlb.errors import APIError
from codexlb.key_limits.meter import Meter, window_end, window_start
from codexlb.key_limits.policy import LIMITS, model_allowed
from codexlb.store import DatabaseError
from codexlb.store import key_spend
from codexlb.store.api_keys import KeyRecord
from codexlb.store.engine import Engine

CONFIRM_S = 1.0
SYNC_S = 1.0
SHORT_WAIT_S = 60.0
# A meter checked or charged this recently is kept current by the sync, so other replicas' spend is seen.
ACTIVE_S = 10.0
CODEX_PREFIX = "/backend-api/codex/"
_MODEL_CHECKS_MAX = 4096
_TOKEN_NAMES = {"tokens_5h": "tokens per 5 hours", "tokens_day": "tokens per day", "tokens_week": "tokens per week"}
_log = log.get("codexlb.key_limits")


def expired(record: KeyRecord, route: str, now: float) -> APIError | None:
    if record.expires_at is None or now < record.expires_at:
        return None
    message = (f"API key {record.name!r} expired at {_iso(record.expires_at)}. Ask for a new key or a later "
               "expiry (`codexlb keys update KEY --expires ...`).")
    return APIError(400 if route.startswith(CODEX_PREFIX) else 401, message, code="api_key_expired",
                    type="authentication_error")


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KeyLimits:
    def __init__(self, db: Engine, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self.clock = clock  # tests move time forward through it
        self._meters: dict[tuple[str, str], Meter] = {}
        self._telling: dict[Meter, asyncio.Task[None]] = {}
        # (key name, kind) -> refusals, for /metrics.
        self.rejections: Counter[tuple[str, str]] = Counter()
        # (globs, model) -> allowed: the same few pairs come again and again; bounded, as clients pick the model.
        self._model_checks: dict[tuple[tuple[str, ...], str], bool] = {}

    def _meter(self, key_id: str, kind: str) -> Meter:
        meter = self._meters.get((key_id, kind))
        if meter is None:
            meter = self._meters[(key_id, kind)] = Meter(key_id, kind)
        return meter

    def _allowed(self, models: tuple[str, ...], model: str) -> bool:
        allowed = self._model_checks.get((models, model))
        if allowed is None:
            if len(self._model_checks) >= _MODEL_CHECKS_MAX:
                self._model_checks.clear()
            allowed = self._model_checks[(models, model)] = model_allowed(models, model)
        return allowed

    async def admit(self, record: KeyRecord | None, model: str, route: str) -> None:
        """Let one model request of `record` through, and count it; or raise the refusal."""
        if record is None:
            return
        now = self.clock()
        refusal = expired(record, route, now)
        if refusal is None and record.models is not None and not self._allowed(record.models, model):
            refusal = APIError(403, f"API key {record.name!r} may not use model {model!r} (it may use: "
                               f"{', '.join(record.models)}).", code="model_not_allowed", param="model")
        if refusal is not None:
            self.rejections[(record.name, "expired" if refusal.code == "api_key_expired" else "model")] += 1
            raise refusal
        limited = [(kind, limit) for kind in LIMITS if (limit := getattr(record, kind)) is not None]
        if not limited:
            return
        meters = [(self._meter(record.id, kind), limit) for kind, limit in limited]
        due = None
        for meter, limit in meters:
            meter.roll(now)
            if due is None and meter.used < limit and meter.must_confirm(limit):
                due = meter
        if due is not None:
            await self._confirm_all(meters, due, now)
        # No await from here on: the check and the count are one step.
        for meter, limit in meters:
            if meter.used >= limit:
                self.rejections[(record.name, meter.kind)] += 1
                raise self._over(record, meter, limit, now)
        for meter, _ in meters:
            if meter.kind == "rpm":
                meter.pending += 1

    async def _confirm_all(self, meters: list[tuple[Meter, int]], due: Meter | None, now: float) -> None:
        """Words with the database until no meter must confirm, within CONFIRM_S; again after each word, as the
        requests that waited on one share the allowance it brought."""
        deadline = asyncio.get_running_loop().time() + CONFIRM_S
        while due is not None:
            if not await self._confirm(due, deadline):
                return  # no word in time: decided on what this replica knows
            for meter, _ in meters:
                meter.roll(now)
            due = next((m for m, limit in meters if m.used < limit and m.must_confirm(limit)), None)

    def charge(self, record: KeyRecord, tokens: int) -> None:
        """Tokens one request used (input + output), as upstream reported them."""
        if tokens <= 0:
            return
        now = self.clock()
        for kind in LIMITS[1:]:
            if getattr(record, kind) is not None:
                meter = self._meter(record.id, kind)
                meter.roll(now)
                meter.pending += tokens

    def _over(self, record: KeyRecord, meter: Meter, limit: int, now: float) -> APIError:
        resets_at = window_end(meter.kind, now)
        wait = max(1, math.ceil(resets_at - now))
        when = f"it resets at {_iso(resets_at)} (in {_span(wait)})"
        if meter.kind == "rpm":
            code, message = "key_rate_limited", (f"API key {record.name!r} is over its limit of {limit:,} requests "
                                                  f"per minute; {when}.")
        else:
            code, message = "key_budget_exhausted", (f"API key {record.name!r} used its {limit:,} "
                                                      f"{_TOKEN_NAMES[meter.kind]}; {when}.")
        return APIError(429, message, code=code,
                        type="usage_limit_reached" if wait > SHORT_WAIT_S else "rate_limit_error",
                        headers={"Retry-After": str(wait)},
                        extra={"limit": meter.kind, "resets_at": int(resets_at), "resets_in_seconds": wait})

    async def _confirm(self, meter: Meter, deadline: float) -> bool:
        """Tell the database what this replica spent and hear the fleet's total, waiting until `deadline` (loop
        time) at most; one word at a time per meter, which goes on after a waiter gives up. Whether it was heard."""
        task = self._telling.get(meter)
        if task is None:
            task = self._telling[meter] = asyncio.create_task(self._tell(meter), name="codexlb-key-spend")
            task.add_done_callback(lambda _: self._telling.pop(meter, None))
        # asyncio.wait, not await: a waiter cancelled or timed out must not cancel the word for the others.
        done, _ = await asyncio.wait([task], timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        return task in done and task.result()

    async def _tell(self, meter: Meter) -> bool:
        start, amount = meter.take()
        fleet = None
        try:
            fleet = await key_spend.add(self._db, meter.key_id, meter.kind, start, amount)
        except Exception as exc:  # noqa: BLE001 - nobody may await this word: it must end on its own
            _log.warning("key spend not shared: the database did not answer", kind=meter.kind, key_id=meter.key_id,
                         error=str(exc)[:200] or type(exc).__name__)
        finally:
            meter.told(start, amount, fleet)
        return fleet is not None

    async def sync(self) -> None:
        """Every meter in use now made current: what this replica spent told, the others' spend read (one query
        for the meters with nothing to tell), so each replica sees the fleet's spend within about SYNC_S."""
        now = self.clock()
        active = [m for m in self._meters.values() if m.pending or now - m.used_at < ACTIVE_S]
        deadline = asyncio.get_running_loop().time() + CONFIRM_S
        for meter in active:
            if meter.pending:
                await self._confirm(meter, deadline)
        quiet = [m for m in active if not m.pending and not m.telling and m.start == window_start(m.kind, now)]
        if not quiet:
            return
        try:
            async with asyncio.timeout(CONFIRM_S):
                spent = await key_spend.spent(self._db, sorted({(m.kind, m.start) for m in quiet}))
        except (DatabaseError, TimeoutError):
            return  # the next round tries again
        for meter in quiet:
            if not meter.pending and not meter.telling and meter.start == window_start(meter.kind, now):
                meter.fleet, meter.known = max(meter.fleet, spent.get((meter.key_id, meter.kind), 0)), True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_S)
            await self.sync()

    async def flush(self) -> None:
        """What this replica spent and has not told, told (at shutdown)."""
        deadline = asyncio.get_running_loop().time() + CONFIRM_S
        for meter in list(self._meters.values()):
            if meter.pending:
                await self._confirm(meter, deadline)

    async def use(self, records: list[KeyRecord]) -> dict[str, dict[str, dict[str, Any]]]:
        """key id -> limit -> {used, limit, resets_at} in the current windows, the fleet's total plus what this
        replica has not told yet."""
        now = self.clock()
        spent = await key_spend.spent(self._db, [(kind, window_start(kind, now)) for kind in LIMITS])
        views: dict[str, dict[str, dict[str, Any]]] = {}
        for record in records:
            view = views[record.id] = {}
            for kind in LIMITS:
                limit = getattr(record, kind)
                if limit is None:
                    continue
                meter = self._meters.get((record.id, kind))
                local = meter.pending if meter is not None and meter.start == window_start(kind, now) else 0
                view[kind] = {"used": spent.get((record.id, kind), 0) + local, "limit": limit,
                              "resets_at": window_end(kind, now)}
        return views


def _span(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


LIMITS_KEY = web.AppKey("key_limits", KeyLimits)

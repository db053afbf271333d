"""Failover across accounts until the first event (`fail_over`), and what to do after a failed attempt on
one account, before the client has seen a byte:

| Attempt ended with | Then |
|---|---|
| 401 from upstream | retry once on the same account with renewed tokens (`renewed`); again 401 → next account |
| 429, 5xx, 403 deactivated, connect error, timeout, stream cut before the first event, an `error` / `response.failed` first event with a server-side code | next account (at most `failover_accounts`, within `failover_budget_s`) |
| any other 4xx | the client's own error: answer it as upstream did |
| every try failed | the pool's answer when no account is left, else 502 `upstream_unavailable` |
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from codexlb import log
from codexlb.account import Account
from codexlb.admission.gate import Slot
from codexlb.auth.refresh import RefreshError
from codexlb.errors import APIError
from codexlb.upstream.state import Outcome, Upstream

_log = log.get("codexlb.proxy")
T = TypeVar("T")
# One try on one account, in one of its stream slots.
Attempt = Callable[[Account, Slot], Awaitable["T | Failure"]]

# First events that mean "this account or backend failed", not "your request is wrong".
_RETRIABLE_CODES = frozenset({
    "server_error", "server_is_overloaded", "service_unavailable", "usage_limit_reached", "rate_limit_exceeded",
    "internal_error", "bad_gateway", "upstream_error", "slow_down",
})


@dataclass(slots=True)
class Failure:
    """One attempt's failure: an upstream status and error body, or a transport problem (status 0)."""

    status: int
    error: dict[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    # The access token the attempt sent (set with every upstream status): what a 401 refused.
    token: str = ""

    @property
    def code(self) -> str:
        return str(self.error.get("code") or self.error.get("type") or self.reason)


def event_error(event: Any) -> dict[str, Any]:
    """The error object an `error` or `response.failed` event carries ({} when none)."""
    if not isinstance(event, dict):
        return {}
    response = event.get("response")
    error = event.get("error") or (response.get("error") if isinstance(response, dict) else None) or {}
    return error if isinstance(error, dict) else {}


def refusal(event: dict[str, Any]) -> Failure:
    """A refusal frame on a WebSocket as a Failure, with the HTTP status it carries (else 200)."""
    status = event.get("status")
    return Failure(status if isinstance(status, int) else 200, event_error(event), {}, reason=str(event.get("type")))


def next_step(failure: Failure, refreshed: bool) -> str:
    """"refresh", "next" (another account) or "answer" (give the client this error)."""
    if failure.status == 401:
        return "next" if refreshed else "refresh"
    if failure.status == 0 or failure.status == 429 or failure.status >= 500:
        return "next"
    if failure.status == 403 and failure.code in ("account_deactivated", "deactivated_workspace"):
        return "next"
    if failure.status == 200:  # a first event that failed
        return "next" if failure.code in _RETRIABLE_CODES else "answer"
    return "answer"


def client_error(failure: Failure) -> APIError:
    """The client's own 4xx, as upstream worded it."""
    error = failure.error
    status = failure.status if 400 <= failure.status < 500 else 400
    extra = {k: v for k, v in error.items() if k not in ("message", "type", "code", "param")}
    return APIError(status, str(error.get("message") or "Upstream rejected the request."),
                    code=error.get("code"), type=error.get("type"), param=error.get("param"), extra=extra)


def exhausted(failures: list[Failure]) -> APIError:
    summary = ", ".join(f"{f.status or f.reason}" + (f" {f.code}" if f.status else "") for f in failures[-3:])
    return APIError(502, f"Upstream failed on {len(failures)} attempt(s) ({summary}); retry the request.",
                    code="upstream_unavailable", type="server_error")


async def renewed(up: Upstream, account: Account, failure: Failure) -> bool:
    """After a 401: whether the account has tokens worth one more try. The refresher decides whether that takes
    a refresh: only when the token refused is still the account's current one; a 401 for a token a refresh
    already replaced is retried with the current one."""
    try:
        await up.refresher.refresh(account, failure.token, "upstream 401")
    except RefreshError:
        return False
    return True


async def _on_account(up: Upstream, account: Account, slot: Slot, attempt: Attempt[T], outcome: Outcome,
                      failures: list[Failure]) -> T | None:
    """Attempts on one account (a 401 earns one retry with renewed tokens): the result, or None to move on."""
    refreshed = False
    while True:
        outcome.attempts += 1
        result = await attempt(account, slot)
        if not isinstance(result, Failure):
            return result
        failures.append(result)
        step = next_step(result, refreshed)
        _log.info("upstream attempt failed", account=account.alias, status=result.status, code=result.code,
                  next=step)
        if step == "answer":
            outcome.status, outcome.error_code = result.status or 400, result.code
            raise client_error(result)
        if step != "refresh":
            return None
        refreshed = True
        if not await renewed(up, account, result):
            return None


async def fail_over(up: Upstream, keys: Sequence[str], outcome: Outcome, attempt: Attempt[T]) -> tuple[T, Slot]:
    """`attempt` on the pool's accounts in turn, each in one of its stream slots, until one succeeds:
    its result and the slot (the caller's to release). Raises the APIError the client should get."""
    settings = up.settings
    deadline = time.monotonic() + settings.failover_budget_s
    tried = outcome.tried
    failures: list[Failure] = []
    while len(tried) < settings.failover_accounts and time.monotonic() < deadline:
        try:
            account, slot = await up.pool.admit(keys, tried, min(settings.queue_wait_s, deadline - time.monotonic()))
        except APIError:
            if failures:
                break
            raise
        tried.add(account.id)
        outcome.account = account
        result = None
        try:
            result = await _on_account(up, account, slot, attempt, outcome, failures)
        finally:
            if result is None:
                slot.release()
        if result is not None:
            return result, slot
    # Nothing left to try: the pool's own answer when it has no account at all, else a retriable 502.
    try:
        up.pool.choose(keys, exclude=tried)
    except APIError as pool_answer:
        # Only the pool's verdicts (no_accounts, quota, rate limits) come from here: its answer says what to do.
        if all(f.status in (401, 429) for f in failures):
            raise pool_answer from None
    raise exhausted(failures)

"""What upstream says about an account's limits, turned into windows and status changes.

Pure functions over headers, events and bodies; the roster applies the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from codexlb.account import Account, Status, Window

# A 429 without a usable reset time still has to end some day.
DEFAULT_RATE_LIMIT_S = 60.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _window(used: Any, minutes: Any, reset_at: Any, reset_after: Any, now: float) -> Window | None:
    """A window from raw figures, or None when one is missing or not a number."""
    used, minutes, reset_at, reset_after = map(_number, (used, minutes, reset_at, reset_after))
    if reset_at is None and reset_after is not None:
        reset_at = now + reset_after
    if used is None or minutes is None or reset_at is None:
        return None
    return Window(used, int(minutes), reset_at)


def _collect(pairs: Any) -> dict[str, Window]:
    return {name: window for name, window in pairs if window is not None}


_HEADER_FIELDS = tuple((name, tuple(f"x-codex-{name}-{field}" for field in (
    "used-percent", "window-minutes", "reset-at", "reset-after-seconds"))) for name in ("primary", "secondary"))


def windows_from_headers(headers: Mapping[str, str], now: float) -> dict[str, Window]:
    """`x-codex-{primary,secondary}-{used-percent,window-minutes,reset-at,reset-after-seconds}` response headers
    (every answer carries them)."""
    return _collect((name, _window(*map(headers.get, fields), now)) for name, fields in _HEADER_FIELDS)


def windows_from_usage(body: Any, now: float) -> dict[str, Window]:
    """The `/wham/usage` body (`rate_limit.primary_window` / `secondary_window`)."""
    limits = body.get("rate_limit") if isinstance(body, dict) else None
    if not isinstance(limits, dict):
        return {}
    pairs = []
    for name in ("primary", "secondary"):
        w = limits.get(f"{name}_window")
        if isinstance(w, dict):
            seconds = _number(w.get("limit_window_seconds"))
            minutes = None if seconds is None else seconds / 60
            pairs.append((name, _window(w.get("used_percent"), minutes, w.get("reset_at"),
                                        w.get("reset_after_seconds"), now)))
    return _collect(pairs)


def windows_from_event(event: Mapping[str, Any], now: float) -> dict[str, Window]:
    """A `codex.rate_limits` stream event: `rate_limits.{primary,secondary}` with used_percent,
    window_minutes and resets_at / resets_in_seconds."""
    limits = event.get("rate_limits")
    if not isinstance(limits, dict):
        return {}
    return _collect(
        (name, _window(w.get("used_percent"), w.get("window_minutes"), w.get("resets_at"),
                       w.get("resets_in_seconds"), now))
        for name in ("primary", "secondary") if isinstance(w := limits.get(name), dict)
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an upstream answer means for the account that got it."""

    status: Status
    until: float | None
    reason: str


def verdict_for_error(status: int, error: Mapping[str, Any] | None, headers: Mapping[str, str],
                      now: float) -> Verdict | None:
    """An upstream error's effect on the account: None when the account itself is fine."""
    error = error or {}
    code = str(error.get("code") or error.get("type") or "")
    if status == 429 and code == "usage_limit_reached":
        reset_at = _number(error.get("resets_at"))
        if reset_at is None and _number(error.get("resets_in_seconds")) is not None:
            reset_at = now + float(error["resets_in_seconds"])
        return Verdict(Status.QUOTA_EXCEEDED, reset_at or now + DEFAULT_RATE_LIMIT_S, "usage limit reached")
    if status == 429:
        retry_after = _number(headers.get("retry-after"))
        return Verdict(Status.RATE_LIMITED, now + (retry_after or DEFAULT_RATE_LIMIT_S), code or "rate limited")
    if status == 403 and code in ("account_deactivated", "deactivated_workspace"):
        return Verdict(Status.DEACTIVATED, None, code)
    return None


def exhausted_window(account: Account, now: float) -> Window | None:
    """A known window at 100 % that has not reset yet."""
    full = [w for w in (account.primary, account.secondary) if w is not None and w.used_percent >= 100 and w.reset_at > now]
    return max(full, key=lambda w: w.reset_at) if full else None

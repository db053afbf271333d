"""Parsing upstream's limit signals: headers, /wham/usage bodies, stream events, error answers."""

from __future__ import annotations

from codexlb.account import Status, Window
from codexlb.pool.quota import (
    verdict_for_error,
    windows_from_event,
    windows_from_headers,
    windows_from_usage,
)

NOW = 1_800_000_000.0


def test_headers_with_reset_at_or_reset_after():
    headers = {"x-codex-primary-used-percent": "42.5", "x-codex-primary-window-minutes": "300",
               "x-codex-primary-reset-at": str(NOW + 100), "x-codex-secondary-used-percent": "7",
               "x-codex-secondary-window-minutes": "10080", "x-codex-secondary-reset-after-seconds": "60"}
    assert windows_from_headers(headers, NOW) == {
        "primary": Window(42.5, 300, NOW + 100), "secondary": Window(7.0, 10080, NOW + 60)}


def test_incomplete_or_junk_headers_are_skipped():
    assert windows_from_headers({"x-codex-primary-used-percent": "abc", "x-codex-primary-window-minutes": "300",
                                 "x-codex-primary-reset-at": "1"}, NOW) == {}
    assert windows_from_headers({"x-codex-primary-used-percent": "5"}, NOW) == {}


def test_usage_body():
    body = {"rate_limit": {"primary_window": {"used_percent": 100, "limit_window_seconds": 18000,
                                              "reset_after_seconds": 30},
                           "secondary_window": {"used_percent": True, "limit_window_seconds": 604800,
                                                "reset_at": NOW}}}
    assert windows_from_usage(body, NOW) == {"primary": Window(100.0, 300, NOW + 30)}
    assert windows_from_usage({"rate_limit": []}, NOW) == {} and windows_from_usage("x", NOW) == {}


def test_rate_limits_event():
    event = {"type": "codex.rate_limits", "rate_limits": {
        "primary": {"used_percent": 12, "window_minutes": 300, "resets_in_seconds": 10},
        "secondary": {"used_percent": 3, "window_minutes": 10080, "resets_at": NOW + 5}}}
    assert windows_from_event(event, NOW) == {
        "primary": Window(12.0, 300, NOW + 10), "secondary": Window(3.0, 10080, NOW + 5)}
    assert windows_from_event({"rate_limits": None}, NOW) == {}


def test_verdicts():
    quota = verdict_for_error(429, {"code": "usage_limit_reached", "resets_in_seconds": 99}, {}, NOW)
    assert (quota.status, quota.until) == (Status.QUOTA_EXCEEDED, NOW + 99)
    limited = verdict_for_error(429, {"code": "rate_limit_exceeded"}, {"retry-after": "7"}, NOW)
    assert (limited.status, limited.until) == (Status.RATE_LIMITED, NOW + 7)
    assert verdict_for_error(429, None, {}, NOW).until == NOW + 60
    assert verdict_for_error(403, {"code": "account_deactivated"}, {}, NOW).status is Status.DEACTIVATED
    assert verdict_for_error(500, {"code": "server_error"}, {}, NOW) is None

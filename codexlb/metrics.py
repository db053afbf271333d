"""The Prometheus registry the request path reports into (served by `codexlb.handlers.metrics`).

Request figures are counted as requests end (`observe_request`, from the one accounting point); the
live state is collected at scrape time by the handler, so nothing here imports the request path. One
registry per app, so several apps (tests) never share counts.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

# Seconds: from a quick first event to a long agent turn.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("codexlb_requests", "Proxied requests by route, status and account.",
                                ("route", "status", "account"), registry=self.registry)
        self.ttfb = Histogram("codexlb_request_ttfb_seconds", "Time to the first upstream event.", ("route",),
                              buckets=_BUCKETS, registry=self.registry)
        self.duration = Histogram("codexlb_request_duration_seconds", "Whole request time.", ("route",),
                                  buckets=_BUCKETS, registry=self.registry)
        self.key_tokens = Counter("codexlb_key_tokens", "Tokens upstream reported, by API key (its name) and kind "
                                  "(input, cached, output, reasoning).", ("key", "kind"), registry=self.registry)
        self.bytes_saved = Counter("codexlb_bytes_saved", "Bytes anchoring kept from upstream: what resending "
                                   "the whole history would have sent, less what went upstream, by API key.",
                                   ("key",), registry=self.registry)
        # The labelled children, looked up once: `labels()` takes a lock and builds keys on every call.
        self._counted: dict[tuple[str, int, str | None], Any] = {}
        self._timed: dict[str, tuple[Any, Any]] = {}
        self._keyed: dict[str, tuple[Any, Any, Any, Any, Any]] = {}

    def observe_request(self, route: str, status: int, account: str | None, ttfb_s: float | None,
                        duration_s: float) -> None:
        counted = self._counted.get((route, status, account))
        if counted is None:
            counted = self._counted[(route, status, account)] = self.requests.labels(route, str(status), account or "")
        counted.inc()
        timed = self._timed.get(route)
        if timed is None:
            timed = self._timed[route] = (self.ttfb.labels(route), self.duration.labels(route))
        if ttfb_s is not None:
            timed[0].observe(ttfb_s)
        timed[1].observe(duration_s)

    def observe_ledger(self, key: str | None, input_tokens: int, cached_tokens: int, output_tokens: int,
                       reasoning_tokens: int, saved_bytes: int) -> None:
        """A request's tokens and the bytes anchoring saved, by API key name ("" without a key)."""
        name = key or ""
        keyed = self._keyed.get(name)
        if keyed is None:
            keyed = self._keyed[name] = (*(self.key_tokens.labels(name, kind) for kind in
                                           ("input", "cached", "output", "reasoning")), self.bytes_saved.labels(name))
        for child, value in zip(keyed, (input_tokens, cached_tokens, output_tokens, reasoning_tokens, saved_bytes)):
            if value:
                child.inc(value)


METRICS = web.AppKey("metrics", Metrics)

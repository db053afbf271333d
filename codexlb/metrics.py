"""`GET /metrics` in the Prometheus text format.

Request figures are counted as requests end (`observe_request`, from the one accounting point);
everything else is read from the live objects at scrape time (`_Live`), so nothing is counted twice
and nothing costs the request path. One registry per app, so several apps (tests) never share counts.
"""

from __future__ import annotations

from typing import Any, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from codexlb.admin_auth import same_secret
from codexlb.api.admin import require_admin
from codexlb.pool.account import Status
from codexlb.services import SETTINGS

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
        # The labelled children, looked up once: `labels()` takes a lock and builds keys on every call.
        self._counted: dict[tuple[str, int, str | None], Any] = {}
        self._timed: dict[str, tuple[Any, Any]] = {}

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

    def watch(self, app: web.Application) -> None:
        """Read the app's live state at every scrape (once its services are up)."""
        self.registry.register(_Live(app))


class _Live(Collector):
    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        # Here, not at the top: the request path imports this module, and these import the request path.
        from codexlb.bridge.http import SESSIONS
        from codexlb.proxy.upstream import UPSTREAM
        from codexlb.services import GATES, REFRESHER, ROSTER

        app = self._app
        if UPSTREAM not in app:
            return
        gates = [(g.name, g.snapshot()) for g in app[GATES].all()]
        for field, kind, help_text in (("capacity", GaugeMetricFamily, "Slots a gate has."),
                                       ("in_use", GaugeMetricFamily, "Slots in use."),
                                       ("waiting", GaugeMetricFamily, "Requests waiting in line."),
                                       ("admitted", CounterMetricFamily, "Requests a gate let through."),
                                       ("rejected", CounterMetricFamily, "Requests a gate turned away (429).")):
            family = kind(f"codexlb_admission_{field}", help_text, labels=("gate",))
            for name, snapshot in gates:
                family.add_metric((name,), snapshot[field])
            yield family
        accounts = GaugeMetricFamily("codexlb_accounts", "Accounts by status.", labels=("status",))
        roster = app[ROSTER].all()
        for status in Status:
            accounts.add_metric((status.value,), sum(1 for a in roster if a.status is status))
        yield accounts
        yield GaugeMetricFamily("codexlb_bridge_sessions", "HTTP bridge sessions (conversations with an upstream "
                                "WebSocket).", value=len(app[SESSIONS]))
        up = app[UPSTREAM]
        recoveries = CounterMetricFamily("codexlb_recoveries", "Recovery decisions taken, by decision.",
                                         labels=("decision",))
        for decision, count in sorted(up.recoveries.items()):
            recoveries.add_metric((decision,), count)
        yield recoveries
        refreshes = CounterMetricFamily("codexlb_token_refreshes", "Token refreshes, by result.", labels=("result",))
        for result, count in sorted(app[REFRESHER].results.items()):
            refreshes.add_metric((result,), count)
        yield refreshes
        for field, count in up.transcripts.stats().items():
            kind = CounterMetricFamily if field in ("hits", "misses", "evictions") else GaugeMetricFamily
            yield kind(f"codexlb_transcript_{field}", f"Transcripts: {field}.", value=count)


METRICS = web.AppKey("metrics", Metrics)


async def metrics(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    presented = request.headers.get("Authorization", "")
    if not (token and same_secret(presented, f"Bearer {token}")):
        require_admin(request)
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    app[METRICS] = Metrics()
    app[METRICS].watch(app)
    app.router.add_get("/metrics", metrics)

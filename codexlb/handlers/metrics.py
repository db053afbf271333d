"""`GET /metrics` in the Prometheus text format: the request figures the registry (`codexlb.metrics`)
counted, and the live state (gates, accounts, bridge sessions, recoveries, refreshes, transcripts) read
from the app's objects at every scrape, so nothing is counted twice and nothing costs the request path.
"""

from __future__ import annotations

from typing import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from codexlb.account import Status
from codexlb.admin_auth import same_secret
from codexlb.bridge.http import SESSIONS
from codexlb.handlers.api.admin import require_admin
from codexlb.key_limits.enforce import LIMITS_KEY
from codexlb.metrics import METRICS, Metrics
from codexlb.services import GATES, REFRESHER, ROSTER, SETTINGS
from codexlb.upstream.state import UPSTREAM


class _Live(Collector):
    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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
        rejections = CounterMetricFamily("codexlb_key_rejections", "Requests refused by their API key's limits, by "
                                         "key and limit (rpm, tokens_5h, tokens_day, tokens_week, model, expired).",
                                         labels=("key", "limit"))
        for (key, limit), count in sorted(app[LIMITS_KEY].rejections.items()):
            rejections.add_metric((key, limit), count)
        yield rejections
        for field, count in up.transcripts.stats().items():
            kind = CounterMetricFamily if field in ("hits", "misses", "evictions") else GaugeMetricFamily
            yield kind(f"codexlb_transcript_{field}", f"Transcripts: {field}.", value=count)


async def metrics(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    presented = request.headers.get("Authorization", "")
    if not (token and same_secret(presented, f"Bearer {token}")):
        require_admin(request)
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    app[METRICS] = Metrics()
    app[METRICS].registry.register(_Live(app))
    app.router.add_get("/metrics", metrics)

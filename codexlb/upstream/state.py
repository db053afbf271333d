"""What the data path shares about upstream: the app's objects it needs (`Upstream`, built once), what one
request came to (`Outcome`, read by accounting), and what an upstream event tells them (`observe`), whichever
transport (HTTP stream, WebSocket) carried it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from codexlb.account import Account
from codexlb.admission.gates import Gates
from codexlb.auth.refresh import Refresher
from codexlb.config import Settings
from codexlb.pool.pool import Pool
from codexlb.pool.quota import verdict_for_error, windows_from_event
from codexlb.pool.roster import Roster
from codexlb.recovery import LostAnchors
from codexlb.transcript import ItemOwners, Transcripts

TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})


@dataclass(slots=True)
class Outcome:
    """What the request came to: filled in as the stream goes, read by accounting."""

    account: Account | None = None
    model: str | None = None
    response_id: str | None = None
    status: int = 200
    error_code: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = 0
    first_event_at: float | None = None
    # Accounts already tried for this request (by the HTTP bridge), not to be tried again.
    tried: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Upstream:
    """What the data path needs from the app: one object, built once."""

    settings: Settings
    pool: Pool
    roster: Roster
    refresher: Refresher
    http: aiohttp.ClientSession
    gates: Gates
    transcripts: Transcripts
    lost_anchors: LostAnchors = field(default_factory=LostAnchors)
    owners: ItemOwners = field(default_factory=ItemOwners)
    # How often each recovery decision was taken ("ws:resend", "http:fail:stream_incomplete", ...).
    recoveries: Counter[str] = field(default_factory=Counter)

    @property
    def responses_url(self) -> str:
        return self.settings.upstream_base_url.rstrip("/") + "/codex/responses"


UPSTREAM = web.AppKey("upstream", Upstream)


def observe(up: Upstream, account: Account, outcome: Outcome, kind: str, data: Any) -> bool:
    """What one upstream event tells the pool and the accounting (any transport); True for a terminal."""
    if not isinstance(data, dict):
        return False
    pool, now = up.pool, time.time()
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    if kind == "response.created" and isinstance(response.get("id"), str):
        outcome.response_id = response["id"]
        pool.remember_response(response["id"], account, now)
    elif kind == "codex.rate_limits":
        up.roster.note_windows(account, windows_from_event(data, now), now)
    elif kind in TERMINAL:
        if isinstance(response.get("usage"), dict):
            outcome.usage = response["usage"]
        if kind == "response.completed":
            up.owners.note(response.get("output"), account.id)
        if kind != "response.completed":
            error = response.get("error") or data.get("error") or {}
            outcome.error_code = str(error.get("code") or kind) if isinstance(error, dict) else kind
            verdict = verdict_for_error(int(data.get("status") or 429), error, {}, now) if (
                isinstance(error, dict) and error.get("code") == "usage_limit_reached") else None
            if verdict is not None:
                up.roster.note_verdict(account, verdict)
        return True
    return False

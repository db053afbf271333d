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
    # The ledger (`accounting`): which conversation and turn, over which carrier ("http", "bridge", "ws"),
    # what the client sent, what went upstream (every send: retries and recoveries too), and the recoveries.
    conversation: str | None = None
    turn_id: str | None = None
    transport: str | None = None
    client_bytes: int = 0
    client_items: int = 0
    upstream_bytes: int = 0
    upstream_items: int = 0
    recovery_kinds: list[str] = field(default_factory=list)
    recovery_bytes: int = 0
    # What a client resending its whole history would have sent for this request; None when unknown.
    unanchored_bytes: int | None = None
    sent_on: str | None = None  # the account the last send went to

    def sent(self, account_id: str, nbytes: int, nitems: int, recovery: str | None = None) -> None:
        """One send upstream for this request. A send to another account than the last one is a move; a
        `recovery` ("reconnect", "rebuild", "whole_send") names why a send on the same account was made again."""
        if self.sent_on is not None and account_id != self.sent_on:
            recovery = "move"
        self.sent_on = account_id
        self.upstream_bytes += nbytes
        self.upstream_items += nitems
        if recovery is not None:
            self.recovery_kinds.append(recovery)
            self.recovery_bytes += nbytes

    def recovered(self, kind: str) -> None:
        """A recovery that sent nothing of its own (a socket opened again between requests)."""
        self.recovery_kinds.append(kind)


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

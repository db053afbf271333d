"""One limit of one key, counted across the fleet without a database call per request.

Windows are fixed and the same on every replica: the minute on the clock for `rpm`; for tokens, 5-hour blocks
starting at 00:00, 05:00, 10:00, 15:00 and 20:00 UTC (the last of a day is 4 hours), the UTC day, and the week
from Monday 00:00 UTC. The spend of a window lives in the database (`store/key_spend`);
each replica keeps the fleet's total as of its last word with the database (`fleet`) and what it spent since
(`unconfirmed`), and may spend only up to an allowance before it must tell the others and hear from them
(`confirm`). The allowance is a tenth of what the limit had left at that word (at least 1), so a fleet of R
replicas can go over a limit by at most (R - 1) x that allowance: the spend each of the others had not told yet.
A lone process sees all spend and stops exactly at the limit; the first request of a window
waits for one read of it (once a minute per key for `rpm`). A token budget is checked before a request and
charged when upstream reports the tokens, so requests already running when it is reached also go over it.
"""

from __future__ import annotations

import math

ALLOWANCE_SHARE = 10
DAY = 86400.0
# Seconds each window lasts, and where windows start counting from (the epoch was a Thursday; weeks start Monday).
WINDOWS: dict[str, tuple[float, float]] = {
    "rpm": (60.0, 0.0),
    "tokens_5h": (5 * 3600.0, 0.0),
    "tokens_day": (DAY, 0.0),
    "tokens_week": (7 * DAY, 4 * DAY),
}


def window_start(kind: str, now: float) -> float:
    length, origin = WINDOWS[kind]
    if kind == "tokens_5h":  # counted from each day's midnight: 00:00, 05:00, 10:00, 15:00, 20:00 UTC
        day = math.floor(now / DAY) * DAY
        return day + math.floor((now - day) / length) * length
    return math.floor((now - origin) / length) * length + origin


def window_end(kind: str, now: float) -> float:
    start = window_start(kind, now)
    end = start + WINDOWS[kind][0]
    # A day is 4.8 blocks of 5 hours: its last block (from 20:00) ends at midnight.
    return min(end, math.floor(now / DAY) * DAY + DAY) if kind == "tokens_5h" else end


class Meter:
    """A key's spend against one limit in the current window, as this replica knows it."""

    __slots__ = ("key_id", "kind", "start", "end", "fleet", "pending", "telling", "known", "used_at")

    def __init__(self, key_id: str, kind: str) -> None:
        self.key_id, self.kind = key_id, kind
        self.start = self.end = -1.0
        self.fleet = 0       # the fleet's total at the last word with the database (ours included)
        self.pending = 0     # spent here since, not yet told
        self.telling = 0     # spent here, being told now
        self.known = False   # whether `fleet` was read in this process (a restart must not forget the window)
        self.used_at = 0.0   # when this replica last checked or charged it: the sync keeps such meters current

    def roll(self, now: float) -> None:
        """Move to the window `now` is in; what the fleet spent there is read before anything is spent in it."""
        self.used_at = now
        if self.start <= now < self.end:
            return
        start = window_start(self.kind, now)
        if start != self.start:
            self.start, self.end = start, window_end(self.kind, now)
            self.fleet, self.pending, self.telling, self.known = 0, 0, 0, False

    @property
    def used(self) -> int:
        return self.fleet + self.pending + self.telling

    def must_confirm(self, limit: int) -> bool:
        """Whether this replica has spent its allowance (or never read the window) and must hear from the others."""
        if not self.known:
            return True
        return self.pending + self.telling >= max(1, (limit - self.fleet) // ALLOWANCE_SHARE)

    def take(self) -> tuple[float, int]:
        """The window and amount to tell the database now."""
        amount, self.pending = self.pending, 0
        self.telling += amount
        return self.start, amount

    def told(self, start: float, amount: int, fleet: int | None) -> None:
        """The database answered (`fleet`: its total, ours included) or not (None: tell it again later)."""
        if start != self.start:
            return  # the window moved on meanwhile; the old one's count is the database's now
        self.telling -= amount
        if fleet is None:
            self.pending += amount
        else:
            self.fleet, self.known = max(self.fleet, fleet), True
